"""AWQ-clip and AWQ-full: ModelOpt's ratio grid, the per-block search by hand, NVFP4's static switch, options."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq
from jq.presets import with_output_head
from jq.calib.awq_clip import clip_ratios
from jq.fake_quant import fake_quant
from tests.calib.test_smoothquant import QKDown

W4 = {"num_bits": 4, "block_sizes": {-1: 16}, "enable": True}
INT4_G16 = with_output_head(jq.merge_presets(jq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG, {"quant_cfg": {"*weight_quantizer": W4}}))


def linear(p, x):
    return x @ p["w"]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 64)).astype(np.float32)
    x[:, 5] *= 20.0  # an outlier channel
    w = rng.standard_normal((64, 24)).astype(np.float32)
    w[7, 3] = 9.0  # an outlier weight: clipping its block trades it for the others
    return {"w": jnp.asarray(w)}, jnp.asarray(x)


def test_ratio_grid_is_modelopts():
    assert clip_ratios() == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
    assert clip_ratios(0.8, 0.1) == (0.8, 0.9, 1.0)


def test_each_block_takes_the_ratio_with_the_least_output_error(data):
    p, x = data
    batches = [(x[:40],), (x[40:],)]
    cfg = {**INT4_G16, "algorithm": {"method": "awq_clip", "max_tokens_per_batch": 8}}
    qm = jq.quantize(p, linear, cfg, calib_data=batches, progress=False)
    spec = qm.spec("w.weight_quantizer")
    w = np.asarray(p["w"]).T  # canonical [out, in]
    base = spec.format.compute_amax(jnp.asarray(w), spec)  # [24 rows, 4 blocks]
    pin = np.zeros(base.shape, bool)
    pin.flat[np.argmax(base)] = True
    ratios = clip_ratios()
    loss = np.zeros((len(ratios),) + base.shape)
    for (xb,) in batches:
        xs = np.asarray(xb)[:: 40 // 8]  # ModelOpt's token subsample: every 5th of 40 tokens
        for k, r in enumerate(ratios):
            d = np.asarray(fake_quant(jnp.asarray(w), jnp.where(pin, base, base * r), spec=spec)) - w
            part = np.einsum("tbj,obj->tob", xs.reshape(-1, 4, 16), d.reshape(24, 4, 16))
            loss[k] += np.mean(part ** 2, axis=0)
    want = np.where(pin, base, base * np.asarray(ratios)[np.argmin(loss, axis=0)])
    np.testing.assert_allclose(qm.qstate["w.weight_quantizer"]["amax"], want, rtol=1e-6)
    assert np.sum(want < base) > base.size // 4  # the search clips many blocks
    rtn = jq.quantize(p, linear, INT4_G16, calib_data=batches, progress=False)
    err = lambda q: float(jnp.mean((jax.jit(q.apply)(q.params, x) - linear(p, x)) ** 2))  # noqa: E731
    assert err(qm) < err(rtn)


@pytest.mark.parametrize("preset", ["NVFP4_AWQ_CLIP_CFG", "NVFP4_AWQ_FULL_CFG"])
def test_nvfp4_switches_to_static_block_amaxes_and_keeps_its_global_scale(rng, preset):
    x = rng.standard_normal((64, 64)).astype(np.float32)
    x[:, 5] *= 30.0
    x = jnp.asarray(x)
    m = QKDown()
    p = m.init(jax.random.key(0), x)
    qm = jq.quantize(p, m.apply, with_output_head(getattr(jq, preset)), calib_data=[(x[:32],), (x[32:],)], progress=False)
    rtn = jq.quantize(p, m.apply, with_output_head(jq.NVFP4_DEFAULT_CFG), calib_data=[(x[:32],), (x[32:],)], progress=False)
    spec = qm.spec("q.weight_quantizer")
    assert spec.describe() == "nvfp4 b16 static" and qm.spec("q.input_quantizer").describe() == "nvfp4 b16"
    amax = qm.qstate["q.weight_quantizer"]["amax"]
    w = p["params"]["q"]["kernel"].T
    pqs = qm.qstate["q.input_quantizer"].get("pre_quant_scale")
    if pqs is not None:  # AWQ-full: the searched weight is W / pre_quant_scale
        w = w / pqs[None, :]
    assert amax.shape == (32, 4)
    assert float(jnp.max(amax)) == pytest.approx(float(jnp.max(jnp.abs(w))), rel=1e-6)  # global scale kept
    assert float(jnp.min(amax / spec.format.compute_amax(w, spec))) <= 0.9  # some blocks clipped
    ref = m.apply(p, x)
    err = lambda q: float(jnp.mean((jax.jit(q.apply)(q.params, x) - ref) ** 2))  # noqa: E731
    assert err(qm) < err(rtn)
    assert (pqs is not None) == (preset == "NVFP4_AWQ_FULL_CFG")


def test_awq_full_on_a_sequential_quantizer_recalibrates_the_later_stage(data):
    p, x = data
    cfg = jq.merge_presets(jq.W4A8_AWQ_BETA_CFG, {"quant_cfg": {"*weight_quantizer": [
        W4, {"num_bits": (4, 3), "axis": None, "enable": True}]}})
    qm = jq.quantize(p, linear, {**cfg, "algorithm": "awq_full"}, calib_data=[(x,)], progress=False)
    st = qm.qstate["w.weight_quantizer"]
    spec0, spec1 = qm.spec("w.weight_quantizer")
    w = p["w"].T / st_pqs(qm)[None, :]
    stage0 = fake_quant(w, st["amax"], spec=spec0)
    assert float(st["amax_1"]) == pytest.approx(float(jnp.max(jnp.abs(stage0))), rel=1e-6)


def st_pqs(qm):
    return qm.qstate["w.input_quantizer"]["pre_quant_scale"]


def test_formats_without_static_blocks_are_skipped_with_a_warning(data):
    p, x = data
    cfg = {"quant_cfg": {"*weight_quantizer": {"num_bits": (2, 1), "block_sizes": {
        -1: 32, "type": "dynamic", "scale_bits": (8, 0)}}, "default": {"enable": False}}}
    with pytest.warns(UserWarning, match=r"awq_clip: 1 block-quantized site.*mxfp4 b32 has no calibrated per-block"):
        qm = jq.quantize(p, linear, {**cfg, "algorithm": "awq_clip"}, calib_data=[(x,)], progress=False)
    assert qm.spec("w.weight_quantizer").describe() == "mxfp4 b32"


@pytest.mark.parametrize("option, match", [
    ({"min_clip_ratio": 1.5}, r"min_clip_ratio must be a number in \(0, 1\)"),
    ({"shrink_step": "0.05"}, r"shrink_step must be a number in \(0, 1\]"),
    ({"max_tokens_per_batch": 64.0}, "max_tokens_per_batch must be a positive int"),
    ({"max_co_batch_size": 0}, "max_co_batch_size must be a positive int"),
])
def test_bad_options_are_named(data, option, match):
    p, x = data
    for method in ("awq_clip", "awq_full"):
        with pytest.raises(ValueError, match=f"'{method}': {match}"):
            jq.quantize(p, linear, {**INT4_G16, "algorithm": {"method": method, **option}}, calib_data=[(x,)],
                        progress=False)
