"""The TensorRT lint (jq.export.check_tensorrt): one hand-built violation per rule, reported with its node."""

import ml_dtypes
import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import jq.export
from jq.export.passes import ir_version_for_opset


def _qdq_model(*, x_shape=(4, 32), scale=np.float32(0.1), zp=np.int8(0), attrs=None, opset=21, q_input=None,
               ir_version=None, scale_input=True, extra_nodes=(), domains=()):
    attrs = attrs or {}
    inits = [numpy_helper.from_array(np.asarray(zp), "z")]
    if scale_input:
        inits.append(numpy_helper.from_array(np.asarray(scale), "s"))
    nodes = list(extra_nodes) + [
        helper.make_node("QuantizeLinear", [q_input or "x", "s", "z"], ["q"], name="Q", **attrs),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="DQ", **attrs)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))]
    if not scale_input:
        inputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, []))
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x_shape))],
                          inits)
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(g, opset_imports=imports, ir_version=ir_version or ir_version_for_opset(opset))


def _rules(model):
    return {(v.node, v.rule, v.severity) for v in jq.export.check_tensorrt(model)}


def test_clean_model_has_no_violations():
    assert jq.export.check_tensorrt(_qdq_model()) == []
    assert jq.export.format_violations([]) == "no violations"


def test_non_constant_scale():
    assert ("Q", "constant-scale", "error") in _rules(_qdq_model(scale_input=False))


@pytest.mark.parametrize("scale", [np.float32(0.0), np.float32(-0.5), np.float32(np.inf),
                                   np.array([0.1, 0.0, 0.2, 0.3], np.float32)])
def test_scales_must_be_positive(scale):
    attrs = {"axis": 0} if np.ndim(scale) else {}
    zp = np.zeros(np.shape(scale), np.int8)
    rules = _rules(_qdq_model(scale=scale, zp=zp, attrs=attrs))
    assert ("Q", "positive-scale", "error") in rules and ("DQ", "positive-scale", "error") in rules


def test_int8_zero_point_must_be_zero_and_uint8_warns():
    rules = _rules(_qdq_model(zp=np.int8(3)))
    assert ("Q", "zero-point", "error") in rules and ("DQ", "zero-point", "error") in rules
    v = jq.export.check_tensorrt(_qdq_model(zp=np.uint8(0)))
    assert {(x.node, x.rule, x.severity) for x in v} == {("Q", "type", "warning"), ("DQ", "type", "warning")}
    assert "treated as INT8" in v[0].message


def test_unsupported_types_and_opsets():
    rules = _rules(_qdq_model(zp=np.int16(0)))
    assert ("Q", "type", "error") in rules
    e5m2 = helper.make_tensor("z", TensorProto.FLOAT8E5M2, [], [0])
    m = _qdq_model(opset=19)
    m.graph.initializer[0].CopyFrom(e5m2)
    assert ("Q", "type", "error") in _rules(m)
    fp8_old = _qdq_model(opset=17)
    fp8_old.graph.initializer[0].CopyFrom(helper.make_tensor("z", TensorProto.FLOAT8E4M3FN, [], [0]))
    assert ("Q", "opset", "error") in _rules(fp8_old)


def test_ir_version_too_old():
    v = jq.export.check_tensorrt(_qdq_model(opset=23, ir_version=10))
    assert [(x.node, x.rule) for x in v] == [("<model>", "ir-version")]


def test_per_axis_length():
    attrs = {"axis": 1}
    rules = _rules(_qdq_model(scale=np.full(8, 0.1, np.float32), zp=np.zeros(8, np.int8), attrs=attrs))
    assert ("Q", "per-axis", "error") in rules


def test_blocked_rules():
    ok = dict(attrs={"axis": 1, "block_size": 16}, scale=np.full((4, 2), 0.1, np.float32), zp=np.zeros((4, 2), np.int8))
    assert jq.export.check_tensorrt(_qdq_model(**ok)) == []
    bad_count = dict(ok, scale=np.full((4, 3), 0.1, np.float32), zp=np.zeros((4, 3), np.int8))
    assert ("Q", "block", "error") in _rules(_qdq_model(**bad_count))
    two_axes = dict(ok, scale=np.full((2, 2), 0.1, np.float32), zp=np.zeros((2, 2), np.int8))
    assert ("Q", "block", "error") in _rules(_qdq_model(**two_axes))
    rank4 = _qdq_model(x_shape=(2, 2, 4, 32), attrs={"axis": 3, "block_size": 16},
                       scale=np.full((2, 2, 4, 2), 0.1, np.float32), zp=np.zeros((2, 2, 4, 2), np.int8))
    v = [x for x in jq.export.check_tensorrt(rank4) if x.rule == "block"]
    assert v and all("2-D and 3-D" in x.message for x in v)
    first_axis = _qdq_model(x_shape=(32, 4, 4), attrs={"axis": 0, "block_size": 16},
                            scale=np.full((2, 4, 4), 0.1, np.float32), zp=np.zeros((2, 4, 4), np.int8))
    assert any("last or second to last" in x.message for x in jq.export.check_tensorrt(first_axis))
    old = _qdq_model(opset=19, **ok)
    assert ("Q", "opset", "error") in _rules(old)


