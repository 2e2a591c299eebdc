"""The onnx-ir post-passes (jq.export.passes): each on a hand-built graph and on real exports.

The passes jq shares with autotune (bias / zero-C folding, IR version, trt domain) are onnx_toolbox's and are
specified in tests/onnx_toolbox; here they are checked through real exports."""

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

import jq.export
from tests.export.conftest import run_jax
from jq.export import passes as P


def _model(nodes, inputs, outputs, inits=(), opset=19, ir_version=None):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                          ir_version=ir_version or P.ir_version_for_opset(opset))
    return ir.serde.deserialize_model(m)


def _run(model: ir.Model, feeds):
    return jq.export.run_onnxruntime(ir.serde.serialize_model(model), feeds)


def _vi(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def test_fold_constant_layout_and_push_transpose_into_weight_dq():
    w = np.arange(2 * 3 * 4 * 5, dtype=np.int8).reshape(2, 3, 4, 5) % 7  # HWIO-like, per-channel axis 3
    s = np.linspace(0.1, 0.5, 5).astype(np.float32)
    nodes = [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["d"], axis=3),
             helper.make_node("Transpose", ["d"], ["y"], perm=[3, 2, 0, 1])]
    m = _model(nodes, [], [_vi("y", [5, 4, 2, 3])],
               [numpy_helper.from_array(w, "w"), numpy_helper.from_array(s, "s"),
                numpy_helper.from_array(np.zeros(5, np.int8), "z")])
    m.graph.node(0).outputs[0].shape = ir.Shape([2, 3, 4, 5])
    before = _run(m, [])[0]
    assert P.PushTransposeIntoWeightPass()(m).modified
    (dq,) = list(m.graph)
    assert dq.op_type == "DequantizeLinear" and dq.attributes["axis"].value == 0
    assert dq.inputs[0].const_value.numpy().shape == (5, 4, 2, 3)
    np.testing.assert_array_equal(_run(m, [])[0], before)
    r = _model([helper.make_node("Reshape", ["c", "shape"], ["y"])], [], [_vi("y", [2, 3])],
               [numpy_helper.from_array(np.arange(6, dtype=np.float32), "c"),
                numpy_helper.from_array(np.array([2, -1], np.int64), "shape")])
    assert P.FoldConstantLayoutPass()(r).modified and len(r.graph) == 0
    np.testing.assert_array_equal(r.graph.outputs[0].const_value.numpy(), np.arange(6.0).reshape(2, 3))


def test_shared_passes_are_the_toolbox_ones():
    import onnx_toolbox

    assert (P.FoldBiasPass, P.DropZeroGemmCPass, P.FixIrVersionPass, P.TrtDomainPass, P.ir_version_for_opset) == (
        onnx_toolbox.FoldBiasPass, onnx_toolbox.DropZeroGemmCPass, onnx_toolbox.FixIrVersionPass,
        onnx_toolbox.TrtDomainPass, onnx_toolbox.ir_version_for_opset)


def test_bool_where():
    c = np.array([True, False, True, False])
    a = np.array([True, True, False, False])
    b = np.array([False, True, True, False])
    m = _model([helper.make_node("Where", ["c", "a", "b"], ["y"])],
               [_vi(n, [4], TensorProto.BOOL) for n in "cab"], [_vi("y", [4], TensorProto.BOOL)])
    assert P.BoolWherePass()(m).modified
    assert "Where" not in [n.op_type for n in m.graph]
    np.testing.assert_array_equal(_run(m, [c, a, b])[0], np.where(c, a, b))


def test_real_exports_are_fixed(zoo):
    res = zoo.export("cnn", "INT8_DEFAULT_CFG")
    g = res.model.graph
    for n in g:
        if n.op_type == "Conv" and n.inputs[1].producer() is not None:
            dq = n.inputs[1].producer()
            assert dq.op_type == "DequantizeLinear", "the weight DQ feeds the Conv directly (no Transpose)"
            assert dq.attributes["axis"].value == 0  # OIHW output channels
            assert len(n.inputs) == 3 and n.inputs[2].is_initializer(), "bias folded into the Conv"
        if n.op_type == "Gemm":
            assert len(n.inputs) == 3 and np.any(n.inputs[2].const_value.numpy()), "C is the bias, not zero"
        if n.op_type == "Add":
            src = [i.producer().op_type for i in n.inputs if i.producer() is not None]
            assert not (len(src) == 1 and src[0] in ("Conv", "Gemm")), "bias Add left behind"


