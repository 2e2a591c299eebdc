"""Shared pieces of jq's Pallas kernels: version shims, float-bit arithmetic and exact division.

Everything here is plain ``jnp``/``lax`` on arrays, so the same code runs inside a Pallas-Triton kernel on a
GPU and in interpret mode on a CPU. The rounding helpers reproduce :mod:`jq.numerics.rounding` exactly
(the tests prove it on every representable input class); they use integer exponent arithmetic on the float
bits and the "add a power of two, subtract it again" rounding trick, which costs a few ALU operations and
is exact in IEEE float32 with round-to-nearest-even.

Version notes (jax 0.10.2 on CPU here, 0.11.2 on the GPU machines): the Triton compiler params class is
``pltr.CompilerParams`` (``TritonCompilerParams`` before 0.5); passing it explicitly selects the Triton
backend on every version (0.9.0-0.11.1 default to Mosaic GPU for ``pl.pallas_call``).
"""

from __future__ import annotations

import functools
import os
import warnings

import jax
import jax.numpy as jnp
from jax import lax

from jq.numerics.rounding import exact_divide

__all__ = [
    "num_sms", "pick_block", "pad_rows", "triton_params", "on_gpu", "resolve_interpret", "f32_bits", "bits_f32", "magic_round", "e4m3_round",
    "e2m1_round", "e2m1_index", "e2m1_value", "e4m3_bits_from_value", "e4m3_value_from_bits", "bf16_round_bits",
    "unpack_bf16_words", "div_rn", "recip_rn",
    "markstein_div", "DIV_MODES", "default_div_mode", "hash_u32",
]

# jax >= 0.11 warns that the Pallas Triton backend is deprecated; jq pins the backend on purpose.
warnings.filterwarnings("ignore", message=".*Pallas Triton backend is deprecated.*")


def _triton_params_cls():
    from jax.experimental.pallas import triton as pltr

    cls = getattr(pltr, "CompilerParams", None) or getattr(pltr, "TritonCompilerParams", None)
    if cls is None:  # very old jax
        from jax.experimental import pallas as pl

        cls = pl.TritonCompilerParams
    return cls


def triton_params(num_warps: int = 4, num_stages: int = 2):
    """Explicit Triton compiler params (always pass them: the default GPU backend changed across versions)."""
    return _triton_params_cls()(num_warps=num_warps, num_stages=num_stages)


def num_sms() -> int:
    """Streaming multiprocessors of the default device (132, an H100's, when it does not say)."""
    try:
        return int(getattr(jax.devices()[0], "core_count", 132) or 132)
    except Exception:  # pragma: no cover
        return 132


def pick_block(n: int, want: int, min_block: int = 32) -> tuple[int, int]:
    """``(block, padded n)``: a power-of-two block <= ``want`` that divides ``n`` when one >= ``min_block`` exists,
    else ``want`` (or the next power of two >= n when n is small) and ``n`` padded up to a multiple of it.

    jq's kernels never launch partial blocks: on the GPU (jax 0.11.2, H100) Pallas-Triton blocks that overhang
    the array end gave wrong results for some shapes (1D uint8 blocks, 4D blocks partial in an inner dim), which
    interpret mode did not show. Power-of-two shapes need no padding; ragged ones pay one padding copy.
    """
    b = 1
    while b * 2 <= want and n % (b * 2) == 0:
        b *= 2
    if b >= min(min_block, want) or b >= n:
        return b, n
    blk = min(want, 1 << max(0, (n - 1).bit_length()))
    return blk, -(-n // blk) * blk


def pad_rows(a, n_pad: int, axis: int = 0):
    """Zero-pad ``a`` along ``axis`` to ``n_pad``."""
    n = a.shape[axis]
    if n == n_pad:
        return a
    pads = [(0, 0)] * a.ndim
    pads[axis] = (0, n_pad - n)
    return jnp.pad(a, pads)


@functools.cache
def on_gpu() -> bool:
    """True when jax's default backend is a GPU."""
    try:
        return jax.default_backend() in ("gpu", "cuda", "rocm")
    except Exception:  # pragma: no cover
        return False


def resolve_interpret(interpret: bool | None) -> bool:
    """``None`` means: compile for the GPU when there is one, else interpret (CPU tests)."""
    if interpret is None:
        return not on_gpu()
    return bool(interpret)


# ---------------------------------------------------------------------------------------------------
# float bits


def f32_bits(x):
    """float32 -> int32 bit pattern."""
    return lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)


