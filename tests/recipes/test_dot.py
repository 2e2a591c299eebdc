"""recipe_dot on general dot_generals, and a small MLP under jit, grad, remat, scan over layers and optax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jq.recipes import (
    DelayedScaling,
    Float8BlockScaling,
    Float8CurrentScaling,
    MXFP8BlockScaling,
    NVFP4BlockScaling,
    linear,
    recipe_dot,
)

from ._helpers import normal

KEY = jax.random.key(0)
NT = (((1,), (1,)), ((), ()))


def _value_and_grads(f, *args):
    """f's value and its VJP w.r.t. every argument for a fixed, non-constant cotangent (one jit)."""
    def run(*args):
        y, pb = jax.vjp(f, *args)
        return y, pb((jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape) * 1e-2).astype(y.dtype))

    return jax.jit(run)(*args)


def test_flax_dense_layout_equals_the_canonical_linear():
    r = Float8BlockScaling()  # 1x128 blocks: a wrong flattening of T or K would move the block boundaries
    x, k = normal(0, (2, 128, 256)), normal(1, (256, 32))  # Dense kernel [in, out]
    dn = (((2,), (0,)), ((), ()))
    y, (dx, dk) = _value_and_grads(lambda x, k: recipe_dot(r, x, k, dimension_numbers=dn), x, k)
    y2, (dx2, dw2) = _value_and_grads(lambda x, w: linear(r, x, w).reshape(2, 128, 32), x.reshape(256, 256), k.T)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(dx, dx2.reshape(dx.shape))
    # dk is the transposed wgrad GEMM: the same quantized operands, summed in another order on some CPUs (AMD EPYC:
    # 79 of 8192 elements one or two float32 ulps apart); a wrong T or K flattening moves block boundaries (~1e-2)
    np.testing.assert_allclose(dk, dw2.T, rtol=1e-5, atol=1e-7)


def test_weight_as_lhs_gives_dot_generals_layout():
    r = Float8CurrentScaling()
    x, w = normal(2, (8, 48)), normal(3, (24, 48))
    y_rhs, y_lhs = jax.jit(
        lambda x, w: (
            recipe_dot(r, x, w, dimension_numbers=NT),  # [T, N]
            recipe_dot(r, w, x, dimension_numbers=NT, weight_argnum=0),  # [N, T], as dot_general(w, x)
        )
    )(x, w)
    np.testing.assert_array_equal(y_lhs, y_rhs.T)


def test_several_contracting_dims_flatten_to_k():
    r = Float8CurrentScaling()
    x, w = normal(4, (8, 4, 16)), normal(5, (4, 16, 12))  # e.g. heads x head_dim -> d_model
    y, y2, ref = jax.jit(
        lambda x, w: (
            recipe_dot(r, x, w, dimension_numbers=(((1, 2), (0, 1)), ((), ()))),
            linear(r, x.reshape(8, 64), w.reshape(64, 12).T),
            jnp.einsum("thd,hdn->tn", x, w, precision="highest"),
        )
    )(x, w)
    np.testing.assert_array_equal(y, y2)
    assert float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref)) < 0.05  # E4M3 operands: a few % error


def test_batch_dims_run_one_linear_per_expert_with_its_own_key_and_state():
    r = DelayedScaling(amax_history_len=2)
    x = normal(6, (3, 8, 32)) * jnp.array([1.0, 10.0, 100.0])[:, None, None]  # expert amaxes differ
    w = normal(7, (3, 32, 16))
    dn = (((2,), (1,)), ((0,), (0,)))
    state = r.init_state((3,))
    y, (_, _, obs) = _value_and_grads(lambda x, w, s: recipe_dot(r, x, w, dimension_numbers=dn, state=s), x, w, state)
    assert y.shape == (3, 8, 16) and obs.x.amax_history.shape == (3, 2)
    np.testing.assert_array_equal(obs.x.amax_history[:, 0], jnp.abs(x).max(axis=(1, 2)))  # per expert, not summed
    per_expert = jax.jit(jax.vmap(lambda x, w, s: linear(r, x, w.T, state=s)))(x, w, state)
    np.testing.assert_array_equal(y, per_expert)


def test_site_id_gives_each_site_its_own_random_bits():
    r = NVFP4BlockScaling()
    x, w = normal(8, (32, 32)), normal(9, (32, 32))
    raw_key = jax.random.PRNGKey(0)  # raw uint32 keys work as well as typed ones
    dx = jax.jit(
        lambda site: jax.vjp(lambda x: recipe_dot(r, x, w, dimension_numbers=NT, key=raw_key, site_id=site), x)[1](x)[0],
    )
    assert not np.array_equal(dx(0), dx(1))
    np.testing.assert_array_equal(dx(0), dx(0))


