"""NVFP4: E2M1 values with one E4M3 scale per 16-element block and an FP32 per-tensor scale.

With ``amax`` the per-tensor absolute maximum (calibrated or computed) and ``amax_b`` that of a block::

    gs   = amax / 2688                      (2688 = 6 * 448; gs = 1 when gs < 2^-117, e.g. amax = 0)
    r    = amax_b / (6 * gs);  r = 1 where r == 0
    s_b  = e4m3(clamp(r, 2^-9, 448)) * gs   (the E4M3 block scale times the global scale)
    q    = E2M1(x / s_b)                    (ties to even, saturating at 6)
    y    = q * s_b

Blocks run along the last axis (1D, 16 elements) or over 16x16 tiles of the last two axes (2D, for
weights, as TransformerEngine's recipe). Partial blocks are zero-padded. An all-zero tensor gives zeros.
Export scales: ``weight_scale = e4m3(r)`` per block, ``weight_scale_2 = gs``; activations ``input_scale = gs``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jq.numerics.blocks import BlockLayout
from jq.numerics.rounding import E2M1, E4M3, exact_divide, round_to_minifloat, stochastic_round_to_minifloat

__all__ = [
    "NVFP4_BLOCK_SIZE",
    "NVFP4_AMAX_DIVISOR",
    "NVFP4_MIN_GLOBAL_SCALE",
    "nvfp4_layout",
    "nvfp4_global_scale",
    "nvfp4_block_scale",
    "nvfp4_quantize",
    "nvfp4_dequantize",
    "nvfp4_fake_quant",
]

NVFP4_BLOCK_SIZE = 16
NVFP4_AMAX_DIVISOR = 6.0 * 448.0  # E2M1 max times E4M3 max
MIN_BLOCK_SCALE = 2.0**-9  # smallest positive E4M3 (subnormal)
NVFP4_MIN_GLOBAL_SCALE = 2.0**-117  # MIN_BLOCK_SCALE * NVFP4_MIN_GLOBAL_SCALE = 2^-126, the smallest normal float32


def nvfp4_layout(shape, two_d: bool = False, block_size: int = NVFP4_BLOCK_SIZE) -> BlockLayout:
    """1D blocks along the last axis, or ``block_size``-square tiles over the last two axes."""
    sizes = {-1: block_size, -2: block_size} if two_d else {-1: block_size}
    return BlockLayout.create(shape, sizes)


def nvfp4_global_scale(amax: jax.Array, divisor: float = NVFP4_AMAX_DIVISOR) -> jax.Array:
    """``amax / 2688`` in float32; 1 where it is below ``2^-117`` (``amax`` under ~1.6e-32, zero included).

    ``divisor`` replaces 2688 (= 6 * 448) where block amaxes map to another E2M1 value than 6
    (:mod:`jq.numerics.four_over_six`).

    With ``gs >= 2^-117`` every two-level scale ``s_b * gs >= 2^-9 * gs`` is a normal float32; below, XLA
    CPU flushes the subnormal scale to zero and ``x / 0`` gave NaN and infinities. With ``gs = 1`` such a
    tiny tensor quantizes to zeros, like an all-zero tensor, on every backend.
    A NaN amax stays NaN (a broken calibration must not turn into silently finite outputs).
    """
    amax = jnp.asarray(amax, jnp.float32)
    gs = exact_divide(amax, jnp.float32(divisor))
    return jnp.where(gs < NVFP4_MIN_GLOBAL_SCALE, 1.0, gs)


def nvfp4_block_scale(block_amax: jax.Array, global_scale: jax.Array, target: float = 6.0) -> jax.Array:
    """E4M3 block scales (float32 values on the E4M3 grid): ``e4m3(clamp(amax_b / (6 gs), 2^-9, 448))``.

    ``target``: the E2M1 value a block's amax maps to (6; 4 for the other candidate of 4/6).
    """
    r = exact_divide(block_amax.astype(jnp.float32), target * global_scale)
    r = jnp.where(r == 0, 1.0, r)
    return round_to_minifloat(jnp.clip(r, MIN_BLOCK_SCALE, E4M3.max_value), E4M3)


def nvfp4_quantize(
    x: jax.Array,
    amax: jax.Array | None = None,
    *,
    two_d: bool = False,
    block_size: int = NVFP4_BLOCK_SIZE,
    random_bits: jax.Array | None = None,
    block_amax: jax.Array | None = None,
    target: float = 6.0,
    amax_divisor: float = NVFP4_AMAX_DIVISOR,
) -> tuple[jax.Array, jax.Array, jax.Array, BlockLayout]:
    """Quantize to E2M1 values (float32 on the grid), E4M3 block scales and the global scale.

    Args:
      x: input of any float dtype; blocks along the last axis (or last two with ``two_d``).
      amax: per-tensor amax (a scalar, or broadcastable per leading batch); computed from ``x`` when None.
      two_d: 16x16 tiles instead of 1x16 rows.
      random_bits: uint8 (or wider) array of ``x``'s shape for stochastic rounding; round-to-nearest-even if None.
      block_amax: static (calibrated) block amaxes, one per block (``layout.num_blocks_shape``); computed from
        ``x`` when None. Values beyond a block's static amax saturate at ``6 s_b`` (clipping).
      target, amax_divisor: the E2M1 value each block's amax maps to and the global scale's divisor (6 and
        2688; :mod:`jq.numerics.four_over_six` also uses 4 and 1792).

    Returns:
      ``(q_blocked, block_scale, global_scale, layout)`` where ``q_blocked`` has ``layout.blocked_shape`` and
      ``block_scale`` broadcasts against it.
    """
    layout = nvfp4_layout(x.shape, two_d, block_size)
    if amax is None:
        amax = jnp.max(jnp.abs(x.astype(jnp.float32)))
    gs = nvfp4_global_scale(amax, divisor=amax_divisor)
    bmax = layout.block_amax(x) if block_amax is None else layout.expand_stats(block_amax)
    scale_e4m3 = nvfp4_block_scale(bmax, gs, target=target)
    xb = layout.split(x).astype(jnp.float32)
    scaled = exact_divide(xb, scale_e4m3 * gs)  # ModelOpt divides by the two-level scale
    if random_bits is None:
        q = round_to_minifloat(scaled, E2M1)
    else:
        q = stochastic_round_to_minifloat(scaled, E2M1, layout.split(random_bits))
    return q, scale_e4m3, gs, layout


def nvfp4_dequantize(q_blocked, block_scale, global_scale, layout: BlockLayout, dtype=jnp.float32) -> jax.Array:
    """``q * (block_scale * global_scale)`` merged back to the original shape."""
    return layout.merge(q_blocked * (block_scale * global_scale)).astype(dtype)


def nvfp4_fake_quant(
    x: jax.Array,
    amax: jax.Array | None = None,
    *,
    two_d: bool = False,
    block_size: int = NVFP4_BLOCK_SIZE,
    random_bits: jax.Array | None = None,
    block_amax: jax.Array | None = None,
) -> jax.Array:
    """NVFP4 quantize-dequantize in one expression; returns ``x.dtype``.

    Example:
      >>> x = jnp.linspace(-1, 1, 32)
      >>> y = nvfp4_fake_quant(x)
      >>> bool(jnp.all(jnp.abs(y - x) <= 0.25))
      True
    """
    q, s, gs, layout = nvfp4_quantize(x, amax, two_d=two_d, block_size=block_size, random_bits=random_bits,
                                      block_amax=block_amax)
    return nvfp4_dequantize(q, s, gs, layout, x.dtype)