def bits_f32(b):
    """int32/uint32 bit pattern -> float32."""
    return lax.bitcast_convert_type(b, jnp.float32)


def magic_round(a, min_biased_exponent: int, mantissa_bits: int):
    """Round non-negative float32 ``a`` to the grid of a minifloat, ties to even (no saturation).

    The grid spacing at ``a`` is ``2^(max(E, Emin) - 127 - m)`` (``E`` the biased float32 exponent of ``a``,
    ``Emin`` the biased exponent of the format's smallest normal, ``m`` its mantissa bits). Adding
    ``C = 2^(k + 23)`` moves ``a`` into a binade whose float32 ulp is exactly that spacing, so the hardware
    addition rounds half to even onto the grid; subtracting ``C`` is exact. Valid while ``a < C``, which
    holds for every value up to the format's maximum.
    """
    e = f32_bits(a) & 0x7F800000
    c = bits_f32(jnp.maximum(e, min_biased_exponent << 23) + ((23 - mantissa_bits) << 23))
    return (a + c) - c


def e4m3_round(a):
    """Non-negative ``a`` (already clamped to <= 448) rounded to E4M3FN, ties to even."""
    return magic_round(a, 127 - 6, 3)


def e2m1_round(a):
    """Non-negative ``a`` rounded to E2M1 {0, .5, 1, 1.5, 2, 3, 4, 6}, ties to even, saturating at 6."""
    return magic_round(jnp.minimum(a, 6.0), 127, 1)


def e2m1_index(q):
    """Grid index 0..7 (int32) of a non-negative value ``q`` on the E2M1 grid, from its bits.

    ``bits >> 22`` is ``(E << 1) | top mantissa bit``: 252 for 0.5, 254 for 1, ... 259 for 6; values below 1
    get one added back (0.5 -> 1) and zero clamps to 0. NaN maps to 7, as :func:`jq.numerics.e2m1_encode`.
    """
    b = f32_bits(q)
    idx = (b >> 22) - 252 + (b < 0x3F800000).astype(jnp.int32)
    return jnp.clip(idx, 0, 7)


def e4m3_bits_from_value(v):
    """Unsigned E4M3FN bit pattern (int32 0..126) of a non-negative value already on the E4M3 grid."""
    b = f32_bits(v)
    normal = (b >> 20) - ((127 - 7) << 3)
    sub = (v * 512.0).astype(jnp.int32)  # m * 2^-9 for the subnormals m = 0..7
    return jnp.where(v >= 2.0**-6, normal, sub)


def e4m3_value_from_bits(code):
    """float32 value of E4M3FN bit patterns (int32 0..255; NaN codes are not produced by jq)."""
    code = code.astype(jnp.int32)
    e = (code >> 3) & 0xF
    m = code & 7
    normal = bits_f32(((e + 120) << 23) | (m << 20))
    sub = m.astype(jnp.float32) * (2.0**-9)
    mag = jnp.where(e > 0, normal, sub)
    return jnp.where((code & 0x80) != 0, -mag, mag)


def e2m1_value(code):
    """float32 value of E2M1 codes (int32 0..15); code 8 is +0 as in :func:`jq.numerics.e2m1_decode`."""
    idx = code & 7
    big = bits_f32((((idx >> 1) + 126) << 23) | ((idx & 1) << 22))
    mag = jnp.where(idx >= 2, big, idx.astype(jnp.float32) * 0.5)
    return jnp.where(((code & 8) != 0) & (idx > 0), -mag, mag)


def bf16_round_bits(y):
    """Round float32 ``y`` to bfloat16 (nearest even, as ``astype``), returned as uint32 in the low 16 bits."""
    b = lax.bitcast_convert_type(y, jnp.uint32)
    return (b + jnp.uint32(0x7FFF) + ((b >> 16) & jnp.uint32(1))) >> 16


