"""The jq_fake_quant lowering (jq.export.qdq), operator by operator.

Measured tolerances (ONNX Runtime 1.31.1 CPU vs jq on the same inputs):

* FP8 E4M3, activations and weights, Q->DQ and DQ-only: **bit-exact**. The DQ scale is jq's own multiplier
  ``1 / (448 * (1 / amax))``; ONNX's ``x / scale`` rounds to the same E4M3 values as jq's ``x * s`` here.
* INT8/INT4: codes equal, dequantized values within 2 float32 ulps (measured <= 1.7e-7 relative): ONNX
  multiplies by ``amax / maxb``, jq divides by ``maxb / amax``.
* NVFP4 weights (FLOAT4E2M1 + E4M3 scales, evaluated with ONNX's reference evaluator since ORT has no FP4
  kernels on CPU): bit-exact.
"""

import ml_dtypes
import numpy as np
import jax.numpy as jnp
import onnx_ir as ir
import pytest
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

import jq
import jq.export
from jq import numerics as nx
from jq.config import QuantizerSpec
from jq.export.onnx import ExportOptions, _convert
from jq.quantizer import CanonicalView, compute_amax

INT_RTOL = 2.5e-7  # two float32 ulps
RNG = np.random.default_rng(0)
X = (RNG.standard_normal((64, 256)) * 2).astype(np.float32)
W = (RNG.standard_normal((256, 32)) * 0.1).astype(np.float32)
VIEW = CanonicalView((1, 0), (32, 256), 0)  # a Flax Dense kernel [in=256, out=32]
NVFP4 = QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, "type": "dynamic", "scale_bits": (4, 3)})


class TRT_FP4DynamicQuantize(OpRun):
    """TensorRT's dynamic NVFP4 quantization for ONNX's reference evaluator, from jq's numerics:
    ``s_b = e4m3(amax_b / (6 gs))``, ``q = E2M1(x / (s_b gs))``; outputs ``(q, s_b)``."""

    op_domain = "trt"

    def _run(self, x, gs, axis=-1, block_size=16, scale_type=17):
        assert axis in (-1, x.ndim - 1) and block_size == 16 and scale_type == 17
        layout = nx.nvfp4_layout(x.shape)
        g = jnp.asarray(gs, jnp.float32).reshape(())
        s = nx.nvfp4_block_scale(layout.block_amax(jnp.asarray(x)), g)
        q = nx.round_to_minifloat(nx.exact_divide(layout.split(jnp.asarray(x, jnp.float32)), s * g), nx.E2M1)
        return (np.asarray(layout.merge(q)).astype(ml_dtypes.float4_e2m1fn),
                np.asarray(layout.squeeze_stats(s)).astype(ml_dtypes.float8_e4m3fn))


def reference_run(proto, inputs):
    """Run a graph with ONNX's reference evaluator (FP4 capable) and the TRT op above."""
    return ReferenceEvaluator(proto, new_ops=[TRT_FP4DynamicQuantize]).run(None, dict(inputs))


def _export(fn, dq_only=False, opset=21):
    return _convert(fn, (X,), ExportOptions(dynamic_batch=False, dq_only=dq_only), opset)


def _activation(spec, amax):
    fn = lambda x: [jq.fake_quant(x, jnp.float32(amax), spec=spec)]  # noqa: E731
    return _export(fn), np.asarray(fn(jnp.asarray(X))[0])


def _weight(spec, dq_only=False, opset=21):
    """Export ``x @ w_q`` and ``w_q`` itself (``+ 0 * x`` keeps it an output computed from the DQ)."""
    amax = compute_amax(VIEW.to_canonical(jnp.asarray(W)), spec)
    wq = lambda: jq.fake_quant(jnp.asarray(W), amax, spec=spec, view=VIEW)  # noqa: E731

    def fn(x):
        w = wq()
        return [x @ w, w + 0.0 * x[:1, :1]]

    res = _export(fn, dq_only, opset)
    return res, np.asarray(jnp.asarray(X) @ wq()), np.asarray(wq())


def test_int8_activation_within_two_ulps():
    res, ref = _activation(QuantizerSpec(num_bits=8), 2.54)
    y = jq.export.run_onnxruntime(res.proto, [X])[0]
    np.testing.assert_allclose(y, ref, rtol=INT_RTOL, atol=0)
    assert np.abs(X).max() > 2.54  # values beyond amax are clipped the same way
    (q,) = [n for n in res.model.graph if n.op_type == "QuantizeLinear"]
    scale = q.inputs[1].const_value.numpy()
    assert scale.dtype == np.float32 and scale == np.float32(2.54) / np.float32(127)
    assert q.inputs[2].const_value.numpy().dtype == np.int8 and q.inputs[2].const_value.numpy() == 0


@pytest.mark.parametrize("amax", [2.54, 7.3])
def test_fp8_activation_is_bit_exact(amax):
    res, ref = _activation(QuantizerSpec(num_bits=(4, 3)), amax)
    y = jq.export.run_onnxruntime(res.proto, [X])[0]
    assert np.array_equal(y, ref)
    (dq,) = [n for n in res.model.graph if n.op_type == "DequantizeLinear"]
    s = dq.inputs[1].const_value.numpy()
    assert s == np.asarray(nx.fp8_dequant_scale(nx.fp8_quant_scale(jnp.float32(amax))))  # jq's 1/s, not amax/448
    assert dq.inputs[0].dtype == ir.DataType.FLOAT8E4M3FN


