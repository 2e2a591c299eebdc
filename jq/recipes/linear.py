"""The quantized linear of a training recipe: ``y = x @ W^T`` with a custom VJP whose three GEMMs all run on
operands quantized as the recipe says.

Canonical form: ``x [T, K]`` (tokens x input features), ``W [N, K]`` (output x input features, the
contraction axis last, as a PyTorch/TE ``Linear`` weight), ``y [T, N]``. Forward and backward::

    y  = gemm(Qfx(x),     Qfw(W))        # fprop
    dx = gemm(Qdg(dy),    Qdw(W^T))      # dgrad
    dW = gemm(Qwg(dy^T),  Qwx(x^T))      # wgrad; T zero-padded to a multiple of 16 when RHT is on

with ``Q..`` the six quantizers of ``recipe.plan()``. Quantization is fake (quantize-dequantize in float32)
unless ``gemm`` consumes the raw values (:func:`~jq.recipes.gemm.fp8_gemm`). Each quantizer that draws
random bits gets its own key ``fold_in(key, slot)`` (slot = its index in ``GemmPlan.SLOTS``), so a step is a
pure function of ``key``. Residuals are the high-precision ``x`` and ``W`` (the backward re-quantizes them
along the wgrad/dgrad contraction axes, as TE quantizes "columnwise" copies from high precision).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jq.recipes.gemm import fake_gemm
from jq.recipes.operands import OperandContext, tensor_amax
from jq.recipes.recipes import GemmPlan
from jq.recipes.state import observation

__all__ = ["linear"]


@dataclasses.dataclass(frozen=True)
class _Static:
    """The hashable, non-differentiable part of a call (custom_vjp ``nondiff_argnums``)."""

    recipe: object
    axis_names: tuple[str, ...]
    gemm: Callable
    out_dtype: jnp.dtype


def linear(
    recipe,
    x: jax.Array,
    w: jax.Array,
    *,
    state=None,
    key: jax.Array | None = None,
    axis_names: tuple[str, ...] = (),
    gemm: Callable = fake_gemm,
    out_dtype=None,
) -> jax.Array:
    """``x [T, K] @ w [N, K]^T`` under ``recipe`` in all three GEMMs.

    Args:
      recipe: a recipe object (``NVFP4BlockScaling()``, ``Float8CurrentScaling()``, ...).
      x: activations ``[T, K]``.
      w: weight ``[N, K]`` (contraction axis last).
      state: the site's ``DelayedScalingState`` (DelayedScaling only, else None). Differentiate w.r.t. it
        to receive this step's amax observation (see :mod:`jq.recipes.state`).
      key: PRNG key for stochastic rounding (required when ``recipe.needs_key``).
      axis_names: mesh axes (inside ``shard_map``) over which per-tensor amaxes are ``pmax``-reduced; name
        every axis that shards x, W or dy (reducing over an axis a tensor is replicated on is harmless).
      gemm: ``gemm(a, b, *, which) -> a @ b^T`` on QOperands (default: float32 emulation).
      out_dtype: dtype of ``y`` (default: ``result_type(x, w)``).

    Returns:
      ``y [T, N]``; ``dx`` and ``dW`` come back in ``x.dtype`` and ``w.dtype``.

    Example:
      >>> y = linear(Float8CurrentScaling(), jnp.ones((4, 32)), jnp.ones((8, 32)))
      >>> y.shape
      (4, 8)
    """
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"recipe linear expects x [T, K] and w [N, K]; got x {x.shape}, w {w.shape}")
    if recipe.stateful and state is None:
        raise ValueError(f"{type(recipe).__name__} keeps per-site state: pass state=recipe.init_state()")
    if recipe.needs_key and key is None:
        raise ValueError(f"{recipe!r} uses stochastic rounding: pass key=jax.random.key(...)")
    out_dtype = jnp.dtype(out_dtype) if out_dtype is not None else jnp.result_type(x.dtype, w.dtype)
    static = _Static(recipe, tuple(axis_names), gemm, out_dtype)
    return _linear(static, x, w, state, key)


def _ctx(static: _Static, plan: GemmPlan, slot: str, state, key) -> OperandContext:
    """The context of one operand: its key (folded with the slot index) and its delayed scale, if any."""
    tensor = getattr(plan, slot).tensor
    slot_key = None if key is None else jax.random.fold_in(key, GemmPlan.SLOTS.index(slot))
    scale = None if state is None else getattr(state, tensor).scale
    return OperandContext(key=slot_key, scale=scale, axis_names=static.axis_names)


def _quantize(static, plan, slot, a, state, key):
    return getattr(plan, slot)(a, _ctx(static, plan, slot, state, key))


def _varying_axes(a: jax.Array) -> frozenset:
    """Mesh axes over which ``a`` varies inside ``shard_map`` (empty outside it).

    The attribute moved between jax versions (``aval.mat.varying`` in 0.10, ``aval.vma`` before): read
    whichever exists.
    """
    aval = jax.typeof(a)
    mat = getattr(aval, "mat", None)
    return frozenset(mat.varying) if mat is not None else frozenset(getattr(aval, "vma", ()))


def _like_primal(ct: jax.Array, primal: jax.Array, reduce: Callable) -> jax.Array:
    """Give a cotangent the primal's shard_map variance, as JAX's own transpose rules do.

    A cotangent that varies over axes its primal does not (dx of a column-parallel layer varies over the
    tensor-parallel axis, dW over the data axis) is reduced over them (``psum`` for gradients, ``pmax``
    for amax observations); one that is invariant where the primal varies is cast to varying.
    """
    extra = tuple(sorted(_varying_axes(ct) - _varying_axes(primal)))
    if extra:
        ct = reduce(ct, extra)
    missing = tuple(sorted(_varying_axes(primal) - _varying_axes(ct)))
    if missing:
        ct = jax.lax.pcast(ct, missing, to="varying")
    return ct


def _pad_last(a: jax.Array, multiple: int) -> jax.Array:
    pad = -a.shape[-1] % multiple
    return jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)]) if pad else a


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _linear(static: _Static, x, w, state, key):
    return _forward(static, x, w, state, key)[0]


def _forward(static, x, w, state, key):
    plan = static.recipe.plan()
    xq = _quantize(static, plan, "fprop_x", x, state, key)
    wq = _quantize(static, plan, "fprop_w", w, state, key)
    y = static.gemm(xq, wq, which="fprop").astype(static.out_dtype)
    amaxes = None
    if state is not None:  # observations for delayed scaling: amax of the high-precision tensors
        amaxes = (tensor_amax(x, static.axis_names), tensor_amax(w, static.axis_names))
    return y, (x, w, state, key, amaxes)


def _backward(static, residuals, dy):
    x, w, state, key, amaxes = residuals
    plan = static.recipe.plan()
    dyq = _quantize(static, plan, "dgrad_dy", dy, state, key)
    wtq = _quantize(static, plan, "dgrad_w", w.T, state, key)
    dx = static.gemm(dyq, wtq, which="dgrad")

    multiple = max(plan.wgrad_dy.contraction_multiple, plan.wgrad_x.contraction_multiple)
    dytq = _quantize(static, plan, "wgrad_dy", _pad_last(dy.T, multiple), state, key)
    xtq = _quantize(static, plan, "wgrad_x", _pad_last(x.T, multiple), state, key)
    dw = static.gemm(dytq, xtq, which="wgrad")

    state_cot = None
    if state is not None:
        state_cot = observation(state, *amaxes, tensor_amax(dy, static.axis_names))
        state_cot = jax.tree.map(lambda c, p: _like_primal(c, p, jax.lax.pmax), state_cot, state)
    dx = _like_primal(dx.astype(x.dtype), x, jax.lax.psum)
    dw = _like_primal(dw.astype(w.dtype), w, jax.lax.psum)
    return dx, dw, state_cot, None


_linear.defvjp(_forward, _backward)
