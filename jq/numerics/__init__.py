"""Reference quantizers in pure jnp: the single source of numeric truth for jq.

Every kernel in ``jq_kernels/`` and every exporter must reproduce these functions. They compute in float32,
round half to even, clamp before every narrow conversion and never depend on a narrow ``astype``.
"""

from jq.numerics.blocks import BlockLayout, normalize_axes, reduce_amax
from jq.numerics.e2m1 import E2M1_GRID, E2M1_VALUES, e2m1_decode, e2m1_encode, pack_nibbles, unpack_nibbles
from jq.numerics.four_over_six import FOUR_OVER_SIX_AMAX_DIVISOR, four_over_six_fake_quant
from jq.numerics.fp8 import FP8_FORMATS, fp8_dequant_scale, fp8_dequantize, fp8_fake_quant, fp8_format, fp8_quant_scale, fp8_quantize
from jq.numerics.hadamard import RHT_SIGNS, random_hadamard_transform, rht_matrix, sylvester_hadamard
from jq.numerics.int import TINY_AMAX, int_bounds, int_dequantize, int_fake_quant, int_quant_scale, int_quantize
from jq.numerics.mx import (
    MX_BLOCK_SIZE,
    MX_FORMATS,
    MXFP4,
    MXFP8,
    MXINT8,
    MXFormat,
    e8m0_exponent,
    mx_dequantize,
    mx_fake_quant,
    mx_quantize,
)
from jq.numerics.nvfp4 import (
    NVFP4_AMAX_DIVISOR,
    NVFP4_BLOCK_SIZE,
    NVFP4_MIN_GLOBAL_SCALE,
    nvfp4_block_scale,
    nvfp4_dequantize,
    nvfp4_fake_quant,
    nvfp4_global_scale,
    nvfp4_layout,
    nvfp4_quantize,
)
from jq.numerics.rounding import (
    E2M1,
    E4M3,
    E5M2,
    MinifloatFormat,
    exact_divide,
    ldexp,
    pow2,
    minifloat_floor_ceil,
    round_half_even,
    round_to_minifloat,
    stochastic_round_to_minifloat,
)
