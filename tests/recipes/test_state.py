"""DelayedScaling state: quantize with the stored scale, observe amaxes through the VJP, roll the history."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jq.recipes import (
    DelayedScaling,
    DelayedScalingState,
    Float8CurrentScaling,
    TensorScalingState,
    linear,
    merge_observations,
    observation,
)

from ._helpers import normal, vjp_operands

X, W, DY = normal(0, (32, 64)), normal(1, (48, 64), 0.5), normal(2, (32, 48), 1e-3)


@functools.partial(jax.jit, static_argnums=0)
def _observe(recipe, state, x_amax, w_amax, dy_amax):
    return recipe.update_state(state, observation(state, x_amax, w_amax, dy_amax))


def test_update_rolls_the_history_and_takes_its_max():
    r = DelayedScaling(amax_history_len=3)
    s = r.init_state()
    for a in (1.0, 4.0, 2.0):
        s = _observe(r, s, a, a, a)
    np.testing.assert_array_equal(s.x.amax_history, [2.0, 4.0, 1.0])  # newest first
    assert float(s.x.scale) == 448.0 / 4.0  # max over the window
    assert float(s.dy.scale) == 57344.0 / 4.0  # dy is E5M2 under "hybrid"
    for a in (0.5, 0.5):
        s = _observe(r, s, a, a, a)
    assert float(s.x.scale) == 448.0 / 2.0  # 4.0 has left the 3-step window


def test_most_recent_and_margin():
    r = DelayedScaling(amax_history_len=4, amax_compute_algo="most_recent", margin=2)
    s = r.init_state()
    for a in (8.0, 2.0):
        s = _observe(r, s, a, a, a)
    assert float(s.w.scale) == 448.0 / 4 / 2.0  # (fp8_max * 2^-margin) / newest amax


def test_callable_amax_compute_algo():
    r = DelayedScaling(amax_history_len=2, amax_compute_algo=lambda h: jnp.mean(h, axis=-1))
    s = _observe(r, _observe(r, r.init_state(), 2.0, 2.0, 2.0), 6.0, 6.0, 6.0)
    assert float(s.x.scale) == 448.0 / 4.0


def test_zero_or_nonfinite_amax_keeps_the_old_scale():
    r = DelayedScaling(amax_history_len=1)
    s = _observe(r, r.init_state(), 7.0, 7.0, 7.0)
    assert float(_observe(r, s, 0.0, 0.0, 0.0).x.scale) == 64.0
    assert float(_observe(r, s, jnp.inf, 0.0, 0.0).x.scale) == 64.0


def test_update_state_maps_over_a_tree_of_sites():
    r = DelayedScaling(amax_history_len=2)
    sites = {"mlp": {"up": r.init_state(), "down": r.init_state()}, "embed": None}
    obs = {
        "mlp": {"up": observation(sites["mlp"]["up"], 2.0, 4.0, 8.0), "down": observation(sites["mlp"]["down"], 1.0, 1.0, 1.0)},
        "embed": None,
    }
    new = jax.jit(r.update_state)(sites, obs)
    assert new["embed"] is None
    assert float(new["mlp"]["up"].w.scale) == 112.0 and float(new["mlp"]["down"].w.scale) == 448.0


def test_initial_state_is_te_initial_state():
    s = DelayedScaling(amax_history_len=5).init_state((3,))
    assert s.x.amax_history.shape == (3, 5) and s.x.scale.shape == (3,)
    np.testing.assert_array_equal(s.dy.amax_history, 0.0)
    np.testing.assert_array_equal(s.w.scale, 1.0)


def test_delayed_scaling_quantizes_with_the_history_not_the_current_amax():
    r = DelayedScaling(amax_history_len=4)
    state = _observe(r, r.init_state(), 16.0, 16.0, 1.0)  # a past step saw |x| up to 16: scale 28
    assert float(jnp.abs(X).max()) < 5  # this step's amax is much smaller
    _, _, _, delayed = vjp_operands(r, X, W, DY, state=state)
    _, _, _, current = vjp_operands(Float8CurrentScaling(), X, W, DY)
    scaled = jnp.clip(X * 28.0, -448, 448)
    expected = np.asarray(scaled.astype(jnp.float8_e4m3fn).astype(jnp.float32)) * np.float32(1 / 28.0)
    np.testing.assert_array_equal(delayed["fprop"][0], expected)
    assert not np.array_equal(delayed["fprop"][0], current["fprop"][0])


@functools.partial(jax.jit, static_argnums=0)
def _grads(recipe, state, x, dy):
    """The training-step call: differentiate w.r.t. (x, w, state); the state's cotangent is the observation."""
    _, pb = jax.vjp(lambda x, w, s: linear(recipe, x, w, state=s), x, W, state)
    return pb(dy)


def test_amaxes_reach_the_state_as_its_cotangent():
    r = DelayedScaling(amax_history_len=4)
    _, _, obs = _grads(r, r.init_state(), X, DY)
    assert isinstance(obs, DelayedScalingState)
    for t, a in (("x", X), ("w", W), ("dy", DY)):
        got = getattr(obs, t)
        np.testing.assert_array_equal(got.amax_history, [jnp.abs(a).max(), 0, 0, 0])
        assert float(got.scale) == 0.0


def test_gradient_accumulation_max_reduces_the_observations():
    r = DelayedScaling(amax_history_len=4)
    s = r.init_state()
    x1, x2 = X[:16], X[16:] * 3.0
    dy1, dy2 = DY[:16] * 5.0, DY[16:]
    obs1, obs2 = _grads(r, s, x1, dy1)[2], _grads(r, s, x2, dy2)[2]
    merged = merge_observations(obs1, obs2)
    full = _grads(r, s, jnp.concatenate([x1, x2]), jnp.concatenate([dy1, dy2]))[2]  # one big batch
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(full)):
        np.testing.assert_array_equal(a, b)
    summed = jax.tree.map(jnp.add, obs1, obs2)  # what adding them like gradients would give
    assert float(summed.x.amax_history[0]) > float(full.x.amax_history[0])


def test_orbax_round_trip_is_bit_exact(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    r = DelayedScaling(amax_history_len=8)
    state = r.init_state((2,))
    for i, a in enumerate((3.0, 1e-3, 7.5)):
        state = _observe(r, state, jnp.array([a, 2 * a]), a / 3, jnp.float32(a) * 1e-5 * (i + 1))
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "rstate", state)
    with ocp.StandardCheckpointer() as ckpt:
        restored = ckpt.restore(tmp_path / "rstate", jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))
    nxt = _observe(r, restored, 1.0, 1.0, 1.0)  # training resumes from the restored state
    assert isinstance(nxt.x, TensorScalingState) and nxt.x.amax_history.shape == (2, 8)