def test_int4_even_count_and_opset():
    z = helper.make_tensor("z", TensorProto.INT4, [], [0])
    m = _qdq_model(x_shape=(3, 5))
    m.graph.initializer[0].CopyFrom(z)
    assert ("Q", "even", "error") in _rules(m)
    m = _qdq_model(x_shape=(4, 4), opset=19)
    m.graph.initializer[0].CopyFrom(z)
    assert ("Q", "opset", "error") in _rules(m)


def _fp4_model(*, block=16, scale_type=int(ir.DataType.FLOAT8E4M3FN), shape=(4, 32), gs=np.float32(0.01),
               trt_import=True, weight_block=16):
    inits = [numpy_helper.from_array(np.asarray(gs, np.float32), "gs")]
    w = np.zeros((32, 8), np.uint8).view(ml_dtypes.float4_e2m1fn)
    w_t = ir.serde.serialize_tensor(ir.tensor(w, name="w"))
    s8 = ir.serde.serialize_tensor(ir.tensor(np.ones((2, 8), ml_dtypes.float8_e4m3fn), name="ws"))
    inits += [w_t, s8]
    nodes = [
        helper.make_node("TRT_FP4DynamicQuantize", ["x", "gs"], ["xq", "xs"], name="fp4q", domain="trt", axis=-1,
                         block_size=block, scale_type=scale_type),
        helper.make_node("DequantizeLinear", ["xs", "gs"], ["xs_f"], name="dq_scale"),
        helper.make_node("DequantizeLinear", ["xq", "xs_f"], ["xd"], name="dq_x", axis=-1, block_size=16),
        helper.make_node("DequantizeLinear", ["ws", "gs"], ["ws_f"], name="dq_wscale"),
        helper.make_node("DequantizeLinear", ["w", "ws_f"], ["wd"], name="dq_w", axis=0, block_size=weight_block),
        helper.make_node("MatMul", ["xd", "wd"], ["y"], name="mm")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    vi = [helper.make_tensor_value_info("xq", TensorProto.FLOAT4E2M1, list(shape)),
          helper.make_tensor_value_info("xs", TensorProto.FLOAT8E4M3FN, list(shape[:-1]) + [shape[-1] // 16])]
    g.value_info.extend(vi)
    imports = [helper.make_opsetid("", 23)] + ([helper.make_opsetid("trt", 1)] if trt_import else [])
    return helper.make_model(g, opset_imports=imports, ir_version=11)


def test_fp4_tensorrt_form_is_clean():
    assert jq.export.check_tensorrt(_fp4_model()) == []


def test_fp4_rules():
    assert ("fp4q", "fp4", "error") in _rules(_fp4_model(block=32))
    assert ("fp4q", "fp4", "error") in _rules(_fp4_model(scale_type=int(ir.DataType.FLOAT8E5M2)))
    assert ("fp4q", "positive-scale", "error") in _rules(_fp4_model(gs=np.float32(-1)))
    assert ("fp4q", "trt-domain", "error") in _rules(_fp4_model(trt_import=False))
    assert ("dq_w", "fp4", "error") in _rules(_fp4_model(weight_block=32))
    rules = _rules(_fp4_model(shape=(4, 24)))
    assert ("fp4q", "fp4", "error") in rules  # 24 is not a multiple of 16
    rank4 = jq.export.check_tensorrt(_fp4_model(shape=(2, 2, 4, 32)))
    assert any(v.node == "fp4q" and "2-D or 3-D" in v.message for v in rank4)


def test_violation_formatting_names_the_node():
    (v, *_) = jq.export.check_tensorrt(_qdq_model(zp=np.int8(3)))
    text = str(v)
    assert text.startswith("error [zero-point] Q (QuantizeLinear):") and "[3, 3]" in text


def test_accepts_paths_and_ir_models(tmp_path):
    import onnx

    m = _qdq_model(zp=np.int8(1))
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    assert _rules(str(path)) == _rules(ir.serde.deserialize_model(m)) == _rules(m)
