"""jq.deploy.realize: real-quantized serving matches the fake-quant model (CPU: reference W4A16 path)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import jq
from jq import deploy
from jq.presets import with_output_head


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(256, name="fc1")(x))
        x = nn.Dense(128, name="fc2")(x)
        return nn.DenseGeneral((4, 32), name="fc3")(x)


@pytest.fixture(scope="module")
def model():
    m = MLP()
    x = jax.random.normal(jax.random.key(0), (8, 192))
    return m, m.init(jax.random.key(1), x), x


@pytest.mark.parametrize("cfg,kind", [("FP8_DEFAULT_CFG", "fp8"), ("W4A16_NVFP4_CFG", "nvfp4_w4a16"),
                                      ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "int4_w4a16"),
                                      ("NVFP4_DEFAULT_CFG", "nvfp4_w4a16"),
                                      ("INT4_AWQ_CFG", "int4_w4a16")])  # pre_quant_scale: (x * s) @ q(W / s)
def test_realize_matches_fake_quant(model, cfg, kind):
    m, params, x = model
    qm = jq.quantize(params, m.apply, with_output_head(getattr(jq, cfg)), calib_data=[(x,)], progress=False)
    rm = deploy.realize(qm)
    assert set(rm.plan.values()) == {kind}
    y_fake = jax.jit(qm.apply)(qm.params, x)  # op by op the NVFP4 fake quant costs ~14 s of eager compiles
    y_real = jax.jit(rm.apply)(rm.weights, rm.params, x)
    assert y_real.shape == y_fake.shape == (8, 4, 32)
    assert float(jnp.linalg.norm(y_fake - y_real) / jnp.linalg.norm(y_fake)) < 1e-5
    if kind != "fake":
        assert rm.nbytes < sum(a.size * 4 for a in jax.tree_util.tree_leaves(params))


def test_realize_site_override(model):
    m, params, x = model
    qm = jq.quantize(params, m.apply, jq.W4A16_NVFP4_CFG, calib_data=[(x,)], progress=False)
    rm = deploy.realize(qm, sites={"fc2": "fake"})
    assert rm.plan["fc2"] == "fake" and rm.plan["fc1"] == "nvfp4_w4a16" and "fc2" not in rm.weights
    y_real = jax.jit(rm.apply)(rm.weights, rm.params, x)  # ``rm(x)``, compiled once instead of run op by op twice
    assert float(jnp.linalg.norm(jax.jit(qm.apply)(qm.params, x) - y_real)) / float(jnp.linalg.norm(y_real)) < 1e-5
    with pytest.raises(ValueError):
        deploy.realize(qm, sites={"fc2": "fp8"})