@pytest.mark.parametrize("spec, exact", [
    (QuantizerSpec(num_bits=8, axis=0), False),
    (QuantizerSpec(num_bits=(4, 3)), True),
    (QuantizerSpec(num_bits=(4, 3), axis=0), True),
    (QuantizerSpec(num_bits=4, block_sizes={-1: 128}), False),
    (QuantizerSpec(num_bits=4, block_sizes={-1: 64, -2: 8}), False),  # 2-D blocks: scales repeated along out
    (QuantizerSpec(num_bits=(4, 3), block_sizes={-1: 128, -2: 16}), True),
])
@pytest.mark.parametrize("dq_only", [False, True])
def test_weights(spec, exact, dq_only):
    res, ref, wq = _weight(spec, dq_only)
    y, w_onnx = jq.export.run_onnxruntime(res.proto, [X])
    q_nodes = [n for n in res.model.graph if n.op_type == "QuantizeLinear"]
    dq_nodes = [n for n in res.model.graph if n.op_type == "DequantizeLinear"]
    assert len(dq_nodes) == 1 and len(q_nodes) == (0 if dq_only else 1)
    data = dq_nodes[0].inputs[0]
    if dq_only:  # stored quantized: an INT8 / INT4 / FP8 initializer in the operand layout [in, out]
        assert data.is_initializer() and data.name.endswith(".weight")
        assert data.dtype in (ir.DataType.INT8, ir.DataType.INT4, ir.DataType.FLOAT8E4M3FN)
        assert tuple(data.shape.dims) == W.shape
    if exact:
        assert np.array_equal(w_onnx, wq)
    else:
        np.testing.assert_allclose(w_onnx, wq, rtol=INT_RTOL, atol=0)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)  # ORT and XLA sum the matmul differently


def test_dq_only_fp8_weights_are_jq_values_times_jq_scale():
    res, _, wq = _weight(QuantizerSpec(num_bits=(4, 3)), dq_only=True)
    (dq,) = [n for n in res.model.graph if n.op_type == "DequantizeLinear"]
    got = dq.inputs[0].const_value.numpy().astype(np.float32) * dq.inputs[1].const_value.numpy()
    assert np.array_equal(got, wq)


def test_int_weight_axes_follow_the_operand_layout():
    res, _, _ = _weight(QuantizerSpec(num_bits=8, axis=0))
    for n in res.model.graph:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert n.attributes["axis"].value == 1  # out features of a [in, out] kernel
            assert n.inputs[1].const_value.numpy().shape == (32,)
    res, _, _ = _weight(QuantizerSpec(num_bits=4, block_sizes={-1: 128}), dq_only=True)
    (dq,) = [n for n in res.model.graph if n.op_type == "DequantizeLinear"]
    assert dq.attributes["axis"].value == 0 and dq.attributes["block_size"].value == 128
    assert dq.inputs[1].const_value.numpy().shape == (2, 32)


def test_nvfp4_weight_graph_is_bit_exact_in_the_reference_evaluator():
    res, ref, wq = _weight(NVFP4, opset=23)
    g = res.model.graph
    dqs = [n for n in g if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 2 and not any(n.op_type == "QuantizeLinear" for n in g)
    data, scale8, gs = dqs[1].inputs[0], dqs[0].inputs[0], dqs[0].inputs[1]
    assert data.dtype == ir.DataType.FLOAT4E2M1 and scale8.dtype == ir.DataType.FLOAT8E4M3FN
    assert gs.dtype == ir.DataType.FLOAT and gs.const_value.numpy().shape == ()
    assert dqs[1].attributes["block_size"].value == 16 and dqs[1].attributes["axis"].value == 0
    assert res.model.ir_version == 11 and res.model.opset_imports[""] == 23
    y, w_onnx = reference_run(res.proto, {"input_0": X})
    assert np.array_equal(w_onnx, wq)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_nvfp4_activation_uses_tensorrt_form():
    spec = NVFP4
    fn = lambda x: [jq.fake_quant(x, jnp.float32(6.0), spec=spec)]  # noqa: E731
    res = _convert(fn, (X,), ExportOptions(dynamic_batch=True), 23)
    ops = [(n.domain, n.op_type) for n in res.model.graph]
    assert ops == [("trt", "TRT_FP4DynamicQuantize"), ("", "DequantizeLinear"), ("", "DequantizeLinear")]
    trt_node, dq_scale, dq = list(res.model.graph)
    assert trt_node.attributes["axis"].value == -1 and trt_node.attributes["block_size"].value == 16
    assert trt_node.attributes["scale_type"].value == int(ir.DataType.FLOAT8E4M3FN)
    assert trt_node.outputs[0].dtype == ir.DataType.FLOAT4E2M1 and trt_node.outputs[1].dtype == ir.DataType.FLOAT8E4M3FN
    assert dq_scale.inputs[0] is trt_node.outputs[1] and dq.inputs[1] is dq_scale.outputs[0]
    assert trt_node.inputs[1].const_value.numpy() == np.float32(6.0) / np.float32(2688)
    assert res.model.opset_imports["trt"] == 1
    y = reference_run(res.proto, {"input_0": X[:5]})[0]
    assert np.array_equal(y, np.asarray(fn(jnp.asarray(X[:5]))[0]))


def test_nvfp4_activation_of_rank_4_is_folded_to_2d():
    spec = NVFP4
    x4 = X.reshape(4, 16, 8, 32)
    fn = lambda x: [jq.fake_quant(x, jnp.float32(6.0), spec=spec)]  # noqa: E731
    res = _convert(fn, (x4,), ExportOptions(dynamic_batch=True), 23)
    (trt_node,) = [n for n in res.model.graph if n.op_type == "TRT_FP4DynamicQuantize"]
    assert len(trt_node.inputs[0].shape) == 2 and trt_node.inputs[0].shape[1] == 32
    y = reference_run(res.proto, {"input_0": x4})[0]
    assert y.shape == x4.shape and np.array_equal(y, np.asarray(fn(jnp.asarray(x4))[0]))
