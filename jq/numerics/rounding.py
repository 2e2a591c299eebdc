"""Rounding rules shared by every format: round-half-to-even onto minifloat grids, stochastic rounding.

All functions compute in float32 and never rely on a narrow cast (``astype(float8_*)``): XLA deletes
``f32 -> f8 -> f32`` round trips on GPU unless ``--xla_allow_excess_precision=false``, and turns overflow
into NaN on CPU but saturates on GPU. Rounding with ``frexp``/``ldexp`` and ``round`` is exact in float32
and gives the same bits on every backend.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = [
    "MinifloatFormat",
    "E4M3",
    "E5M2",
    "E2M1",
    "round_half_even",
    "round_to_minifloat",
    "stochastic_round_to_minifloat",
    "minifloat_floor_ceil",
    "exact_divide",
    "ldexp",
    "pow2",
]


@dataclasses.dataclass(frozen=True)
class MinifloatFormat:
    """A small float format without infinities, as used for quantized values.

    Attributes:
      name: e.g. ``"e4m3"``.
      exponent_bits, mantissa_bits: field widths.
      min_exponent: exponent of the smallest normal number (``1 - bias``); subnormals share it.
      max_value: the largest finite magnitude (448 for E4M3FN, 57344 for E5M2, 6 for E2M1).
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    min_exponent: int
    max_value: float

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value: ``2^(min_exponent - mantissa_bits)``."""
        return 2.0 ** (self.min_exponent - self.mantissa_bits)


E4M3 = MinifloatFormat("e4m3", 4, 3, -6, 448.0)  # OCP E4M3FN: no inf, max 448
E5M2 = MinifloatFormat("e5m2", 5, 2, -14, 57344.0)  # IEEE-like E5M2, max finite 57344
E2M1 = MinifloatFormat("e2m1", 2, 1, 0, 6.0)  # grid {0, .5, 1, 1.5, 2, 3, 4, 6}


def exact_divide(a: jax.Array, b: jax.Array) -> jax.Array:
    """IEEE ``a / b`` (correctly rounded) under ``jit`` too, elementwise with broadcasting.

    XLA's algebraic simplifier rewrites divisions it can see into, into other roundings: ``A / C`` for a
    compile-time constant ``C`` (e.g. a calibrated amax closed over by ``jax.jit(qm.apply)``) becomes
    ``A * (1 / C)``, ``(A / B) / C`` becomes ``A / (B * C)``, ``A / (B / C)`` becomes ``(A * C) / B``,
    and a division by a broadcast may become a multiplication by a broadcast reciprocal. Each is one ulp
    off in a tenth to a quarter of the elements, which breaks bit-exactness with ModelOpt (PyTorch
    divides). So both operands pass through one optimization barrier: the simplifier sees neither a
    constant nor a division on either side. The barrier lives until after CPU simplification (XLA CPU
    expands it after CSE, and runs no simplifier before fusion; XLA GPU expands it after scheduling).
    The divisor is also made a full-size array that depends on ``a`` (``where(a == a, b, a)``: ``b``
    except where ``a`` is NaN, where the quotient is NaN either way), so it is never a broadcast, under
    ``vmap`` too.

    Example:
      >>> amax = jnp.array([3.0, 7.0])  # closed over below: a constant to XLA
      >>> jax.jit(lambda: 127.0 / jnp.where(amax > 0, amax, 1.0))()  # rewritten to 127 * (1 / amax)
      Array([42.333336, 18.142859], dtype=float32)
      >>> jax.jit(lambda: exact_divide(127.0, jnp.where(amax > 0, amax, 1.0)))()
      Array([42.333332, 18.142857], dtype=float32)
    """
    a = jnp.asarray(a)
    shape = jnp.broadcast_shapes(a.shape, jnp.shape(b))
    a = jnp.broadcast_to(a, shape)
    b = jnp.broadcast_to(jnp.asarray(b, a.dtype), shape)
    a, divisor = jax.lax.optimization_barrier((a, jnp.where(a == a, b, a)))
    return a / divisor


def pow2(k: jax.Array) -> jax.Array:
    """Exactly ``2.0 ** k`` (float32) for integer ``k`` in ``[-126, 127]``, built from the exponent bits."""
    k = jnp.asarray(k, jnp.int32)
    return jax.lax.bitcast_convert_type((k + 127) << 23, jnp.float32)


def ldexp(x: jax.Array, k: jax.Array) -> jax.Array:
    """``x * 2^k`` exactly for ``k`` in ``[-252, 254]`` (two multiplications by normal powers of two).

    ``jnp.ldexp`` goes through ``pow``, whose accuracy is backend-dependent; this does not.
    """
    k = jnp.asarray(k, jnp.int32)
    k1 = k // 2
    return (jnp.asarray(x, jnp.float32) * pow2(k1)) * pow2(k - k1)


def round_half_even(x: jax.Array) -> jax.Array:
    """Round to the nearest integer, ties to even (``jnp.round`` semantics, spelled out)."""
    return jnp.round(x)


def _ulp_exponent(a: jax.Array, fmt: MinifloatFormat) -> jax.Array:
    """Exponent of one unit in the last place of ``fmt`` at magnitude ``a`` (subnormals included)."""
    _, e = jnp.frexp(a)  # a = m * 2^e with m in [0.5, 1): floor(log2 a) = e - 1
    return jnp.maximum(e - 1, fmt.min_exponent) - fmt.mantissa_bits


def round_to_minifloat(x: jax.Array, fmt: MinifloatFormat) -> jax.Array:
    """Round float32 ``x`` to the nearest value of ``fmt``, ties to even, saturating at ``fmt.max_value``.

    ``q = sign(x) * min(round_half_even(|x| / ulp) * ulp, max)`` with ``ulp = 2^(max(floor(log2|x|), emin) - m)``.
    The division by a power of two and the multiplication back are exact, so this is the IEEE
    round-to-nearest-even conversion to ``fmt`` followed by saturation. NaN stays NaN.

    Example:
      >>> round_to_minifloat(jnp.array([2.5, 5.0, 7.0]), E2M1)   # ties to even, saturate at 6
      Array([2., 4., 6.], dtype=float32)
    """
    x = jnp.asarray(x, jnp.float32)
    a = jnp.minimum(jnp.abs(x), fmt.max_value)  # clamp first: never rely on overflow behaviour
    k = _ulp_exponent(a, fmt)
    q = ldexp(round_half_even(ldexp(a, -k)), k)
    q = jnp.minimum(q, fmt.max_value)
    return jnp.where(jnp.isnan(x), x, jnp.copysign(q, x))


def minifloat_floor_ceil(a: jax.Array, fmt: MinifloatFormat) -> tuple[jax.Array, jax.Array]:
    """The two grid points of ``fmt`` around non-negative ``a`` (equal when ``a`` is on the grid)."""
    a = jnp.minimum(jnp.asarray(a, jnp.float32), fmt.max_value)
    k = _ulp_exponent(a, fmt)
    scaled = ldexp(a, -k)
    lo = ldexp(jnp.floor(scaled), k)
    hi = jnp.minimum(ldexp(jnp.ceil(scaled), k), fmt.max_value)
    return lo, hi


def stochastic_round_to_minifloat(x: jax.Array, fmt: MinifloatFormat, random_bits: jax.Array) -> jax.Array:
    """Stochastic rounding onto ``fmt``: round up with probability equal to the distance from the lower point.

    ``random_bits`` are unsigned integers of any width (uint8 suffices for E2M1, as TransformerEngine uses);
    they are turned into a uniform ``u`` in [0, 1) and ``|x|`` rounds up when ``u < (|x| - lo) / (hi - lo)``.
    The expectation of the result equals ``x`` for ``|x| <= max_value``.
    """
    x = jnp.asarray(x, jnp.float32)
    bits = jnp.iinfo(random_bits.dtype).bits
    u = random_bits.astype(jnp.float32) * (2.0**-bits)
    a = jnp.abs(x)
    lo, hi = minifloat_floor_ceil(a, fmt)
    gap = hi - lo
    frac = jnp.where(gap > 0, (jnp.minimum(a, fmt.max_value) - lo) / jnp.where(gap > 0, gap, 1.0), 0.0)
    q = jnp.where(u < frac, hi, lo)
    return jnp.where(jnp.isnan(x), x, jnp.copysign(q, x))
