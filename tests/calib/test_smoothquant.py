"""SmoothQuant: the per-channel scale formula, neutrality of smoothing, siblings, and the accuracy gain."""

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import pytest

import jq


class QKDown(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(32, name="q")(x) + nn.Dense(32, name="k")(x)
        return nn.Dense(8, name="down")(jax.nn.gelu(h))


@pytest.fixture
def outlier_data(rng):
    x = rng.standard_normal((128, 64)).astype(np.float32)
    x[:, 3] *= 40.0  # an outlier channel, as in LLM activations
    return jnp.asarray(x)


def test_scale_formula_by_hand(rng):
    w = jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)  # [in, out] plain weight
    x = jnp.asarray(rng.standard_normal((32, 16)) * np.linspace(0.5, 20, 16), jnp.float32)
    cfg = {**jq.INT8_SMOOTHQUANT_CFG, "algorithm": {"method": "smoothquant", "alpha": 0.5}}
    qm = jq.quantize({"w": w}, lambda p, x: x @ p["w"], cfg, calib_data=[(x,)], progress=False)
    a = jnp.max(jnp.abs(x), axis=0)
    wmax = jnp.max(jnp.abs(w), axis=1)  # per input channel over the output rows
    want = jnp.clip(jnp.sqrt(wmax) / jnp.sqrt(a), 1e-4, 1e4)
    np.testing.assert_allclose(qm.qstate["w.input_quantizer"]["pre_quant_scale"], want, rtol=1e-6)
    # the activation amax is recalibrated on the smoothed input
    np.testing.assert_allclose(qm.qstate["w.input_quantizer"]["amax"], jnp.max(jnp.abs(x * want)), rtol=1e-6)


def test_smoothing_alone_leaves_the_float_model_unchanged(outlier_data):
    m = QKDown()
    p = m.init(jax.random.key(0), outlier_data)
    qm = jq.quantize(p, m.apply, jq.INT8_SMOOTHQUANT_CFG, calib_data=[(outlier_data,)], progress=False)
    off = jq.disable_quantizer(qm, "*")
    np.testing.assert_allclose(off(outlier_data), m.apply(p, outlier_data), rtol=1e-4, atol=1e-5)


def test_siblings_share_one_scale_and_error_drops(outlier_data):
    m = QKDown()
    p = m.init(jax.random.key(0), outlier_data)
    ref = m.apply(p, outlier_data)
    plain = jq.quantize(p, m.apply, jq.INT8_DEFAULT_CFG, calib_data=[(outlier_data,)], progress=False)
    smooth = jq.quantize(p, m.apply, jq.INT8_SMOOTHQUANT_CFG, calib_data=[(outlier_data,)], progress=False)
    st = smooth.qstate
    np.testing.assert_array_equal(st["q.input_quantizer"]["pre_quant_scale"], st["k.input_quantizer"]["pre_quant_scale"])
    err = lambda q: float(jnp.mean((q(outlier_data) - ref) ** 2))  # noqa: E731
    assert err(smooth) < 0.5 * err(plain)


def test_only_integer_sites_are_smoothed(outlier_data):
    m = QKDown()
    p = m.init(jax.random.key(0), outlier_data)
    cfg = {**jq.FP8_DEFAULT_CFG, "algorithm": "smoothquant"}
    qm = jq.quantize(p, m.apply, cfg, calib_data=[(outlier_data,)], progress=False)
    assert not any("pre_quant_scale" in v for v in qm.qstate.values())