def unpack_bf16_words(words):
    """uint32 words (two bf16, even element in the low half) -> bf16 ``[..., 2 * n]`` (outside kernels)."""
    halves = lax.bitcast_convert_type(words, jnp.uint16)  # [..., n, 2], little-endian: low half first
    return lax.bitcast_convert_type(halves, jnp.bfloat16).reshape(words.shape[:-1] + (2 * words.shape[-1],))


# ---------------------------------------------------------------------------------------------------
# exact division

DIV_MODES = ("ieee", "asm", "markstein")


def default_div_mode(interpret: bool) -> str:
    """``ieee`` (jnp division) in interpret mode; on the GPU the Markstein sequence (see :func:`markstein_div`).

    ``JQ_KERNEL_DIV`` overrides it (``asm``: one ``div.rn.f32`` per element).
    """
    if interpret:
        return "ieee"
    return os.environ.get("JQ_KERNEL_DIV", "markstein")


def _asm(asm: str, args, dtype=jnp.int32):
    from jax.experimental.pallas import triton as pltr

    cons = "=r," + ",".join("r" for _ in args)
    (out,) = pltr.elementwise_inline_asm(
        asm, args=[a.astype(jnp.int32) if a.dtype != jnp.int32 else a for a in args], constraints=cons, pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(args[0].shape, dtype)])
    return out


def div_rn(a, b, mode: str):
    """Correctly rounded ``a / b`` in float32 (``a``, ``b`` same shape).

    Triton lowers ``/`` to the approximate ``div.full.f32``; ``asm`` emits IEEE ``div.rn.f32``. ``ieee`` is
    jnp division guarded against XLA's reciprocal rewrite (interpret mode on CPU).
    """
    if mode == "ieee" or mode == "markstein":
        if mode == "markstein":
            raise ValueError("div_rn: use markstein_div for the Markstein sequence")
        return exact_divide(a, b)
    if mode == "asm":
        out = _asm("div.rn.f32 $0, $1, $2;", [f32_bits(a), f32_bits(b)])
        return bits_f32(out)
    raise ValueError(f"unknown division mode {mode!r}")


def recip_rn(b, mode: str):
    """Correctly rounded ``1 / b`` (per block: cheap)."""
    if mode in ("ieee",):
        return exact_divide(jnp.ones_like(b), b)
    out = _asm("div.rn.f32 $0, $1, $2;", [f32_bits(jnp.ones_like(b)), f32_bits(b)])
    return bits_f32(out)


def markstein_div(a, y, b):
    """``a / b`` correctly rounded from ``y = RN(1/b)``: ``q = a*y; r = fma(-q, b, a); q + r*y`` (two FMAs).

    With ``y`` the correctly rounded reciprocal and ``q = RN(a y)``, the remainder is exact and the corrected
    quotient is the correctly rounded one (Markstein); ``tests/kernels/test_division.py`` checks it with
    exact rational arithmetic on quotients next to every E2M1 decision threshold. GPU only (PTX FMAs: the
    compiler must not be free to split or contract them).
    """
    asm = ("{ .reg .f32 q, r, nb; mul.rn.f32 q, $1, $2; neg.f32 nb, $3; fma.rn.f32 r, q, nb, $1; "
           "fma.rn.f32 $0, r, $2, q; }")
    return bits_f32(_asm(asm, [f32_bits(a), f32_bits(y), f32_bits(b)]))


def divide(a, b, mode: str, y=None):
    """Elementwise correctly rounded ``a / b`` by ``mode``; ``y`` = RN(1/b) for ``markstein``."""
    if mode == "markstein":
        return markstein_div(a, y, b)
    return div_rn(a, b, mode)


# ---------------------------------------------------------------------------------------------------
# hashing for in-kernel stochastic rounding


def hash_u32(x):
    """A 32-bit integer mixer (the murmur3 finalizer) on uint32 arrays; identical in jnp and in kernels."""
    x = x.astype(jnp.uint32)
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    x = x ^ (x >> 16)
    return x
