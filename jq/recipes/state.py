"""Delayed-scaling state as an explicit pytree, and how a step's amax observations reach it.

Per quantized linear site the state is::

    DelayedScalingState(
        x=TensorScalingState(amax_history=f32[..., H], scale=f32[...]),
        w=TensorScalingState(...),
        dy=TensorScalingState(...),
    )

where ``...`` are optional leading axes (a ``lax.scan`` over layers, the experts of a batched dot).
``amax_history[..., 0]`` is the newest entry; ``scale`` is what the next step quantizes with.

The mechanism (a custom_vjp "cotangent" channel). The amax of ``dy`` exists only inside the backward pass,
and the only thing a backward pass can hand back in JAX is a cotangent. So the site's custom_vjp takes the
state as an ordinary differentiable input and its backward returns, *as the state's cotangent*, an
**observation**: a ``DelayedScalingState`` whose ``amax_history[..., 0]`` holds the amax of x, W and dy seen
in this step and which is zero everywhere else (``scale`` included). A training step therefore reads::

    loss, (grads, obs) = jax.value_and_grad(loss_fn, argnums=(0, 1))(params, rstate, batch)
    rstate = recipe.update_state(rstate, obs)        # roll histories, recompute scales
    params = optax.apply_updates(params, opt.update(grads, ...)[0])   # obs never goes to the optimizer

Why it is correct where it matters:
- ``jax.checkpoint`` (remat) recomputes the forward; the observation is computed in the backward only once.
- ``lax.scan`` over layers with a state of leading axis L: each layer's slice is used once per step, so the
  cotangent is the stacked per-layer observation.
- Gradient accumulation over micro-batches: combine the observations with :func:`merge_observations`
  (elementwise max, TE's amax reduction), *not* by summing them as you sum the gradients, then update once.
- ``shard_map``: the site ``pmax``-es its amaxes over ``axis_names``, so the observation is replicated and the
  state's cotangent is not summed over devices (checked in tests/recipes/test_sharded.py).

The one thing it cannot do: if one state is *consumed twice* in a differentiated function (a Python loop
calling the same site twice with the same state, a scan that closes over the state instead of scanning it,
``vmap`` over a batch with an unbatched state), JAX sums the cotangents, so the observation is the *sum* of
the amaxes. That over-estimates the amax (a smaller, safe scale, never overflow); give each call its own
state slice to get the exact max.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["TensorScalingState", "DelayedScalingState", "observation", "merge_observations"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TensorScalingState:
    """Amax history (newest at index 0) and the current scale of one quantized tensor (TE's fp8 meta)."""

    amax_history: jax.Array
    scale: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DelayedScalingState:
    """The delayed-scaling state of one linear site: one :class:`TensorScalingState` each for x, W and dy."""

    x: TensorScalingState
    w: TensorScalingState
    dy: TensorScalingState


def observation(state: DelayedScalingState, amax_x, amax_w, amax_dy) -> DelayedScalingState:
    """The cotangent a site returns for ``state``: each amax at ``amax_history[..., 0]``, zeros elsewhere.

    Example:
      >>> s = DelayedScalingState(*[TensorScalingState(jnp.zeros(3), jnp.ones(())) for _ in range(3)])
      >>> observation(s, 1.0, 2.0, 3.0).w.amax_history
      Array([2., 0., 0.], dtype=float32)
    """

    def one(t: TensorScalingState, amax) -> TensorScalingState:
        hist = jnp.zeros_like(t.amax_history)
        hist = hist.at[..., 0].set(jnp.asarray(amax, hist.dtype))
        return TensorScalingState(amax_history=hist, scale=jnp.zeros_like(t.scale))

    return DelayedScalingState(x=one(state.x, amax_x), w=one(state.w, amax_w), dy=one(state.dy, amax_dy))


def merge_observations(a, b):
    """Combine the observations of two micro-batches: the elementwise max (amaxes max-reduce, never sum).

    Works on any pytree of observations (a whole model's); ``None`` leaves (stateless sites) stay ``None``.

    Example:
      >>> merge_observations({"a": jnp.array([1.0, 0.0])}, {"a": jnp.array([0.5, 2.0])})["a"]
      Array([1., 2.], dtype=float32)
    """
    return jax.tree.map(jnp.maximum, a, b)