def test_bf16_operands_keep_their_dtypes():
    r = MXFP8BlockScaling()
    x, w = normal(14, (2, 8, 64)).astype(jnp.bfloat16), normal(15, (64, 16)).astype(jnp.bfloat16)
    y, (dx, dw) = _value_and_grads(lambda x, w: recipe_dot(r, x, w, dimension_numbers=(((2,), (0,)), ((), ()))), x, w)
    assert (y.dtype, dx.dtype, dw.dtype) == (jnp.bfloat16,) * 3
    y32 = jax.jit(lambda x, w: recipe_dot(r, x, w, dimension_numbers=(((2,), (0,)), ((), ())), preferred_element_type=jnp.float32))(x, w)
    assert y32.dtype == jnp.float32 and bool(jnp.all(y32.astype(jnp.bfloat16) == y))


# --- a small MLP built from recipe_dot --------------------------------------------------------------

L, D, B = 2, 32, 32
DENSE = (((1,), (0,)), ((), ()))


def _params():
    return {"w": normal(10, (L, D, D), D**-0.5), "b": jnp.zeros((L, D))}


def _layer(recipe, h, w, b, key, layer, state=None):
    return jax.nn.gelu(recipe_dot(recipe, h, w, dimension_numbers=DENSE, key=key, site_id=layer, state=state) + b)


def _mlp_unrolled(recipe, params, x, key, remat=False):
    layer = jax.checkpoint(_layer, static_argnums=(0,)) if remat else _layer
    h = x
    for i in range(L):
        h = layer(recipe, h, params["w"][i], params["b"][i], key, i)
    return jnp.mean((h - x) ** 2)


def _mlp_scan(recipe, params, x, key, state=None):
    def body(h, layer_in):
        w, b, i, st = layer_in
        return _layer(recipe, h, w, b, jax.random.fold_in(key, i), 0, st), None

    h, _ = jax.lax.scan(body, x, (params["w"], params["b"], jnp.arange(L), state))
    return jnp.mean((h - x) ** 2)


def test_mlp_grad_jit_and_remat_agree():
    r = NVFP4BlockScaling()
    x = normal(11, (B, D))
    grad = jax.grad(_mlp_unrolled, argnums=1)
    g, g_remat = jax.jit(lambda p: (grad(r, p, x, KEY, False), grad(r, p, x, KEY, True)))(_params())
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_remat)):
        np.testing.assert_array_equal(a, b)  # remat recomputes the same quantized forward, same bits
    assert all(bool(jnp.isfinite(a).all()) and bool(jnp.any(a != 0)) for a in jax.tree.leaves(g))


def test_scan_over_layers_with_delayed_scaling_state():
    r = DelayedScaling(amax_history_len=4)
    x = normal(12, (B, D))
    state = r.init_state((L,))  # a leading layer axis, scanned with the stacked params
    loss, (g, obs) = jax.jit(jax.value_and_grad(_mlp_scan, argnums=(1, 4)), static_argnums=0)(r, _params(), x, KEY, state)
    assert obs.x.amax_history.shape == (L, 4)
    np.testing.assert_array_equal(obs.x.amax_history[0, 0], jnp.abs(x).max())  # layer 0 sees the input
    assert (obs.dy.amax_history[:, 0] > 0).all() and (obs.x.amax_history[:, 1:] == 0).all()
    new = r.update_state(state, obs)
    np.testing.assert_array_equal(new.x.scale, 448.0 / obs.x.amax_history[:, 0])
    assert all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves(g)) and np.isfinite(loss)


def test_optax_training_with_nvfp4_reduces_the_loss():
    optax = pytest.importorskip("optax")
    r = NVFP4BlockScaling()
    x = normal(13, (B, D))
    opt = optax.adam(3e-3)
    params = _params()
    params = {"w": params["w"] * 3, "b": params["b"]}  # start away from the identity-ish optimum

    @jax.jit
    def step(params, opt_state, key):
        loss, g = jax.value_and_grad(_mlp_scan, argnums=1)(r, params, x, key)
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = opt.init(params), []
    for i in range(20):
        params, opt_state, loss = step(params, opt_state, jax.random.fold_in(KEY, i))
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]
