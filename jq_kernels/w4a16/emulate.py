"""Bit-exact numpy emulation of the decode GEMM's in-register weight decode (the CPU proof of the layout and of
the PTX of :mod:`jq_kernels.w4a16.ptx`).

``emulate_decode(pack_w4(...)) * factor`` is the weight the kernel multiplies; the tests compare it with the
dequantized weight.
"""

from __future__ import annotations

import numpy as np

from jq_kernels.w4a16.layout import NVFP4_BF16_SHIFTS, THREAD_COLS, THREAD_ROWS, PackedW4
from jq_kernels.w4a16.ptx import BF16_SCALE_PAIR_BIAS

__all__ = ["emulate_decode", "bf16_bits_to_f32", "round_to_bf16", "e4m3_bits_to_f64"]


def _f16_from_bits(b):
    return np.asarray(b, np.uint16).view(np.float16)


def bf16_bits_to_f32(b):
    """uint16 bf16 bit patterns -> float32 (exact)."""
    return (np.asarray(b, np.uint32) << 16).astype(np.uint32).view(np.float32)


def round_to_bf16(x):
    """float32 -> nearest bf16 (ties to even), as float32 (the rounding of ``mul.rn.bf16x2``)."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    out = r.astype(np.uint32).view(np.float32)
    return np.where(np.isnan(x), np.float32(np.nan), out)


def e4m3_bits_to_f64(b):
    """E4M3FN bit patterns -> float64 values (finite codes; the sign bit negates)."""
    b = np.asarray(b, np.int64)
    e, m = (b >> 3) & 0xF, b & 7
    v = np.where(e > 0, (1 + m / 8.0) * 2.0 ** (e - 7), m * 2.0**-9)
    return np.where(b & 0x80, -v, v)


def _scatter(out, k, e, v):
    """Put register k's element e of every thread (``v [tiles, chunks, 128]``) at its (row, col) of the chunk."""
    nibpos = k + 4 * e
    out[:, :, THREAD_ROWS[:, nibpos], THREAD_COLS[:, nibpos]] = v


def _emulate_f16(pw: PackedW4) -> np.ndarray:
    """:func:`~jq_kernels.w4a16.ptx.nvfp4_f16_decode_ptx` / :func:`~jq_kernels.w4a16.ptx.int4_decode_ptx` (f16)."""
    words = np.asarray(pw.codes, np.uint32)
    tiles, chunks = words.shape[:2]
    out = np.zeros((tiles, chunks, 64, 16), np.float32)
    for k in range(4):
        if pw.fmt == "nvfp4":
            sh_t, sh_u = 9 - 4 * k, 12 - 4 * k
            t = (words << sh_t) if sh_t >= 0 else (words >> -sh_t)
            u = words << sh_u
            bits = ((t & 0x0E000E00) | (u & 0x80008000)).astype(np.uint32)
            sc = np.repeat(np.asarray(pw.scales, np.uint16), 4, axis=-1)  # thread t reads entry t // 4
            s_bytes = (sc & 0xFF) if k in (0, 2) else (sc >> 8)
            s = e4m3_bits_to_f64(s_bytes).astype(np.float16)
        else:
            t = words >> (4 * k)
            bits = ((t & 0x000F000F) ^ 0x64086408).astype(np.uint32)
            group = np.repeat(np.repeat(np.asarray(pw.scales, np.uint32), 4, axis=-1), 8, axis=1)  # chunk -> group
            s = _f16_from_bits((group & 0xFFFF) if k in (0, 2) else (group >> 16))
        for e in range(2):
            h = _f16_from_bits((bits >> (16 * e)) & 0xFFFF)
            if pw.fmt == "int4":
                h = (h - np.float16(1032)).astype(np.float16)
            _scatter(out, k, e, (h * s).astype(np.float16).astype(np.float32))
    return out.transpose(0, 2, 1, 3).reshape(tiles * 64, chunks * 16)


def _emulate_bf16(pw: PackedW4) -> np.ndarray:
    """:func:`~jq_kernels.w4a16.ptx.nvfp4_bf16_decode_ptx` / :func:`~jq_kernels.w4a16.ptx.bf16_scale_pair_ptx` /
    :func:`~jq_kernels.w4a16.ptx.int4_decode_ptx` (bf16)."""
    words = np.asarray(pw.codes, np.uint32)
    tiles, chunks = words.shape[:2]
    out = np.zeros((tiles, chunks, 64, 16), np.float32)

    def shift(v, n):
        return (v << n) if n >= 0 else (v >> -n)

    for k in range(4):
        if pw.fmt == "nvfp4":
            a, b = NVFP4_BF16_SHIFTS[k]
            bits = ((shift(words, a) & 0x01C001C0) | (shift(words, b) & 0x80008000)).astype(np.uint32)
            sc = np.repeat(np.asarray(pw.scales, np.uint32), 4, axis=-1)  # thread t reads entry t // 4
            pair = (((sc & 0xFF) | ((sc >> 8) << 16)) * 16 + BF16_SCALE_PAIR_BIAS) & 0xFFFFFFFF
            s = bf16_bits_to_f32((pair & 0xFFFF) if k in (0, 2) else (pair >> 16))
        else:
            t = words >> (4 * k)
            bits = ((t & 0x000F000F) ^ 0x43084308).astype(np.uint32)
            group = np.repeat(np.repeat(np.asarray(pw.scales, np.uint32), 4, axis=-1), 8, axis=1)
            s = bf16_bits_to_f32((group & 0xFFFF) if k in (0, 2) else (group >> 16))
        for e in range(2):
            h = bf16_bits_to_f32((bits >> (16 * e)) & 0xFFFF)
            if pw.fmt == "int4":
                h = round_to_bf16(h - np.float32(136))
            _scatter(out, k, e, round_to_bf16(h * s))
    return out.transpose(0, 2, 1, 3).reshape(tiles * 64, chunks * 16)


def emulate_decode(pw: PackedW4) -> np.ndarray:
    """The weight matrix ``[Np, Kp]`` (float32) the kernel's A fragments hold, before the accumulator factor.

    ``emulate_decode(pw) * pw.factor`` equals the dequantized weight: exactly for NVFP4, to the f16/bf16 rounding
    of the group-scale product for INT4.

    Example:
      >>> import jax.numpy as jnp
      >>> from jq_kernels.w4a16.layout import pack_w4
      >>> codes = jnp.full((64, 64), 0x22, jnp.uint8)  # E2M1 code 2 = 1.0 everywhere
      >>> pw = pack_w4(codes, jnp.ones((64, 8), jnp.float8_e4m3fn), 1.0, fmt="nvfp4", shape=(64, 128))
      >>> float(emulate_decode(pw)[0, 0] * pw.factor)
      1.0
    """
    return _emulate_bf16(pw) if pw.dtype == "bf16" else _emulate_f16(pw)
