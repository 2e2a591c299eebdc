"""Integer quantization (INT2..INT8; signed, unsigned, narrow range), as ModelOpt's ``_tensor_quant``.

With ``maxb = 2^(b - 1 + unsigned) - 1`` and ``scale = maxb / amax``::

    q = clamp(round_half_even(x * scale), lo, maxb),   y = q / scale

``lo`` is ``0`` (unsigned), ``-maxb`` (narrow range) or ``-maxb - 1``. Where ``amax <= 2^-24`` the scale is
taken as 0 for quantizing (so ``q = 0``) and as 1 for dequantizing, so such tensors quantize to exactly 0.
``amax`` broadcasts against ``x``: a scalar (per tensor), keep-dims per-axis amax, or per-block amax on a
:class:`~jq.numerics.blocks.BlockLayout` split tensor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jq.numerics.rounding import exact_divide, round_half_even

__all__ = ["TINY_AMAX", "int_bounds", "int_quant_scale", "int_quantize", "int_dequantize", "int_fake_quant"]

TINY_AMAX = 2.0**-24  # amax at or below this quantizes to zero (smallest fp16 subnormal)


def int_bounds(num_bits: int, unsigned: bool = False, narrow_range: bool = False) -> tuple[float, float]:
    """``(lo, hi)`` integer range: e.g. ``(-128, 127)``, ``(-127, 127)`` narrow, ``(0, 255)`` unsigned."""
    if not 1 <= num_bits <= 16:
        raise ValueError(f"num_bits must be in 1..16 for integer quantization, got {num_bits}")
    hi = 2.0 ** (num_bits - 1 + int(unsigned)) - 1.0
    lo = 0.0 if unsigned else (-hi if narrow_range else -hi - 1.0)
    return lo, hi


def int_quant_scale(amax: jax.Array, num_bits: int, unsigned: bool = False) -> jax.Array:
    """``maxb / amax`` in float32, with 1 where ``amax <= 2^-24`` (the dequantization convention).

    A true division (:func:`~jq.numerics.rounding.exact_divide`): under ``jit`` with a constant amax XLA
    would otherwise compute ``maxb * (1 / amax)``, one ulp off for about one channel in six.
    """
    amax = jnp.asarray(amax, jnp.float32)
    _, hi = int_bounds(num_bits, unsigned)
    safe = jnp.where(amax <= TINY_AMAX, 1.0, amax)
    return jnp.where(amax <= TINY_AMAX, 1.0, exact_divide(jnp.float32(hi), safe))


def int_quantize(
    x: jax.Array, amax: jax.Array, num_bits: int = 8, unsigned: bool = False, narrow_range: bool = False
) -> tuple[jax.Array, jax.Array]:
    """Integer codes (as float32) and the quantization scale ``maxb / amax``.

    Example:
      >>> q, s = int_quantize(jnp.array([0.5, -1.0, 0.2]), jnp.float32(1.0), num_bits=8)
      >>> q
      Array([  64., -127.,   25.], dtype=float32)
    """
    amax = jnp.asarray(amax, jnp.float32)
    lo, hi = int_bounds(num_bits, unsigned, narrow_range)
    scale = int_quant_scale(amax, num_bits, unsigned)
    q = jnp.clip(round_half_even(x.astype(jnp.float32) * scale), lo, hi)
    return jnp.where(amax <= TINY_AMAX, 0.0, q), scale  # zeros even for inf / NaN inputs (not inf * 0)


def int_dequantize(q: jax.Array, scale: jax.Array, dtype=jnp.float32) -> jax.Array:
    """``q / scale`` (a true division, as ModelOpt) cast to ``dtype``."""
    return exact_divide(q.astype(jnp.float32), jnp.asarray(scale, jnp.float32)).astype(dtype)


def int_fake_quant(
    x: jax.Array, amax: jax.Array, num_bits: int = 8, unsigned: bool = False, narrow_range: bool = False
) -> jax.Array:
    """Quantize then dequantize; returns ``x.dtype``. See the module docstring for the rule."""
    q, scale = int_quantize(x, amax, num_bits, unsigned, narrow_range)
    return int_dequantize(q, scale, x.dtype)
