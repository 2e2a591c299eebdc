"""AWQ-lite: alpha search, scale normalisation, per-layer scales in layer scans, siblings, accuracy gain."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq
from jq.calib.awq import awq_alphas, awq_scale
from tests import _models as M
from tests.calib.test_smoothquant import QKDown


@pytest.fixture
def data(rng):
    x = rng.standard_normal((128, 64)).astype(np.float32)
    x[:, 5] *= 30.0
    return jnp.asarray(x)


def test_alpha_grid_and_scale_normalisation():
    np.testing.assert_allclose(awq_alphas(0.25), [0, 0.25, 0.5, 0.75, 1.0])
    s = awq_scale(jnp.array([1.0, 4.0, 0.25]), jnp.array([1.0, 1.0, 1.0]), 0.5)
    assert float(jnp.max(s) * jnp.min(s)) == pytest.approx(1.0)  # normalised by sqrt(max * min)
    np.testing.assert_allclose(s, [1.0, 2.0, 0.5])


@pytest.mark.parametrize("cfg", [jq.INT4_AWQ_CFG, jq.NVFP4_AWQ_LITE_CFG], ids=["int4", "nvfp4"])
def test_awq_beats_round_to_nearest(cfg, data):
    m = QKDown()
    p = m.init(jax.random.key(0), data)
    ref = m.apply(p, data)
    rtn_cfg = {**cfg, "algorithm": "max"}
    rtn = jq.quantize(p, m.apply, rtn_cfg, calib_data=[(data[:64],), (data[64:],)], progress=False)
    awq = jq.quantize(p, m.apply, cfg, calib_data=[(data[:64],), (data[64:],)], progress=False)
    err = lambda q: float(jnp.mean((jax.jit(q.apply)(q.params, data) - ref) ** 2))  # noqa: E731
    assert err(awq) < err(rtn)
    st = awq.qstate
    np.testing.assert_array_equal(st["q.input_quantizer"]["pre_quant_scale"], st["k.input_quantizer"]["pre_quant_scale"])
    assert not any(k.startswith("awq_") for v in st.values() for k in v)  # search state is dropped


def test_awq_scales_are_per_layer_in_a_layer_scan(rng):
    x = jnp.asarray(rng.standard_normal((16, 5)), jnp.float32)
    params, apply = M.linen(M.ScanStack(n_layers=3), x)
    cfg = jq.merge_presets(jq.INT4_AWQ_CFG, {"quant_cfg": {"*weight_quantizer": {
        "num_bits": 4, "block_sizes": {-1: 16}, "enable": True}}})
    qm = jq.quantize(params, apply, cfg, calib_data=[(x,)], progress=False)
    pqs = qm.qstate["layers.fc.input_quantizer"]["pre_quant_scale"]
    assert pqs.shape == (3, 16) and not np.allclose(pqs[0], pqs[1])
    off = jq.disable_quantizer(qm, "*")
    np.testing.assert_allclose(off(x), apply(params, x), rtol=1e-4, atol=1e-5)


def test_w4a8_sequential_preset_runs(data):
    m = QKDown()
    p = m.init(jax.random.key(0), data)
    qm = jq.quantize(p, m.apply, jq.W4A8_AWQ_BETA_CFG, calib_data=[(data,)], progress=False)
    assert set(qm.qstate["q.weight_quantizer"]) == {"amax", "amax_1"}
    assert float(jnp.mean(jnp.abs(qm(data) - m.apply(p, data)))) < 0.2 * float(jnp.mean(jnp.abs(m.apply(p, data))))
