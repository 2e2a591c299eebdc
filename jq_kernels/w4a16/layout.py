"""The decode GEMM's offline weight layout: 4-bit codes re-laid out so that each thread's wgmma A fragment is one
32-bit word, plus the per-row-pair scales the in-register decode reads.

``pack_w4`` runs once per weight (jnp: on any backend, on the GPU for big weights). Layout and bit tricks are
described in ``docs/kernels.md`` (W4A16 decode GEMM).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jq import numerics as nx

__all__ = ["PackedW4", "pack_w4", "bf16_scale_bytes", "thread_coords", "THREAD_ROWS", "THREAD_COLS",
           "NVFP4_BF16_SHIFTS", "BF16_SCALE_BIAS", "FORMATS", "OPERAND_DTYPES"]

FORMATS = ("nvfp4", "int4")
OPERAND_DTYPES = ("f16", "bf16")
_BLOCK = {"nvfp4": 16, "int4": 128}  # elements per scale along K


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass
class PackedW4:
    """Weights in the decode-GEMM layout (made once by :func:`pack_w4`; a pytree of three arrays).

    codes: uint32 ``[Np/64, Kp/16, 128]``: for each 64-row tile, 16-column chunk and thread of the warpgroup,
      the 8 codes that thread's wgmma A fragment holds (nibble ``k`` / ``k+4`` = low/high element of register k;
      NVFP4 with ``dtype="bf16"``: at the bits of :data:`NVFP4_BF16_SHIFTS` instead).
    scales: NVFP4: uint16 ``[Np/64, Kp/16, 32]`` (the scale bytes of rows g and g+8, one entry per 4 threads:
      E4M3 for ``dtype="f16"``, the bf16-ready byte of :func:`bf16_scale_bytes` for ``"bf16"``);
      INT4: uint32 ``[Np/64, Kp/128, 32]`` (f16x2 / bf16x2 ``amax/7`` of the two rows).
    factor: fp32 scalar applied to the accumulator (NVFP4 ``gs * 2^14`` (f16) / ``gs * 2^7`` (bf16); INT4 1).
    fmt: ``"nvfp4"`` or ``"int4"``; n, k: the weight's ``[N, K]``.
    dtype: the wgmma operand type, ``"f16"`` or ``"bf16"``.
    """

    codes: jax.Array
    scales: jax.Array
    factor: jax.Array
    fmt: str
    n: int
    k: int
    dtype: str = "f16"

    def tree_flatten(self):
        return (self.codes, self.scales, self.factor), (self.fmt, self.n, self.k, self.dtype)

    @classmethod
    def tree_unflatten(cls, aux, ch):
        return cls(*ch, *aux)

    @property
    def nbytes(self):
        return int(self.codes.size * 4 + self.scales.size * self.scales.dtype.itemsize + 4)


def thread_coords():
    """For each of the 128 threads: the (row, col) of its 8 elements in a 64x16 chunk, by nibble position.

    wgmma A fragments (Mosaic's WGMMA layout): thread ``t = 32 w + 4 lr + lc`` holds rows ``16 w + lr (+8)`` and
    columns ``2 lc (+1) (+8)``; register ``k = 2 c8 + r8`` holds (row +8*r8, cols 8*c8 + 2 lc + e), e = 0, 1.
    Nibble ``k + 4 e`` of the thread's word is that element.

    Example:
      >>> rows, cols = thread_coords()
      >>> rows[5].tolist(), cols[5].tolist()
      ([1, 9, 1, 9, 1, 9, 1, 9], [2, 2, 10, 10, 3, 3, 11, 11])
    """
    rows = np.zeros((128, 8), np.int64)
    cols = np.zeros((128, 8), np.int64)
    for t in range(128):
        w, lane = divmod(t, 32)
        lr, lc = divmod(lane, 4)
        for c8 in range(2):
            for r8 in range(2):
                for e in range(2):
                    p = 2 * c8 + r8 + 4 * e
                    rows[t, p] = 16 * w + lr + 8 * r8
                    cols[t, p] = 8 * c8 + 2 * lc + e
    return rows, cols


THREAD_ROWS, THREAD_COLS = thread_coords()

# NVFP4 bf16 words: where register k's two codes sit. Register k needs, in each 16-bit half e, the magnitude bits
# (e1 e0 m) at bits 8..6 and the sign at bit 15 (``code * 2^-126`` as a bf16). A code whose magnitude is stored at
# ``6 - a + 16 e`` and sign at ``15 - b + 16 e`` is moved there by a shift of the word by ``a`` (left; right when
# negative) and ``b``: 11 integer ops per word (the least over all (a, b) assignments; docs/kernels.md).
NVFP4_BF16_SHIFTS = ((0, 0), (3, 3), (-3, 1), (6, 2))

BF16_SCALE_BIAS = 237  # bf16 exponent field of the smallest scale byte (E4M3 2^-9 times 2^119)


def _to_words(c, shifts=None):
    """uint32 codes ``[Np, Kp]`` (0..15) -> thread words ``[Np/64, Kp/16, 128]``.

    Thread ``(w, lr, lc)`` gets the 8 codes of its fragment, register k's element e (row +8 r8, column 8 c8 + 2 lc + e,
    k = 2 c8 + r8) at nibble ``4 e + k``; with ``shifts`` (:data:`NVFP4_BF16_SHIFTS`) each code's magnitude and
    sign go to the bits its register's decode shifts into place instead.
    """
    np_, kp = c.shape
    # [tiles, 64, chunks, 16] -> [tiles, chunks, w, r8, lr, c8, lc, e]
    v = c.reshape(np_ // 64, 4, 2, 8, kp // 16, 2, 4, 2).transpose(0, 4, 1, 3, 6, 7, 5, 2)
    v = v.reshape(np_ // 64, kp // 16, 128, 8)  # thread (w, lr, lc); nibble p = 4 e + 2 c8 + r8
    if shifts is None:
        return jnp.sum(v << (jnp.arange(8, dtype=jnp.uint32) * 4), axis=-1, dtype=jnp.uint32)
    word = jnp.zeros(v.shape[:-1], jnp.uint32)
    for k, (a, b) in enumerate(shifts):
        for e in range(2):
            code = v[..., 4 * e + k]
            word = word | ((code & 7) << (6 - a + 16 * e)) | ((code >> 3) << (15 - b + 16 * e))
    return word


def _row_pairs(s):
    """Per-row values ``[Np, G]`` -> per row pair (row g, row g+8) ``[Np/64, G, 32, 2]``.

    Entry ``8 w + lr`` serves the four threads ``32 w + 4 lr + lc`` (they share rows); a thread reads ``tid // 4``.
    """
    np_, g = s.shape
    v = s.reshape(np_ // 64, 4, 2, 8, g).transpose(0, 4, 1, 3, 2)  # [tiles, G, w, lr, r8]
    return v.reshape(np_ // 64, g, 32, 2)


def bf16_scale_bytes(scale):
    """E4M3 block scales -> one byte each whose bf16 ``(byte << 4) + (237 << 7)`` is exactly ``s * 2^119``.

    ``s * 2^119`` (s an E4M3 value, subnormals included) is a normal bf16 with exponent field 237..254 and a 3-bit
    mantissa: the byte is (exponent - 237) << 3 | mantissa. NaN (and a negative scale) maps to a bf16 NaN; a zero
    scale to byte 0 (:func:`pack_w4` zeroes that block's codes, so the product stays 0).

    Example:
      >>> int(bf16_scale_bytes(jnp.float32(1.0)))  # 2^119: exponent field 246 = 237 + 9, mantissa 0
      72
    """
    v = jnp.asarray(scale, jnp.float32)
    bits = lax.bitcast_convert_type((jnp.abs(v) * jnp.float32(2.0**119)).astype(jnp.bfloat16), jnp.uint16)
    byte = (bits.astype(jnp.int32) - (BF16_SCALE_BIAS << 7)) >> 4
    byte = jnp.where(v == 0, 0, byte)
    byte = jnp.where(jnp.isnan(v) | (v < 0), (18 << 3) | 4, byte)
    return byte.astype(jnp.uint16)


def _check(codes, scales, global_scale, fmt, shape, dtype):
    if fmt not in FORMATS:
        raise ValueError(f"pack_w4: fmt must be one of {FORMATS}, got {fmt!r}")
    if dtype not in OPERAND_DTYPES:
        raise ValueError(f"pack_w4: dtype must be 'f16' or 'bf16', got {dtype!r}")
    if len(shape) != 2:
        raise ValueError(f"pack_w4 takes a 2D canonical [N, K] weight, got shape {tuple(shape)}")
    n, k = (int(d) for d in shape)
    blk = _BLOCK[fmt]
    nb = -(-k // blk)
    if tuple(codes.shape) != (n, nb * blk // 2):
        raise ValueError(f"pack_w4: {fmt} codes for [N, K] = {list(shape)} must be packed nibbles [N, ceil(K/{blk}) "
                         f"* {blk // 2}] = {[n, nb * blk // 2]}, got {list(codes.shape)}")
    if tuple(scales.shape) != (n, nb):
        raise ValueError(f"pack_w4: {fmt} scales for [N, K] = {list(shape)} must be one per {blk} elements along K "
                         f"[N, {nb}], got {list(scales.shape)}")
    if fmt == "nvfp4" and global_scale is None:
        raise ValueError("pack_w4: nvfp4 needs the fp32 global scale")
    return n, k


def pack_w4(codes, scales, global_scale=None, *, fmt: str, shape, dtype: str = "bf16") -> PackedW4:
    """Re-lay a canonical ``[N, K]`` 4-bit weight for the decode GEMM.

    Args:
      codes: uint8 packed nibbles, element ``2i`` in the low nibble, K zero-padded to the scale block:
        NVFP4 E2M1 codes ``[N, ceil(K/16) * 8]``; INT4 two's-complement codes ``[N, ceil(K/128) * 64]``.
      scales: NVFP4: E4M3 block scales ``[N, ceil(K/16)]`` (float8_e4m3fn, or their uint8 bits);
        INT4: float32 quantization scales ``s = 7 / amax`` ``[N, ceil(K/128)]`` (weight = code / s).
      global_scale: NVFP4's fp32 second-level scale (weight = code * scale * global_scale); None for INT4.
      fmt: ``"nvfp4"`` or ``"int4"``.
      shape: the weight's ``(N, K)``.
      dtype: the tensor-core operand type, ``"bf16"`` (activations used as they are) or ``"f16"``.

    N is padded to 64 and K to 128 with zero codes. This is the storage of :func:`jq.qtensor.quantize`
    (1D 16-blocks for NVFP4, blocks of 128 along K for INT4).

    Example:
      >>> pw = pack_w4(jnp.zeros((64, 64), jnp.uint8), jnp.ones((64, 8), jnp.float8_e4m3fn), 1.0,
      ...              fmt="nvfp4", shape=(64, 128))
      >>> pw.codes.shape, pw.scales.shape, pw.dtype
      ((1, 8, 128), (1, 8, 32), 'bf16')
    """
    n, k = _check(codes, scales, global_scale, fmt, shape, dtype)
    np_, kp = -(-n // 64) * 64, -(-k // 128) * 128
    codes = nx.unpack_nibbles(codes).astype(jnp.uint32)
    c = jnp.zeros((np_, kp), jnp.uint32).at[:n, : min(codes.shape[1], kp)].set(codes[:, :kp])
    if fmt == "nvfp4" and scales.dtype == jnp.uint8:
        scales = lax.bitcast_convert_type(scales, jnp.float8_e4m3fn)
    if fmt == "nvfp4" and dtype == "bf16":
        sb = bf16_scale_bytes(scales.astype(jnp.float32))[:, : kp // 16]
        keep = jnp.repeat(scales.astype(jnp.float32)[:, : kp // 16] != 0, 16, axis=1)[:, : c.shape[1]]
        c = c.at[:n, : keep.shape[1]].set(jnp.where(keep, c[:n, : keep.shape[1]], 0))  # zero scale: zero codes
        s = jnp.zeros((np_, kp // 16), jnp.uint16).at[:n, : sb.shape[1]].set(sb)
        pr = _row_pairs(s)
        packed_scales = pr[..., 0] | (pr[..., 1] << 8)
        factor = jnp.asarray(global_scale, jnp.float32) * jnp.float32(2.0**7)
    elif fmt == "nvfp4":
        sc = lax.bitcast_convert_type(scales, jnp.uint8).astype(jnp.uint16)
        s = jnp.full((np_, kp // 16), 0x38, jnp.uint16).at[:n, : sc.shape[1]].set(sc[:, : kp // 16])
        pr = _row_pairs(s)
        packed_scales = pr[..., 0] | (pr[..., 1] << 8)
        factor = jnp.asarray(global_scale, jnp.float32) * jnp.float32(2.0**14)
    else:
        inv = 1.0 / jnp.asarray(scales, jnp.float32)  # dequant multiplier amax / 7
        s = jnp.ones((np_, kp // 128), jnp.float32).at[:n, : inv.shape[1]].set(inv[:, : kp // 128])
        half = jnp.bfloat16 if dtype == "bf16" else jnp.float16
        s16 = lax.bitcast_convert_type(s.astype(half), jnp.uint16).astype(jnp.uint32)
        pr = _row_pairs(s16)
        packed_scales = pr[..., 0] | (pr[..., 1] << 16)
        factor = jnp.float32(1.0)
    words = _to_words(c, NVFP4_BF16_SHIFTS if fmt == "nvfp4" and dtype == "bf16" else None)
    return PackedW4(words, packed_scales, jnp.asarray(factor, jnp.float32), fmt, n, k, dtype)
