"""recipe_apply: a recipe on any apply_fn through the transform equals hand-written recipe_dot calls."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jq.recipes import (
    DelayedScaling,
    MXFP8BlockScaling,
    NVFP4BlockScaling,
    QOperand,
    bf16_gemm,
    fake_gemm,
    init_recipe_state,
    recipe_apply,
    recipe_dot,
)

KEY = jax.random.key(5)
DENSE = (((2,), (0,)), ((), ()))  # Flax Dense: x [B, S, K] . kernel [K, N]


class Net(nn.Module):
    """Two Dense layers around an attention-like product of two activations (a bmm site, left alone)."""

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(32, use_bias=False, name="up")(x)
        h = jnp.einsum("bsk,btk->bst", h, h) @ h / 32.0  # activation x activation: not a linear site
        return nn.Dense(16, use_bias=False, name="down")(jax.nn.gelu(h))


def _manual(recipe, params, x, key, state=None):
    """The same network written with recipe_dot; site ids in trace order (up = 0, down = 1)."""
    p = params["params"]
    st = state or {}
    h = recipe_dot(recipe, x, p["up"]["kernel"], dimension_numbers=DENSE, key=key, site_id=0, state=st.get("up"))
    h = jnp.einsum("bsk,btk->bst", h, h) @ h / 32.0
    return recipe_dot(recipe, jax.nn.gelu(h), p["down"]["kernel"], dimension_numbers=DENSE, key=key, site_id=1,
                      state=st.get("down"))


@pytest.fixture(scope="module")
def setup():
    net = Net()
    x = jax.random.normal(jax.random.key(0), (2, 16, 32))
    return net, net.init(jax.random.key(1), x), x


def test_forward_and_grads_equal_hand_written_recipe_dots(setup):
    net, params, x = setup
    r = NVFP4BlockScaling()
    fn = recipe_apply(r, net.apply)

    def losses(p):
        return jnp.sum(fn(p, x, key=KEY) ** 2), jnp.sum(_manual(r, p, x, KEY) ** 2)

    (a, b), (ga, gb) = jax.jit(lambda p: (losses(p), (jax.grad(lambda q: losses(q)[0])(p),
                                                       jax.grad(lambda q: losses(q)[1])(p))))(params)
    np.testing.assert_array_equal(a, b)
    for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_array_equal(u, v)  # same SR bits: same key, same site ids
    plain = jnp.sum(net.apply(params, x) ** 2)
    assert a != plain  # the recipe did quantize


def test_excluded_sites_run_unquantized(setup):
    net, params, x = setup
    fn = recipe_apply(NVFP4BlockScaling(), net.apply, exclude=("up", "down"))
    np.testing.assert_array_equal(jax.jit(lambda p: fn(p, x, key=KEY))(params), jax.jit(net.apply)(params, x))


def test_delayed_scaling_state_per_site_receives_its_amaxes(setup):
    net, params, x = setup
    r = DelayedScaling(amax_history_len=4)
    state = init_recipe_state(r, net.apply, params, x)
    assert sorted(state) == ["down", "up"] and state["up"].x.amax_history.shape == (4,)
    assert init_recipe_state(NVFP4BlockScaling(), net.apply, params, x) is None
    fn = recipe_apply(r, net.apply)
    obs = jax.jit(jax.grad(lambda s: jnp.sum(fn(params, x, state=s)), allow_int=True))(state)
    np.testing.assert_allclose(obs["up"].x.amax_history[0], jnp.abs(x).max())
    np.testing.assert_allclose(obs["up"].w.amax_history[0], jnp.abs(params["params"]["up"]["kernel"]).max())
    assert float(obs["down"].dy.amax_history[0]) == 1.0  # d sum(y) / dy = 1 everywhere
    assert r.update_state(state, obs)["up"].x.scale == pytest.approx(448.0 / float(jnp.abs(x).max()), rel=1e-6)


def test_bf16_gemm_is_exact_on_mxfp8_operands():
    q = MXFP8BlockScaling().plan().fprop_x
    from jq.recipes import OperandContext

    a = q(jax.random.normal(jax.random.key(2), (8, 64)) * 100, OperandContext())
    b = q(jax.random.normal(jax.random.key(3), (4, 64)), OperandContext())
    assert bool(jnp.all(a.dequantized.astype(jnp.bfloat16).astype(jnp.float32) == a.dequantized))
    np.testing.assert_allclose(bf16_gemm(a, b, which="fprop"), fake_gemm(a, b, which="fprop"), rtol=1e-5, atol=1e-3)
    # not exact for arbitrary float32 operands: the cast rounds
    c = QOperand(jnp.full((1, 64), 1.0 + 2.0**-12))
    assert float(bf16_gemm(c, c, which="fprop")[0, 0]) == 64.0