def test_passes_can_be_turned_off(zoo):
    raw = zoo.export("cnn", "INT8_DEFAULT_CFG", fold_bias=False, drop_zero_gemm_c=False)
    (gemm,) = [n for n in raw.model.graph if n.op_type == "Gemm"]
    assert len(gemm.inputs) == 3 and not np.any(gemm.inputs[2].const_value.numpy())  # jax2onnx's zero C
    assert sum(n.op_type == "Add" for n in raw.model.graph) >= 4  # 3 conv biases and the head bias
    assert all(len(n.inputs) == 2 for n in raw.model.graph if n.op_type == "Conv")


def test_float16_variant(zoo):
    res = zoo.export("transformer", "INT8_DEFAULT_CFG", float_dtype="float16")
    g = res.model.graph
    assert g.inputs[0].dtype == ir.DataType.INT32 and g.outputs[0].dtype == ir.DataType.FLOAT
    floats = [v for v in g.initializers.values() if v.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16)]
    assert floats and all(v.dtype == ir.DataType.FLOAT16 for v in floats)
    for n in g:
        if n.op_type == "QuantizeLinear":
            assert n.inputs[0].dtype == n.inputs[1].dtype == ir.DataType.FLOAT16
    onnx.checker.check_model(res.proto, full_check=True)
    assert jq.export.check_tensorrt(res.proto) == []
    qm = zoo.qm("transformer", "INT8_DEFAULT_CFG")
    *_, x_test = zoo.model("transformer")
    ref = run_jax(qm, x_test)
    (y,) = jq.export.run_onnxruntime(res.proto, [x_test])
    assert np.max(np.abs(y - ref)) < 0.1 * np.max(np.abs(ref))  # half precision: a loose sanity bound


def test_float16_baseline_of_the_unquantized_model(zoo):
    m, params, calib, x_test = zoo.model("cnn")
    proto = jq.export.to_onnx_float(params, m.apply, (calib[0],), float_dtype="float16")
    model = ir.serde.deserialize_model(proto)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph)
    assert all(v.dtype != ir.DataType.FLOAT for v in model.graph.initializers.values())
    assert model.graph.inputs[0].dtype == ir.DataType.FLOAT
    assert any(n.op_type == "Conv" and n.inputs[1].dtype == ir.DataType.FLOAT16 for n in model.graph)


def test_bfloat16_variant(zoo):
    res = zoo.export("transformer", "FP8_DEFAULT_CFG", float_dtype="bfloat16")
    g = res.model.graph
    assert g.outputs[0].dtype == ir.DataType.FLOAT
    floats = [v for v in g.initializers.values() if v.dtype in (ir.DataType.FLOAT, ir.DataType.BFLOAT16)]
    assert floats and all(v.dtype == ir.DataType.BFLOAT16 for v in floats)
    dq = [n for n in g if n.op_type == "DequantizeLinear"]
    assert dq and all(n.inputs[1].dtype == ir.DataType.BFLOAT16 for n in dq)
    onnx.checker.check_model(res.proto, full_check=True)
    assert jq.export.check_tensorrt(res.proto) == []


def test_channels_last_max_pool_becomes_a_2d_window():
    """jax2onnx writes Flax max_pool on NHWC as a 4-D window on [1, 1, B, H, W, C] (ORT: "Unsupported pooling
    size"); the pass turns it into Squeeze -> NCHW MaxPool([2, 2]) -> Unsqueeze with the same values."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    def f(p, x):
        return nn.max_pool(x * p["s"], (2, 2), (2, 2))

    p = {"s": jnp.float32(1.5)}
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 3)).astype(np.float32)
    proto = jq.export.to_onnx_float(p, f, (jnp.asarray(x),))
    pools = [n for n in proto.graph.node if n.op_type == "MaxPool"]
    assert pools and all(list(helper.get_attribute_value(a)) == [2, 2]
                         for n in pools for a in n.attribute if a.name == "kernel_shape")
    (y,) = jq.export.run_onnxruntime(proto, [x])
    np.testing.assert_allclose(y, np.asarray(f(p, jnp.asarray(x))), rtol=1e-6)
