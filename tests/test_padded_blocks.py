"""Blocks on a dimension that is not a multiple of the block size (issue 11 item 8): fake quant zero-pads the last
block, the summary says ``padded``, and each deployment path either serves the layer exactly or refuses it naming
the layer and the dimension."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq
from jq import deploy
from jq.config import QuantizerSpec

K = 40  # not a multiple of 16 (NVFP4), 32 (MX) or 128 (INT4)
NVFP4 = {"num_bits": (2, 1), "block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (4, 3)}}
MXFP4 = {"num_bits": (2, 1), "block_sizes": {-1: 32, "type": "dynamic", "scale_bits": (8, 0)}}
INT4 = {"num_bits": 4, "block_sizes": {-1: 128}}


def _model(weight, inp=None):
    params = {"w1": jnp.sin(jnp.arange(32 * K, dtype=jnp.float32)).reshape(32, K),
              "w2": jnp.cos(jnp.arange(32 * 32, dtype=jnp.float32)).reshape(32, 32)}
    fn = lambda p, x: jnp.tanh(x @ p["w1"].T) @ p["w2"].T  # noqa: E731
    x = jnp.sin(jnp.arange(4 * K, dtype=jnp.float32) * 0.3).reshape(4, K)
    cfg = {"quant_cfg": {"default": {"enable": False}, "*weight_quantizer": weight,
                         "*input_quantizer": inp or {"enable": False}}, "algorithm": "max"}
    return jq.quantize(params, fn, cfg, calib_data=[(x,)], progress=False), x


@pytest.mark.parametrize("fields", [NVFP4, MXFP4, {**INT4, "type": "dynamic"}], ids=["nvfp4", "mxfp4", "int4"])
def test_fake_quant_of_a_partial_block_equals_quantizing_the_zero_padded_tensor(fields):
    spec = QuantizerSpec.from_dict(fields)
    x = jnp.sin(jnp.arange(3 * K, dtype=jnp.float32) * 0.7).reshape(3, K) * 5.0
    b = spec.block_sizes.axes[-1]
    padded = jnp.pad(x, ((0, 0), (0, -(-K // b) * b - K)))
    got = jq.fake_quant(x, spec=spec)
    assert got.shape == x.shape
    np.testing.assert_array_equal(got, jq.fake_quant(padded, spec=spec)[:, :K])


def test_summary_marks_padded_quantizers():
    qm, _ = _model(NVFP4, NVFP4)
    rows = {line.split()[0]: line for line in jq.quant_summary(qm).splitlines()[2:8]}
    assert "nvfp4 b16 padded (axis 1: 40 -> 48)" in rows["w1.weight_quantizer"]
    assert "nvfp4 b16 padded (axis 1: 40 -> 48)" in rows["w1.input_quantizer"]
    assert "padded" not in rows["w2.weight_quantizer"] and "padded" not in rows["w2.input_quantizer"]


def test_onnx_refuses_nvfp4_activations_on_a_partial_block():
    qm, x = _model(NVFP4, NVFP4)  # TensorRT's DynamicQuantize needs the blocked axis to be a multiple of 16
    with pytest.raises(ValueError, match=r"quantizer 'w1\.input_quantizer'.*axis 1 of its tensor \(4, 40\) has 40 "
                                         r"elements, not a multiple of the 16-element blocks"):
        jq.export.to_onnx(qm, (x,))


def test_onnx_writes_int4_partial_blocks_as_ceil_scales_and_onnxruntime_agrees():
    pytest.importorskip("onnxruntime")
    qm, x = _model(INT4)
    proto = jq.export.to_onnx(qm, (x,))
    scale = next(t for t in proto.graph.initializer if t.name == "w1.weight_quantizer.scale")
    assert list(scale.dims) == [1, 32]  # ceil(40 / 128) blocks along K
    (y,) = jq.export.run_onnxruntime(proto, [np.asarray(x)])
    np.testing.assert_allclose(y, np.asarray(qm(x)), rtol=1e-5, atol=1e-5)


def test_hf_checkpoint_refuses_nvfp4_weights_on_a_partial_block(tmp_path):
    qm, _ = _model(NVFP4)
    with pytest.raises(ValueError, match=r"site 'w1': axis 1 of its weight \(32, 40\) has 40 elements, not a "
                                         r"multiple of the nvfp4 b16 block size 16"):
        jq.export.to_hf_checkpoint(qm, tmp_path / "ckpt")


def test_hf_checkpoint_stores_int4_partial_groups_and_reads_them_back(tmp_path):
    qm, _ = _model(INT4)
    ck = jq.export.read_hf_checkpoint(jq.export.to_hf_checkpoint(qm, tmp_path / "ckpt"))
    assert ck.tensors["w1.weight_scale"].shape == (32, 1)
    site = next(s for s in qm.traced.sites if s.name == "w1")
    ref = jq.fake_quant(qm.params["w1"], qm.qstate[site.weight_quantizer]["amax"], spec=qm.spec(site.weight_quantizer))
    np.testing.assert_allclose(ck.dequantize("w1"), np.asarray(ref), rtol=2.5e-7, atol=0)


@pytest.mark.parametrize("weight, kernel", [(NVFP4, "nvfp4_w4a16"), (INT4, "int4_w4a16")], ids=["nvfp4", "int4"])
def test_deploy_serves_partial_blocks_like_fake_quant(weight, kernel):
    qm, x = _model(weight)
    rm = deploy.realize(qm, backend="xla")
    assert rm.plan == {"w1": kernel, "w2": kernel}
    y_fake = jax.jit(qm.apply)(qm.params, x)  # op by op the NVFP4 fake quant costs seconds of eager compiles
    np.testing.assert_allclose(np.asarray(rm(x)), np.asarray(y_fake), rtol=1e-5, atol=1e-5)
