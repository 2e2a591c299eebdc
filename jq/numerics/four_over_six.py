"""NVFP4 with adaptive block scaling ("Four Over Six", Cook et al., arXiv:2512.02010).

Plain NVFP4 maps every block's amax to E2M1's largest value 6, so values between 2/3 and all of the block amax
meet E2M1's widest step (4 -> 6). 4/6 quantizes each block twice, once with its amax mapped to 6 and once to
4, and keeps the candidate with the smaller squared error. Both candidates are ordinary NVFP4 encodings (E2M1
values, an E4M3 block scale, one FP32 global scale), so a GEMM that reads NVFP4 reads them unchanged; only
the global scale differs, so that the to-4 candidate's block scale still fits E4M3::

    gs      = amax / (4 * 448)                       (1792; plain NVFP4: 6 * 448)
    s_b(t)  = e4m3(clamp(amax_b / (t * gs), 2^-9, 448)) * gs        t in {6, 4}
    y(t)    = E2M1(x / s_b(t)) * s_b(t)               (ties to even, saturating at 6)
    y       = y(4) where sum_b (y(4) - x)^2 < sum_b (y(6) - x)^2, else y(6)

Measurements (training): ``docs/training_recipes.md``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jq.numerics.nvfp4 import NVFP4_BLOCK_SIZE, nvfp4_quantize
from jq.numerics.rounding import E4M3

__all__ = ["FOUR_OVER_SIX_AMAX_DIVISOR", "four_over_six_fake_quant"]

FOUR_OVER_SIX_AMAX_DIVISOR = 4.0 * E4M3.max_value  # the to-4 candidate's largest block scale is exactly 448


def four_over_six_fake_quant(
    x: jax.Array,
    amax: jax.Array | None = None,
    *,
    two_d: bool = False,
    block_size: int = NVFP4_BLOCK_SIZE,
) -> jax.Array:
    """NVFP4 quantize-dequantize with each block's amax mapped to 6 or 4, whichever errs less; ``x.dtype``.

    Args:
      x: input; blocks along the last axis (1x16) or 16x16 tiles of the last two axes (``two_d``).
      amax: per-tensor amax (computed from ``x`` when None).

    Never worse than either candidate alone, block by block (same global scale). Round to nearest only: a
    stochastically rounded operand has no single error to compare.

    Example:
      >>> x = jnp.array([5.0, 1.0] + [0.0] * 14)  # to 4: scale 1.25, 5 -> 5 exactly; to 6: 5 -> 4.82
      >>> float(four_over_six_fake_quant(x)[0])
      5.0
    """
    if amax is None:
        amax = jnp.max(jnp.abs(x.astype(jnp.float32)))

    def candidate(target: float):
        q, s, gs, layout = nvfp4_quantize(x, amax, two_d=two_d, block_size=block_size, target=target,
                                          amax_divisor=FOUR_OVER_SIX_AMAX_DIVISOR)
        y = q * (s * gs)
        return y, jnp.sum(jnp.square(y - layout.split(x).astype(jnp.float32)), axis=layout.in_block_axes,
                          keepdims=True), layout

    y6, e6, layout = candidate(6.0)
    y4, e4, _ = candidate(4.0)
    return layout.merge(jnp.where(e4 < e6, y4, y6)).astype(x.dtype)
