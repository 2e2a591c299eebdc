"""OCP microscaling formats MXFP8 (E4M3), MXFP4 (E2M1) and MXINT8: 32-element blocks with E8M0 scales.

Per block, with ``dmax`` the element format's largest magnitude (448, 6, 127)::

    k = clamp(ceil(log2(amax_b / dmax)), -127, 127),   s = 2^k     (s = 2^-127 for an all-zero block)
    y = elem(x / s) * s

``elem`` rounds to nearest even on the element grid and saturates (E4M3: clamp then round; E2M1: round
with saturation at 6; INT8: ``clamp(round(x / s), -127, 127)``). The E8M0 code stored is ``k + 127``.
Choosing ``k`` with ``ceil`` keeps every element within range (no clipping of the block maximum).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jq.numerics.blocks import BlockLayout
from jq.numerics.rounding import E2M1, E4M3, MinifloatFormat, exact_divide, ldexp, round_half_even, round_to_minifloat

__all__ = [
    "MX_BLOCK_SIZE",
    "MXFormat",
    "MXFP8",
    "MXFP4",
    "MXINT8",
    "MX_FORMATS",
    "e8m0_exponent",
    "mx_quantize",
    "mx_dequantize",
    "mx_fake_quant",
]

MX_BLOCK_SIZE = 32
E8M0_BIAS = 127


@dataclasses.dataclass(frozen=True)
class MXFormat:
    """An MX element format: its name, largest magnitude and rounding grid (None for integers)."""

    name: str
    dmax: float
    element: MinifloatFormat | None

    def round(self, v: jax.Array) -> jax.Array:
        if self.element is None:
            return jnp.clip(round_half_even(v), -self.dmax, self.dmax)
        return round_to_minifloat(jnp.clip(v, -self.dmax, self.dmax), self.element)


MXFP8 = MXFormat("mxfp8", E4M3.max_value, E4M3)
MXFP4 = MXFormat("mxfp4", E2M1.max_value, E2M1)
MXINT8 = MXFormat("mxint8", 127.0, None)
MX_FORMATS = {f.name: f for f in (MXFP8, MXFP4, MXINT8)}


def e8m0_exponent(block_amax: jax.Array, dmax: float) -> jax.Array:
    """``clamp(ceil(log2(amax / dmax)), -127, 127)`` as int32, exactly (via ``frexp``, no ``log2``).

    ``amax / dmax`` is the correctly rounded quotient (:func:`~jq.numerics.rounding.exact_divide`), as the
    kernels compute it, not XLA's ``amax * (1 / dmax)`` rewrite of a division by a constant. An infinite
    block amax gives 127 (the clamp of ``log2(inf)``), and so does a NaN one, as the kernels' bit-level
    exponent does (exponent field 255): the block's finite elements then round to zero or stay tiny.
    """
    r = exact_divide(block_amax.astype(jnp.float32), jnp.float32(dmax))
    m, e = jnp.frexp(r)  # r = m 2^e, m in [0.5, 1): ceil(log2 r) = e - 1 when m == 0.5 else e
    k = jnp.where(m == 0.5, e - 1, e)
    k = jnp.where(r > 0, k, -E8M0_BIAS)
    k = jnp.where(jnp.isinf(r) | jnp.isnan(r), E8M0_BIAS, k)  # frexp gives exponent 0 for both
    return jnp.clip(k, -E8M0_BIAS, E8M0_BIAS).astype(jnp.int32)


def mx_quantize(
    x: jax.Array, fmt: MXFormat, block_size: int = MX_BLOCK_SIZE
) -> tuple[jax.Array, jax.Array, BlockLayout]:
    """Elements (float32 on the element grid), E8M0 exponents ``k`` (int32) and the block layout.

    Example:
      >>> q, k, layout = mx_quantize(jnp.full((32,), 3.0), MXFP4)
      >>> int(k[0, 0]), float(q[0, 0])
      (0, 3.0)
    """
    layout = BlockLayout.create(x.shape, {-1: block_size})
    k = e8m0_exponent(layout.block_amax(x), fmt.dmax)
    xb = layout.split(x).astype(jnp.float32)
    q = fmt.round(ldexp(xb, -k))
    return q, k, layout


def mx_dequantize(q: jax.Array, k: jax.Array, layout: BlockLayout, dtype=jnp.float32) -> jax.Array:
    """``q * 2^k`` merged back to the original shape."""
    return layout.merge(ldexp(q.astype(jnp.float32), k)).astype(dtype)


def mx_fake_quant(x: jax.Array, fmt: MXFormat, block_size: int = MX_BLOCK_SIZE) -> jax.Array:
    """MX quantize-dequantize; returns ``x.dtype``."""
    q, k, layout = mx_quantize(x, fmt, block_size)
    return mx_dequantize(q, k, layout, x.dtype)
