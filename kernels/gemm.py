"""Real-quantized matmuls: the FP8 cuBLASLt path through XLA and the W4A16 decode GEMM (NVFP4 / INT4 weights).

FP8 (``fp8_linear``): activations quantized per tensor to E4M3 with the calibrated amax, weights stored once as
E4M3 ``[N, K]`` (K-major: the layout cuBLASLt's fp8 kernels take without a transpose), and an fp8
``dot_general`` that XLA lowers to ``__cublas$lt$matmul$f8`` with the two per-tensor scales applied to the
f32 result. :func:`fp8_gemm_uses_cublaslt` checks the compiled HLO.

W4A16 (``w4a16_matmul``): ``y = x @ dequant(W).T`` for ``x: [B, K]`` bf16 and ``W: [N, K]`` NVFP4 (16-element
E4M3-scaled blocks along K, fp32 global scale) or INT4 (groups of 128 along K, fp32 scales), as stored by
:func:`jq.qtensor.quantize`. Implementations:

* ``mosaic`` -- a Mosaic GPU kernel for decode batches (B <= 64) built on the blueprint "weights on the wgmma M side
  as the register operand" (swap-AB): 64-row weight tiles stream through a TMA pipeline, are decoded in registers
  into wgmma A fragments (NVFP4: 11 integer ops per 8 weights, from a bit layout chosen for it, plus one HMUL2 per
  two weights, see :func:`_nvfp4_bf16_asm`) and multiplied by the token tile ``x^T`` held in shared memory (N =
  tokens padded to 8). The weights are re-laid out once, offline (:func:`pack_w4`), so every thread's fragment is
  one 32-bit word. Operand type (``pack_w4(..., dtype=)``): ``"bf16"`` (default) decodes the weights to bf16 and
  feeds the bf16 activations to the tensor cores as they are, so a call is the kernel plus one small XLA reduction;
  ``"f16"`` (the first version) decodes to f16 and needs the activations scaled and converted first (two more XLA
  kernels, ~5 µs on the H100). Schedule (:class:`MosaicConfig`): ``"stream_k"`` (default: 3 CTAs per SM, 64-row
  tiles, 4 stages, each CTA an equal run of the (row group, K step) sequence, partial sums of the few row groups
  that two CTAs share added after), ``"grid"`` (one CTA per (row group, K split)), ``"ws"`` (stream-K with a
  warp-specialized pipeline: a TMA producer warpgroup and one consumer warpgroup per tile). Epilogue
  (``MosaicConfig.epilogue``): ``"xla"`` (default: the partial sums leave the kernel in f32 and one XLA fusion adds,
  transposes, scales and casts them) or ``"kernel"`` (stream-K only: the CTA finishing a row group last adds the
  others' partial sums, per thread through a global counter, and writes ``y [B, N]`` itself; a CTA takes the counter
  of a group it finished mid-run only at the end of its run; correct, but its kernel is slower than the default's
  kernel plus the XLA fusion, RESULTS.md §4.0). Measurements: RESULTS.md §4.
* ``xla`` -- dequantize (reference) + XLA bf16 dot: any batch, any backend, and the fallback.
* ``xla_int4`` (INT4 only) -- XLA's native int4 path: ``int4`` weights converted in the GEMM fusion.

Numerics of the decode GEMM, bf16 operands: NVFP4 weights decode exactly (magnitude bits at 8..6 and the sign at 15
read as bf16 is ``code * 2^-126``; times the block scale stored as ``s * 2^119`` it is ``code * s * 2^-7``, exact); the
factor ``gs * 2^7`` is applied to the f32 accumulator; activations enter unchanged. INT4 multiplies the integer
codes by the bf16-rounded group scale ``amax/7`` and rounds the product to bf16 (relative error <= 2^-8 per
weight; the XLA reference rounds its product to bf16 too). f16 operands: NVFP4 ``code * 2^-14`` times the E4M3
scale is exact in f16 (factor ``gs * 2^14``); activations are multiplied by a power of two ``2^e`` chosen from
their amax so that they fit f16 (exact for every value within 2^30 of the amax) and converted to f16; INT4 uses the
f16-rounded group scale (<= 2^-11). Accumulation is f32 on the tensor cores. The result matches
``x @ dequant(W).T`` to f32-accumulation / bf16-output tolerance (tests: relative error < 1e-2, measured ~3e-3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jq import numerics as nx

__all__ = [
    "fp8_linear", "prepare_fp8_weight", "fp8_gemm_uses_cublaslt", "PackedW4", "pack_w4", "w4a16_matmul",
    "w4a16_matmul_xla", "emulate_decode", "MosaicConfig", "w4a16_matmul_mosaic", "int4_xla_weights",
    "w4a16_matmul_xla_int4", "mosaic_config",
]

# ----------------------------------------------------------------------------------------------------
# FP8 through XLA / cuBLASLt


def prepare_fp8_weight(w_canonical, amax):
    """E4M3 weight ``[N, K]`` (K-major) and its dequant multiplier ``1/s_w`` (exactly the reference's)."""
    q, s = nx.fp8_quantize(w_canonical, amax, "e4m3")
    return q.astype(jnp.float8_e4m3fn), nx.fp8_dequant_scale(s)


def fp8_linear(x, w_q, w_inv_scale, x_amax, out_dtype=jnp.bfloat16, quantize_x=None):
    """``y = (q(x) @ w_q.T) * (1/s_x) * (1/s_w)`` with both operands E4M3, accumulated in f32 by cuBLASLt.

    ``q(x)`` is :func:`jq.numerics.fp8_quantize` with the calibrated activation amax (the fused kernel on the
    GPU when ``quantize_x`` is given). ``w_q``: ``[N, K]`` float8_e4m3fn (K-major).
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if quantize_x is not None:
        xq, sx = quantize_x(x2, x_amax)
    else:
        q, sx = nx.fp8_quantize(x2, x_amax, "e4m3")
        xq = q.astype(jnp.float8_e4m3fn)
    acc = lax.dot_general(xq, w_q, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    y = acc * (nx.fp8_dequant_scale(sx) * w_inv_scale)
    return y.astype(out_dtype).reshape(lead + (w_q.shape[0],))


def fp8_gemm_uses_cublaslt(fn, *args) -> bool:
    """True when the compiled HLO of ``fn(*args)`` calls cuBLASLt's fp8 matmul (GPU only)."""
    txt = jax.jit(fn).lower(*args).compile().as_text()
    return "__cublas$lt$matmul$f8" in txt


# ----------------------------------------------------------------------------------------------------
# W4A16: offline layout


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass
class PackedW4:
    """Weights in the decode-GEMM layout (made once by :func:`pack_w4`).

    codes: uint32 ``[Np/64, Kp/16, 128]``: for each 64-row tile, 16-column chunk and thread of the warpgroup,
      the 8 codes that thread's wgmma A fragment holds (nibble ``k`` / ``k+4`` = low/high element of register k).
    scales: NVFP4: uint16 ``[Np/64, Kp/16, 32]`` (the scale bytes of rows g and g+8, one entry per 4 threads:
      E4M3 for ``dtype="f16"``, the bf16-ready byte of :func:`_bf16_scale_bytes` for ``"bf16"``);
      INT4: uint32 ``[Np/64, Kp/128, 32]`` (f16x2 / bf16x2 ``amax/7`` of the two rows).
    factor: fp32 scalar applied to the accumulator (NVFP4 ``gs * 2^14`` (f16) / ``gs * 2^7`` (bf16); INT4 1).
    dtype: the wgmma operand type: ``"f16"`` (weights decoded to f16, activations scaled by a power of two and
      converted to f16 before the kernel) or ``"bf16"`` (weights decoded to bf16, activations used as they are).
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


def _thread_coords():
    """For each of the 128 threads: the (row, col) of its 8 elements in a 64x16 chunk, by nibble position.

    wgmma A fragments (Mosaic's WGMMA layout): thread ``t = 32 w + 4 lr + lc`` holds rows ``16 w + lr (+8)`` and
    columns ``2 lc (+1) (+8)``; register ``k = 2 c8 + r8`` holds (row +8*r8, cols 8*c8 + 2 lc + e), e = 0, 1.
    Nibble ``k + 4 e`` of the thread's word is that element.
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


_ROWS, _COLS = _thread_coords()


def _to_words(c, shifts=None):
    """uint32 codes ``[Np, Kp]`` (0..15) -> thread words ``[Np/64, Kp/16, 128]`` (jnp; runs on any backend).

    Thread ``(w, lr, lc)`` gets the 8 codes of its fragment, register k's element e (row +8 r8, column 8 c8 + 2 lc + e,
    k = 2 c8 + r8) at nibble ``4 e + k``; with ``shifts`` (``_NVFP4_BF16_SHIFTS``) each code's magnitude and sign go
    to the bits its register's decode shifts into place instead.
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


# NVFP4 bf16 words: where register k's two codes sit. Register k needs, in each 16-bit half e, the magnitude bits
# (e1 e0 m) at bits 8..6 and the sign at bit 15 (``code * 2^-126`` as a bf16). A code whose magnitude is stored at
# ``6 - a + 16 e`` and sign at ``15 - b + 16 e`` is moved there by a shift of the word by ``a`` (left; right when
# negative) and ``b``. (a, b) = (0, 0): one AND; (3, 3): shift + AND; (-3, 1) and (6, 2): two shifts, AND, LOP3;
# 11 integer ops per word instead of 15 with plain nibbles. No choice tiles the 32 bits with four registers of one
# shift each (checked exhaustively), and 11 is the least over all (a, b) assignments.
_NVFP4_BF16_SHIFTS = ((0, 0), (3, 3), (-3, 1), (6, 2))


def _row_pairs(s):
    """Per-row values ``[Np, G]`` -> per row pair (row g, row g+8) ``[Np/64, G, 32, 2]``.

    Entry ``8 w + lr`` serves the four threads ``32 w + 4 lr + lc`` (they share rows); a thread reads ``tid // 4``.
    """
    np_, g = s.shape
    v = s.reshape(np_ // 64, 4, 2, 8, g).transpose(0, 4, 1, 3, 2)  # [tiles, G, w, lr, r8]
    return v.reshape(np_ // 64, g, 32, 2)


_BF16_SCALE_BIAS = 237  # bf16 exponent field of the smallest scale byte (E4M3 2^-9 times 2^119)


def _bf16_scale_bytes(scale):
    """E4M3 block scales -> one byte each whose bf16 ``(byte << 4) + (237 << 7)`` is exactly ``s * 2^119``.

    ``s * 2^119`` (s an E4M3 value, subnormals included) is a normal bf16 with exponent field 237..254 and a 3-bit
    mantissa: the byte is (exponent - 237) << 3 | mantissa. NaN maps to a bf16 NaN; a zero scale to byte 0 (the
    caller zeroes that block's codes, so the product stays 0).
    """
    v = jnp.asarray(scale, jnp.float32)
    bits = lax.bitcast_convert_type((jnp.abs(v) * jnp.float32(2.0**119)).astype(jnp.bfloat16), jnp.uint16)
    byte = (bits.astype(jnp.int32) - (_BF16_SCALE_BIAS << 7)) >> 4
    byte = jnp.where(v == 0, 0, byte)
    byte = jnp.where(jnp.isnan(v) | (v < 0), (18 << 3) | 4, byte)
    return byte.astype(jnp.uint16)


def pack_w4(qt, dtype: str = "bf16") -> PackedW4:
    """Re-lay a canonical ``[N, K]`` NVFP4 (1D 16-blocks) or INT4 (blocks of 128 along K) QTensor for the kernel.

    Runs once per weight (jnp: on the GPU for big weights). N is padded to 64 and K to 128 with zero codes.
    ``dtype``: ``"f16"`` or ``"bf16"``, the tensor-core operand type (see :class:`PackedW4`).
    """
    if dtype not in ("f16", "bf16"):
        raise ValueError(f"dtype must be 'f16' or 'bf16', got {dtype!r}")
    if len(qt.shape) != 2:
        raise ValueError(f"pack_w4 takes a 2D canonical [N, K] weight, got shape {qt.shape}")
    n, k = qt.shape
    fmt = "nvfp4" if qt.spec.kind == "nvfp4" else "int4"
    if fmt == "nvfp4":
        if len(qt.spec.block_sizes.sizes) != 1:
            raise ValueError("the decode GEMM takes 1D (16-element) NVFP4 weight blocks")
    else:
        sizes = dict(qt.spec.block_sizes.sizes) if qt.spec.block_sizes is not None else {}
        if qt.spec.kind != "int" or qt.spec.num_bits != 4 or sizes.get(-1) != 128 or len(sizes) != 1:
            raise ValueError("the INT4 decode GEMM takes int4 weights with blocks of 128 along K")
    np_, kp = -(-n // 64) * 64, -(-k // 128) * 128
    codes = nx.unpack_nibbles(qt.data).astype(jnp.uint32)
    c = jnp.zeros((np_, kp), jnp.uint32).at[:n, : min(codes.shape[1], kp)].set(codes[:, :kp])
    if fmt == "nvfp4" and dtype == "bf16":
        sb = _bf16_scale_bytes(qt.scale.astype(jnp.float32))[:, : kp // 16]
        keep = jnp.repeat(qt.scale.astype(jnp.float32)[:, : kp // 16] != 0, 16, axis=1)[:, : c.shape[1]]
        c = c.at[:n, : keep.shape[1]].set(jnp.where(keep, c[:n, : keep.shape[1]], 0))  # zero scale: zero codes
        s = jnp.zeros((np_, kp // 16), jnp.uint16).at[:n, : sb.shape[1]].set(sb)
        pr = _row_pairs(s)
        scales = pr[..., 0] | (pr[..., 1] << 8)
        factor = jnp.asarray(qt.global_scale, jnp.float32) * jnp.float32(2.0**7)
    elif fmt == "nvfp4":
        sc = lax.bitcast_convert_type(qt.scale, jnp.uint8).astype(jnp.uint16)
        s = jnp.full((np_, kp // 16), 0x38, jnp.uint16).at[:n, : sc.shape[1]].set(sc[:, : kp // 16])
        pr = _row_pairs(s)
        scales = pr[..., 0] | (pr[..., 1] << 8)
        factor = jnp.asarray(qt.global_scale, jnp.float32) * jnp.float32(2.0**14)
    else:
        inv = 1.0 / jnp.asarray(qt.scale, jnp.float32)  # dequant multiplier amax / 7
        s = jnp.ones((np_, kp // 128), jnp.float32).at[:n, : inv.shape[1]].set(inv[:, : kp // 128])
        half = jnp.bfloat16 if dtype == "bf16" else jnp.float16
        s16 = lax.bitcast_convert_type(s.astype(half), jnp.uint16).astype(jnp.uint32)
        pr = _row_pairs(s16)
        scales = pr[..., 0] | (pr[..., 1] << 16)
        factor = jnp.float32(1.0)
    words = _to_words(c, _NVFP4_BF16_SHIFTS if fmt == "nvfp4" and dtype == "bf16" else None)
    return PackedW4(words, scales, jnp.asarray(factor, jnp.float32), fmt, n, k, dtype)


# ----------------------------------------------------------------------------------------------------
# the in-register decode, in numpy (the CPU proof of the layout + bit tricks) and in PTX


def _f16_from_bits(b):
    return np.asarray(b, np.uint16).view(np.float16)


def emulate_decode(pw: PackedW4) -> np.ndarray:
    """The f16 weight matrix ``[Np, Kp]`` the kernel's A fragments hold (before the accumulator factor).

    Bit-exact emulation of :func:`_nvfp4_asm` / :func:`_int4_asm` over the packed words: the CPU tests check
    ``emulate_decode(pack_w4(qt)) * factor == dequantize(qt)``.
    """
    if pw.dtype == "bf16":
        return _emulate_decode_bf16(pw)
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
            s = _e4m3_np(s_bytes).astype(np.float16)
        else:
            t = words >> (4 * k)
            bits = ((t & 0x000F000F) ^ 0x64086408).astype(np.uint32)
            group = np.repeat(np.repeat(np.asarray(pw.scales, np.uint32), 4, axis=-1), 8, axis=1)  # chunk -> group
            s = _f16_from_bits((group & 0xFFFF) if k in (0, 2) else (group >> 16))
        for e in range(2):
            h = _f16_from_bits((bits >> (16 * e)) & 0xFFFF)
            if pw.fmt == "int4":
                h = (h - np.float16(1032)).astype(np.float16)
            v = (h * s).astype(np.float16)
            nibpos = k + 4 * e
            r, c = _ROWS[:, nibpos], _COLS[:, nibpos]
            out[:, :, r, c] = v.astype(np.float32)
    return out.transpose(0, 2, 1, 3).reshape(tiles * 64, chunks * 16)


def _bf16_bits_np(b):
    """uint16 bf16 bit patterns -> float32 (exact)."""
    return (np.asarray(b, np.uint32) << 16).astype(np.uint32).view(np.float32)


def _bf16_round_np(x):
    """float32 -> nearest bf16 (ties to even), as float32 (the rounding of ``mul.rn.bf16x2``)."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    out = r.astype(np.uint32).view(np.float32)
    return np.where(np.isnan(x), np.float32(np.nan), out)


def _emulate_decode_bf16(pw: PackedW4) -> np.ndarray:
    """Bit-exact emulation of :func:`_nvfp4_bf16_asm` / :func:`_bf16_scale_pair_asm` / :func:`_int4_asm`."""
    words = np.asarray(pw.codes, np.uint32)
    tiles, chunks = words.shape[:2]
    out = np.zeros((tiles, chunks, 64, 16), np.float32)

    def shift(v, n):
        return (v << n) if n >= 0 else (v >> -n)

    for k in range(4):
        if pw.fmt == "nvfp4":
            a, b = _NVFP4_BF16_SHIFTS[k]
            bits = ((shift(words, a) & 0x01C001C0) | (shift(words, b) & 0x80008000)).astype(np.uint32)
            sc = np.repeat(np.asarray(pw.scales, np.uint32), 4, axis=-1)  # thread t reads entry t // 4
            pair = (((sc & 0xFF) | ((sc >> 8) << 16)) * 16 + _BF16_SCALE_PAIR_BIAS) & 0xFFFFFFFF
            s = _bf16_bits_np((pair & 0xFFFF) if k in (0, 2) else (pair >> 16))
        else:
            t = words >> (4 * k)
            bits = ((t & 0x000F000F) ^ 0x43084308).astype(np.uint32)
            group = np.repeat(np.repeat(np.asarray(pw.scales, np.uint32), 4, axis=-1), 8, axis=1)
            s = _bf16_bits_np((group & 0xFFFF) if k in (0, 2) else (group >> 16))
        for e in range(2):
            h = _bf16_bits_np((bits >> (16 * e)) & 0xFFFF)
            if pw.fmt == "int4":
                h = _bf16_round_np(h - np.float32(136))
            v = _bf16_round_np(h * s)
            nibpos = k + 4 * e
            r, c = _ROWS[:, nibpos], _COLS[:, nibpos]
            out[:, :, r, c] = v
    return out.transpose(0, 2, 1, 3).reshape(tiles * 64, chunks * 16)


def _nvfp4_bf16_asm(k: int) -> str:
    """PTX for bf16x2 register ``k`` of a chunk: codes word ``$1``, scale pair ``$2`` (bf16 of rows g | g+8).

    The magnitude and sign bits move into place with the shifts of ``_NVFP4_BF16_SHIFTS[k]``: ``(e1 e0 m) << 6 |
    s << 15`` read as bf16 is ``code * 2^-126`` (subnormal for +-0.5); times the block scale ``s * 2^119`` it is
    ``code * s * 2^-7``, exact (at most 6 significant bits, normal range). The scale of row g (k even) or g+8 (k
    odd) is broadcast through the half-register operand (ptxas folds it into ``HMUL2 .H0_H0`` / ``.H1_H1``).
    """
    a, b = _NVFP4_BF16_SHIFTS[k]

    def sh(dst, n):
        if n == 0:
            return f"mov.b32 {dst}, $1;"
        return f"shl.b32 {dst}, $1, {n};" if n > 0 else f"shr.b32 {dst}, $1, {-n};"

    if a == b:
        decode = f" {sh('t', a)}\n and.b32 t, t, 0x81C081C0;\n"
    else:
        decode = (f" {sh('t', a)} {sh('u', b)}\n and.b32 u, u, 0x80008000;\n"
                  " lop3.b32 t, t, 0x01C001C0, u, 0xEA;\n")
    half = "sh" if k % 2 else "sl"
    return ("{ .reg .b32 t, u, sd; .reg .b16 sl, sh;\n" + decode +
            " mov.b32 {sl, sh}, $2;\n"
            f" mov.b32 sd, {{{half}, {half}}};\n"
            " mul.rn.bf16x2 $0, t, sd; }")


_BF16_SCALE_PAIR_BIAS = ((_BF16_SCALE_BIAS << 7) << 16) | (_BF16_SCALE_BIAS << 7)


def _bf16_scale_pair_asm() -> str:
    """PTX: scale-byte pair ``$1`` (row g | row g+8 << 8) -> bf16x2 ``{s_g, s_g+8}`` (``(byte << 4) + 237 << 7``
    per half, see :func:`_bf16_scale_bytes`)."""
    return ("{ .reg .b32 q;\n"
            " prmt.b32 q, $1, 0, 0x4140;\n"
            f" mad.lo.u32 $0, q, 16, {hex(_BF16_SCALE_PAIR_BIAS)}; }}")


def _e4m3_np(b):
    b = np.asarray(b, np.int64)
    e, m = (b >> 3) & 0xF, b & 7
    v = np.where(e > 0, (1 + m / 8.0) * 2.0 ** (e - 7), m * 2.0**-9)
    return np.where(b & 0x80, -v, v)


def _nvfp4_asm(k: int) -> str:
    """PTX for f16x2 register ``k`` of a chunk: codes word ``$1``, E4M3 scale pair ``$2`` (low 16 bits)."""
    sh_t, sh_u = 9 - 4 * k, 12 - 4 * k
    t_op = f"shl.b32 t, $1, {sh_t};" if sh_t >= 0 else f"shr.b32 t, $1, {-sh_t};"
    u_op = f"shl.b32 u, $1, {sh_u};" if sh_u > 0 else "mov.b32 u, $1;"
    half = "sl" if k in (0, 2) else "sh"
    return ("{ .reg .b32 t, u, v, s2, sd; .reg .b16 ql, qh, sl, sh;\n"
            f" {t_op} {u_op}\n"
            " and.b32 u, u, 0x80008000;\n"
            " lop3.b32 v, t, 0x0E000E00, u, 0xEA;\n"
            " mov.b32 {ql, qh}, $2;\n"
            " cvt.rn.f16x2.e4m3x2 s2, ql;\n"
            " mov.b32 {sl, sh}, s2;\n"
            f" mov.b32 sd, {{{half}, {half}}};\n"
            " mul.rn.f16x2 $0, v, sd; }")


def _int4_asm(k: int, bf16: bool = False) -> str:
    """PTX for f16x2 (bf16x2 if ``bf16``) register ``k`` of an INT4 chunk: codes word ``$1``, group scales ``$2``.

    ``(c & 15) ^ M`` read as a half is ``B + c - 8`` (M = f16 1032 / bf16 136 with the code's bias folded in);
    subtracting ``B`` gives the signed code, times the group scale of the register's row.
    """
    half = "sl" if k in (0, 2) else "sh"
    sh = f"shr.b32 t, $1, {4 * k};" if k else "mov.b32 t, $1;"
    magic, ty = ("0x43084308", "bf16x2") if bf16 else ("0x64086408", "f16x2")
    return ("{ .reg .b32 t, v, sd, c; .reg .b16 sl, sh;\n"
            f" {sh}\n"
            f" lop3.b32 v, t, 0x000F000F, {magic}, 0x6A;\n"
            f" mov.b32 c, {magic};\n"
            f" sub.rn.{ty} v, v, c;\n"
            " mov.b32 {sl, sh}, $2;\n"
            f" mov.b32 sd, {{{half}, {half}}};\n"
            f" mul.rn.{ty} $0, v, sd; }}")


# ----------------------------------------------------------------------------------------------------
# W4A16: XLA paths


def _dequant_weight(qt, dtype=jnp.bfloat16):
    from jq.qtensor import dequantize

    return dequantize(qt, dtype)


def w4a16_matmul_xla(x, qt, out_dtype=jnp.bfloat16):
    """Reference path: ``x @ dequant(W).T`` through XLA (bf16 weights materialized, f32 accumulation)."""
    w = _dequant_weight(qt, jnp.bfloat16)
    y = lax.dot_general(x.astype(jnp.bfloat16), w, (((x.ndim - 1,), (1,)), ((), ())),
                        preferred_element_type=jnp.float32)
    return y.astype(out_dtype)


def int4_xla_weights(qt):
    """INT4 QTensor -> (``int4 [N, Kp]`` codes, f32 ``[N, Kp/128]`` multipliers) for XLA's native int4 path."""
    n, k = qt.shape
    codes = np.asarray(nx.unpack_nibbles(qt.data)).astype(np.int8)
    codes = np.where(codes >= 8, codes - 16, codes).astype(np.int8)
    inv = (1.0 / np.asarray(qt.scale, np.float32)).astype(np.float32)
    return jnp.asarray(codes).astype(jnp.int4), jnp.asarray(inv)


def w4a16_matmul_xla_int4(x, w_int4, inv_scale, out_dtype=jnp.bfloat16):
    """XLA's native int4 path: the int4 -> bf16 conversion and the group scale are fused into the GEMM."""
    n, kp = w_int4.shape
    g = inv_scale.shape[1]
    w = (w_int4.astype(jnp.bfloat16).reshape(n, g, kp // g) * inv_scale[:, :, None].astype(jnp.bfloat16))
    w = w.reshape(n, kp)
    xk = x.shape[-1]
    xp = x if xk == kp else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, kp - xk)])
    y = lax.dot_general(xp.astype(jnp.bfloat16), w, (((x.ndim - 1,), (1,)), ((), ())),
                        preferred_element_type=jnp.float32)
    return y.astype(out_dtype)


# ----------------------------------------------------------------------------------------------------
# W4A16: the Mosaic GPU kernel


@dataclasses.dataclass(frozen=True)
class MosaicConfig:
    """Decode-GEMM launch configuration (the default is the fastest measured on the H100, RESULTS.md §4)."""

    rows: int = 1  # 64-row weight tiles per pipeline step (accumulators per warpgroup; falls back to 1 if odd)
    block_k: int = 128  # K per pipeline step (multiple of 128)
    stages: int = 4  # TMA pipeline depth (capped so that a CTA's stages fit in shared memory)
    split_k: int | None = None  # "grid": CTAs along K (partial sums added after); None: enough CTAs to fill the GPU
    # schedule: "grid" (one CTA per (row group, K split), one warpgroup decoding + issuing its TMA pipeline),
    # "stream_k" (same warpgroup, ``ctas`` CTAs each taking an equal contiguous run of the (row group, K step)
    # sequence), "ws" (stream-K with a warp-specialized pipeline: one TMA producer warpgroup and ``rows``
    # consumer warpgroups, one 64-row tile each; rows <= 2)
    schedule: str = "stream_k"
    ctas: int | None = None  # stream_k / ws: CTAs (None: one per SM for "ws", 3 per SM for "stream_k")
    # epilogue: "xla" (the kernel writes f32 partial sums [slots, Np, Tpad]; XLA adds them, transposes, scales and
    # casts) or "kernel" ("stream_k" only: the CTA that finishes a row group last adds the other CTAs' partial sums,
    # applies the factor and writes ``y [B, Np]`` in the output dtype itself; see :func:`_fixup_fragment`). "kernel"
    # is correct (runs 10 and 19: 0 failures in 42 and 84 smoke cases) but slower on the H100 at N=28672 K=8192,
    # also with its synchronization moved to the end of each CTA's run (RESULTS.md §4.0), so "xla" stays default.
    epilogue: str = "xla"


_SMEM_PIPELINE_BYTES = 200 * 1024  # of the 227 KB a Hopper CTA may use; the rest: barriers, Mosaic scratch


def _num_sms() -> int:
    try:
        return int(getattr(jax.devices()[0], "core_count", 132) or 132)
    except Exception:  # pragma: no cover
        return 132


def _auto_split(ctas: int, n_steps: int) -> int:
    """Smallest power-of-two K split giving >= 2 CTAs per SM (and dividing the K steps)."""
    s = 1
    while ctas * s < 2 * _num_sms() and n_steps % (2 * s) == 0 and n_steps // (2 * s) >= 4:
        s *= 2
    return s


def _prep_x(x, kp, tpad, dtype="f16"):
    """bf16 ``[B, K]`` -> f16 ``[Tpad, Kp]`` scaled by ``2^e`` (amax * 2^e < 2^15), and ``2^-e``.

    ``dtype="bf16"``: x as bf16, factor 1, not copied when K is a multiple of 128 and B < 8 or a multiple of 8 (the
    TMA tiling of the operand); else padded to Kp columns / Tpad rows. Token rows past B that the copy leaves
    unwritten only reach accumulator columns that are dropped.
    """
    if dtype == "bf16":
        xb = x.astype(jnp.bfloat16)
        b, k = x.shape
        pad_b = tpad - b if (b > 8 and b % 8) else 0  # TMA row tiling: B < 8 or a multiple of 8
        pad_k = kp - k  # columns past K must read as zeros (the weight codes there are 0; 0 * garbage may be NaN)
        if pad_b or pad_k:
            xb = jnp.pad(xb, [(0, pad_b), (0, pad_k)])
        return xb, jnp.float32(1.0)
    xf = x.astype(jnp.float32)
    amax = jnp.max(jnp.abs(xf))
    e = jnp.where(amax > 0, 14 - jnp.floor(jnp.log2(jnp.maximum(amax, 1e-30))), 0.0)
    e = jnp.clip(e, -100, 100)
    scale = jnp.exp2(e)
    xs = (xf * scale).astype(jnp.float16)
    xs = jnp.pad(xs, [(0, tpad - x.shape[0]), (0, kp - x.shape[1])])
    return xs, 1.0 / scale


def _decode_fragment(fmt, codes_ref, scales_ref, lead=None, dtype="f16"):
    """inline_mgpu body: the [64, 64] f16 wgmma A fragment of 4 chunks (16 columns each) of one 64-row tile.

    ``lead``: None when the refs are the tile's ``[4, 128]`` / ``[4|1, 32]`` views; ``"wg"`` when they carry a
    leading tile dimension indexed by the calling warpgroup (consumer warpgroup ``w`` decodes tile ``w``).
    """
    from jax._src.lib.mlir import ir
    from jax._src.lib.mlir.dialects import arith, llvm, memref
    from jax.experimental.mosaic import gpu as mgpu
    from jax.experimental.mosaic.gpu import fragmented_array as fa
    from jax.experimental.mosaic.gpu import utils as mu

    i32 = ir.IntegerType.get_signless(32)
    index = ir.IndexType.get()
    bf16 = dtype == "bf16"
    f16x2 = ir.VectorType.get((2,), ir.BF16Type.get() if bf16 else ir.F16Type.get())
    tall = mu.thread_idx()
    tid = arith.remui(tall, mu.c(128, i32))
    tidx = arith.index_cast(index, tid)
    sidx = arith.index_cast(index, arith.shrui(tid, mu.c(2, i32)))  # row pair of the thread
    pre = [] if lead is None else [arith.index_cast(index, arith.divui(tall, mu.c(128, i32)))]
    regs = np.empty(fa.WGMMA_LAYOUT.registers_shape((64, 64)), dtype=object)
    for c in range(4):
        ci = arith.constant(index, c)
        w = memref.load(codes_ref, [*pre, ci, tidx])
        if fmt == "nvfp4":
            s = arith.extui(i32, memref.load(scales_ref, [*pre, ci, sidx]))
            asm = _nvfp4_asm
        else:
            s = memref.load(scales_ref, [*pre, arith.constant(index, 0), sidx])
            asm = functools.partial(_int4_asm, bf16=bf16)
        if bf16 and fmt == "nvfp4":
            pair = llvm.inline_asm(i32, [s], _bf16_scale_pair_asm(), "=r,r")
        for k, (c8, r8) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            if bf16 and fmt == "nvfp4":
                out = llvm.inline_asm(i32, [w, pair], _nvfp4_bf16_asm(k), "=r,r,r")
            else:
                out = llvm.inline_asm(i32, [w, s], asm(k), "=r,r,r")
            regs[0, 2 * c + c8, 0, 0, r8, 0, 0, 0, 0] = mu.bitcast(out, f16x2)
    return mgpu.FragmentedArray(_registers=regs, _layout=fa.WGMMA_LAYOUT, _is_signed=None)


def _decode_a(fmt, cref, sref, lead=None, dtype="f16"):
    """The f16/bf16 wgmma A operand ``[64, 64]`` decoded in registers from the SMEM views ``cref`` / ``sref``."""
    from jax.experimental.pallas import mosaic_gpu as plgpu

    jdt = jnp.bfloat16 if dtype == "bf16" else jnp.float16
    return plgpu.inline_mgpu(
        arg_types=(plgpu.RefType(), plgpu.RefType()),
        return_type=plgpu.ShapeDtypeStruct((64, 64), jdt, layout=plgpu.Layout.WGMMA),
    )(functools.partial(_decode_fragment_ctx, fmt, lead, dtype))(cref, sref)


def _plan(pw: PackedW4, b: int, cfg: MosaicConfig):
    """Static launch parameters of the decode GEMM for ``b`` tokens (validated against the packed weight)."""
    tiles, chunks, _ = pw.codes.shape
    kp, np_ = chunks * 16, tiles * 64
    tpad = max(8, -(-b // 8) * 8)
    rows, bk, stages = cfg.rows, cfg.block_k, cfg.stages
    if kp % bk:  # K padded to 128 only: fall back to the smallest step
        bk = 128
    if tiles % rows:
        rows = 1
    if tiles % rows or kp % bk or bk % 128:
        raise ValueError(f"config {cfg} does not divide the packed weight ({np_}x{kp})")
    if cfg.schedule not in ("grid", "stream_k", "ws"):
        raise ValueError(f"unknown schedule {cfg.schedule!r}")
    if cfg.epilogue not in ("xla", "kernel"):
        raise ValueError(f"unknown epilogue {cfg.epilogue!r}")
    if cfg.epilogue == "kernel" and cfg.schedule != "stream_k":
        raise NotImplementedError("the in-kernel epilogue is implemented for the 'stream_k' schedule only")
    if cfg.schedule == "ws" and rows > 2:
        # 4 consumer warpgroups (640 threads) hung on the H100 (RESULTS.md §4, run 7); not investigated
        raise NotImplementedError("the warp-specialized schedule takes rows <= 2")
    n_steps = kp // bk
    groups = tiles // rows
    # a pipeline stage holds the codes, scales and token tile of one step: keep one CTA's stages in shared memory
    sgroups = bk // 16 if pw.fmt == "nvfp4" else bk // 128  # scale entries per row pair and step
    step_bytes = rows * (bk // 16) * 128 * 4 + rows * sgroups * 32 * (2 if pw.fmt == "nvfp4" else 4) + tpad * bk * 2
    stages = max(2, min(stages, _SMEM_PIPELINE_BYTES // step_bytes))
    plan = dict(tiles=tiles, kp=kp, np_=np_, tpad=tpad, rows=rows, bk=bk, stages=stages, kc=bk // 16,
                n_steps=n_steps, groups=groups, sgroups=sgroups)
    if cfg.schedule == "grid":
        split = cfg.split_k or _auto_split(groups, n_steps)
        if n_steps % split:
            raise ValueError(f"split_k={split} does not divide the {n_steps} K steps")
        plan.update(split=split, slots=split)
    else:
        total = groups * n_steps
        want = cfg.ctas or (_num_sms() if cfg.schedule == "ws" else 3 * _num_sms())
        per = -(-total // max(1, min(want, total)))  # K steps per CTA
        if cfg.ctas is None:  # small weights: at most 4 partial-sum slots (runs of >= (n_steps - 1) / 3 steps)
            per = max(per, -(-(n_steps - 1) // 3), 1)
        ctas = -(-total // per)  # no CTA without work
        # a row group's n_steps steps are spread over at most this many CTAs (one partial-sum slot each)
        slots = min(ctas, -(-(n_steps - 1) // per) + 1)
        plan.update(per=per, ctas=ctas, slots=slots, total=total)
    return plan


def _mosaic_call(xs, pw: PackedW4, cfg: MosaicConfig, b: int, factor=None, out_dtype=jnp.bfloat16):
    """The Mosaic kernel alone: tokens ``[Tpad, Kp]`` -> f32 partial sums ``[slots, Np, Tpad]``; with
    ``cfg.epilogue == "kernel"``: ``y [B, Np]`` (``out_dtype``, scaled by ``factor``, default ``pw.factor``)."""
    p = _plan(pw, b, cfg)
    if cfg.schedule == "grid":
        return _grid_kernel(xs, pw, p)
    if cfg.epilogue == "kernel":
        f = jnp.reshape(jnp.asarray(pw.factor if factor is None else factor, jnp.float32), (1,))
        return _stream_k_kernel(xs, pw, p, ws=False, fused=(b, jnp.dtype(out_dtype), f))
    return _stream_k_kernel(xs, pw, p, ws=cfg.schedule == "ws")


def _x_spec(p, index_map):
    from jax.experimental.pallas import mosaic_gpu as plgpu

    return plgpu.BlockSpec((p["tpad"], p["bk"]), index_map,
                           transforms=(plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128)))


def _grid_kernel(xs, pw, p):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    fmt, rows, bk, kc, sgroups = pw.fmt, p["rows"], p["bk"], p["kc"], p["sgroups"]
    split, tpad = p["split"], p["tpad"]
    steps = p["n_steps"] // split

    def w4a16_grid(codes_g, scales_g, x_g, out_g):
        cta = lax.axis_index("n")
        ks = lax.axis_index("s")

        def scoped(*accs):
            def step(_, c_smem, s_smem, x_smem):
                for r in range(rows):
                    for j in range(bk // 64):
                        cref = c_smem.at[r, pl.ds(4 * j, 4)]
                        sref = (s_smem.at[r, pl.ds(4 * j, 4)] if fmt == "nvfp4"
                                else s_smem.at[r, pl.ds((64 * j) // 128, 1)])
                        a = _decode_a(fmt, cref, sref, None, pw.dtype)
                        plgpu.wgmma(accs[r], a, plgpu.transpose_ref(x_smem.at[:, pl.ds(64 * j, 64)], (1, 0)))
                plgpu.wgmma_wait(0)

            plgpu.emit_pipeline(
                step, grid=(steps,),
                in_specs=[
                    plgpu.BlockSpec((rows, kc, 128), lambda i: (0, i, 0)),
                    plgpu.BlockSpec((rows, sgroups, 32), lambda i: (0, i, 0)),
                    _x_spec(p, lambda i: (0, i)),
                ],
                max_concurrent_steps=min(p["stages"], steps),
            )(codes_g.at[pl.ds(cta * rows, rows), pl.ds(ks * (steps * kc), steps * kc)],
              scales_g.at[pl.ds(cta * rows, rows), pl.ds(ks * (steps * sgroups), steps * sgroups)],
              x_g.at[:, pl.ds(ks * (steps * bk), steps * bk)])
            for r in range(rows):
                out_g[ks, pl.ds((cta * rows + r) * 64, 64), :] = accs[r][...]

        pl.run_scoped(scoped, *([plgpu.ACC((64, tpad), jnp.float32)] * rows))

    return plgpu.kernel(
        w4a16_grid, out_type=jax.ShapeDtypeStruct((split, p["np_"], tpad), jnp.float32), grid=(p["groups"], split),
        grid_names=("n", "s"),
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Lane),
    )(pw.codes, pw.scales, xs)


def _stream_k_kernel(xs, pw, p, ws: bool, fused=None):
    """Stream-K schedule: the ``total = groups * n_steps`` (row group, K step) pairs, in row-group-major order,
    are cut into ``ctas`` equal contiguous runs of ``per`` steps (the last may be shorter), one per CTA, so every
    SM streams the same number of weight bytes whatever the shape. A CTA flushes its accumulators when a row group
    ends or its run ends; the j-th CTA touching a row group writes partial-sum slot j, and the CTA holding the
    group's first step zero-fills the slots no CTA uses for that group.

    ``ws``: warp-specialized pipeline (``plgpu.emit_pipeline_warp_specialized``): warpgroup ``rows`` only issues
    the TMA copies, warpgroups ``0..rows-1`` each decode and multiply one 64-row tile of the group and release
    the SMEM slot when their wgmma is done. Otherwise one warpgroup per CTA does everything (``emit_pipeline``).

    ``fused = (b, out_dtype, factor [1] f32)``: in-kernel epilogue (:func:`_fixup_fragment`); the kernel returns
    ``y [b, Np]`` in ``out_dtype`` and its f32 workspace (unused by the caller).
    """
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    fmt, rows, bk, kc, sgroups = pw.fmt, p["rows"], p["bk"], p["kc"], p["sgroups"]
    tpad, per, ctas, slots, total, ns = p["tpad"], p["per"], p["ctas"], p["slots"], p["total"], p["n_steps"]
    static_len = total % per == 0
    ntile = 1 if ws else rows  # tiles (accumulators) per warpgroup

    def zeros():
        return plgpu.layout_cast(jnp.zeros((64, tpad), jnp.float32), plgpu.Layout.WGMMA)

    def w4a16_stream_k(codes_g, scales_g, x_g, *refs):
        if fused is not None:
            f_g, y_g, ws_g = refs
            # one counter per (row group, thread), zeroed for every call (Pallas' GMEM semaphore scratch)
            cnt = pl.get_global(plgpu.SemaphoreType.REGULAR((p["groups"] * 128,)))
        else:
            (out_g,) = refs
        c = lax.axis_index("n")
        start = c * per
        n = per if static_len else jnp.minimum(total - start, per)

        def gk(i):
            t = start + i
            return lax.div(t, ns), lax.rem(t, ns)

        def body(idx, c_smem, s_smem, x_smem, accs):
            (i,) = idx
            g, kk = gk(i)

            def mm(acc_refs):
                for r in range(ntile):
                    for j in range(bk // 64):
                        if ws:
                            cref = c_smem.at[:, pl.ds(4 * j, 4)]
                            sref = (s_smem.at[:, pl.ds(4 * j, 4)] if fmt == "nvfp4"
                                    else s_smem.at[:, pl.ds((64 * j) // 128, 1)])
                        else:
                            cref = c_smem.at[r, pl.ds(4 * j, 4)]
                            sref = (s_smem.at[r, pl.ds(4 * j, 4)] if fmt == "nvfp4"
                                    else s_smem.at[r, pl.ds((64 * j) // 128, 1)])
                        a = _decode_a(fmt, cref, sref, "wg" if ws else None, pw.dtype)
                        plgpu.wgmma(acc_refs[r], a, plgpu.transpose_ref(x_smem.at[:, pl.ds(64 * j, 64)], (1, 0)))

            accs = pl.run_state(mm)(tuple(plgpu.ACC.init(a) for a in accs))
            flush = jnp.logical_or(kk == ns - 1, i == n - 1)
            first = lax.div(g * ns, per)  # CTA holding the group's first step
            slot = c - first
            npieces = lax.div(g * ns + ns - 1, per) - first + 1

            def do_flush(accs):
                if fused is not None:
                    # a group shared with the previous CTA that ends before this run does (only the run's first
                    # group can): store the partial sums now, synchronize at the end of the run (fixup_finish)
                    defer = jnp.logical_and(npieces > 1, i < n - 1).astype(jnp.int32)
                    fixup(tuple(accs), ws_g, cnt, y_g, f_g, g, slot, npieces, defer)
                    return tuple(zeros() for _ in range(ntile))
                for r in range(ntile):
                    tile = g * rows + (lax.axis_index("wg") if ws else r)
                    out_g[slot, pl.ds(tile * 64, 64), :] = accs[r]
                    for s_ in range(1, slots):
                        @pl.when(jnp.logical_and(slot == 0, npieces <= s_))
                        def _zero():
                            out_g[s_, pl.ds(tile * 64, 64), :] = zeros()
                return tuple(zeros() for _ in range(ntile))

            return lax.cond(flush, do_flush, lambda a: a, accs)

        def idx_map(i):
            g, kk = gk(i)
            return g, kk, 0

        in_specs = [
            plgpu.BlockSpec((rows, kc, 128), idx_map),
            plgpu.BlockSpec((rows, sgroups, 32), idx_map),
            _x_spec(p, lambda i: (0, gk(i)[1])),
        ]
        if ws:
            def ctx(run):
                run(tuple(zeros() for _ in range(ntile)))

            plgpu.emit_pipeline_warp_specialized(
                body, grid=(n,), memory_registers=40, in_specs=in_specs,
                max_concurrent_steps=max(2, min(p["stages"], per)), wg_axis="wg", num_compute_wgs=rows,
                compute_context=ctx,
            )(codes_g, scales_g, x_g)
        else:
            plgpu.emit_pipeline(body, grid=(n,), in_specs=in_specs, max_concurrent_steps=min(p["stages"], per),
                                init_carry=tuple(zeros() for _ in range(ntile)))(codes_g, scales_g, x_g)
        if fused is not None:  # the deferred fix-up of the run's first group (see do_flush)
            g0 = lax.div(start, ns)
            first0 = lax.div(g0 * ns, per)
            np0 = lax.div(g0 * ns + ns - 1, per) - first0 + 1
            deferred = jnp.logical_and(np0 > 1, g0 * ns + ns - 1 < start + n - 1).astype(jnp.int32)
            fixup_finish(ws_g, cnt, y_g, f_g, g0, np0, deferred)

    extra = dict(num_threads=rows + 1, thread_name="wg") if ws else {}
    if fused is not None:
        fb, fdt, fvec = fused
        fixup = _fixup_call(ntile, tpad, slots, p["tiles"], p["np_"], fb, fdt)
        fixup_finish = _fixup_finish_call(ntile, tpad, slots, p["tiles"], p["np_"], fb, fdt)
        out_type = (jax.ShapeDtypeStruct((fb, p["np_"]), fdt),
                    jax.ShapeDtypeStruct((slots * p["np_"] * tpad,), jnp.float32))
        args = (pw.codes, pw.scales, xs, fvec)
    else:
        out_type = jax.ShapeDtypeStruct((slots, p["np_"], tpad), jnp.float32)
        args = (pw.codes, pw.scales, xs)
    return plgpu.kernel(
        w4a16_stream_k, out_type=out_type, grid=(ctas,), grid_names=("n",),
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Lane), **extra,
    )(*args)


def _fixup_call(rows, tpad, slots, tiles, np_, b, out_dtype):
    """``plgpu.inline_mgpu`` wrapper of :func:`_fixup_fragment` (no result: it only writes global memory)."""
    from jax.experimental.pallas import mosaic_gpu as plgpu

    scalar = plgpu.Layout.WG_SPLAT(())
    return plgpu.inline_mgpu(
        arg_types=(tuple(plgpu.Layout.WGMMA for _ in range(rows)), plgpu.RefType(), plgpu.RefType(),
                   plgpu.RefType(), plgpu.RefType(), scalar, scalar, scalar, scalar),
        return_type=None,
    )(functools.partial(_fixup_fragment, rows, tpad, slots, tiles, np_, b, jnp.dtype(out_dtype)))


def _fixup_finish_call(rows, tpad, slots, tiles, np_, b, out_dtype):
    """``plgpu.inline_mgpu`` wrapper of :func:`_fixup_finish_fragment`."""
    from jax.experimental.pallas import mosaic_gpu as plgpu

    scalar = plgpu.Layout.WG_SPLAT(())
    return plgpu.inline_mgpu(
        arg_types=(plgpu.RefType(), plgpu.RefType(), plgpu.RefType(), plgpu.RefType(), scalar, scalar, scalar),
        return_type=None,
    )(functools.partial(_fixup_finish_fragment, rows, tpad, slots, tiles, np_, b, jnp.dtype(out_dtype)))


class _FixupPtx:
    """Per-thread global-memory helpers (inline PTX) shared by the in-kernel epilogue's two parts."""

    def __init__(self, tiles, np_, ws_ref, cnt_ref, y_ref, f_ref):
        from jax._src.lib.mlir import ir
        from jax._src.lib.mlir.dialects import arith, llvm
        from jax.experimental.mosaic.gpu import utils as mu

        self.ir, self.mu, self.llvm, self.arith = ir, mu, llvm, arith
        self.i1, self.i16, self.i32, self.i64 = (ir.IntegerType.get_signless(w) for w in (1, 16, 32, 64))
        self.f32 = ir.F32Type.get()
        self.void = ir.Type.parse("!llvm.void")
        self.tiles, self.np_ = tiles, np_
        self.tid = self.arith.remui(mu.thread_idx(), self.c(128))
        self.ws, self.cnt, self.y, self.fp = (llvm.ptrtoint(self.i64, mu.memref_ptr(r))
                                              for r in (ws_ref, cnt_ref, y_ref, f_ref))

    def c(self, v, t=None):
        return self.mu.c(v, t or self.i32)

    def asm(self, ret, ops, text, cons):
        return self.llvm.inline_asm(ret, ops, text, cons, has_side_effects=True)

    def addr(self, base, idx, nbytes):
        a = self.arith
        return a.addi(base, a.muli(a.extui(self.i64, idx), self.c(nbytes, self.i64)))

    def lt(self, a, v):
        return self.arith.cmpi(self.arith.CmpIPredicate.slt, a, v)

    def eq(self, a, v):
        return self.arith.cmpi(self.arith.CmpIPredicate.eq, a, v)

    def ws_addr(self, s, tile, k, n_el):  # ws[((s * tiles + tile) * n_el + k) * 128 + tid]
        a = self.arith
        t = a.addi(a.muli(s, self.c(self.tiles)), tile)
        return self.addr(self.ws, a.addi(a.muli(a.addi(a.muli(t, self.c(n_el)), self.c(k)), self.c(128)), self.tid), 4)

    def counter(self, g):
        return self.addr(self.cnt, self.arith.addi(self.arith.muli(g, self.c(128)), self.tid), 4)

    def arrive(self, g, pred):
        """``atom.acq_rel.gpu.add(cnt[g, tid], 1)`` where ``pred`` (else 0): the pieces that arrived before."""
        return self.asm(self.i32, [self.counter(g), self.c(1), pred],
                        "mov.u32 $0, 0;\n@$3 atom.acq_rel.gpu.global.add.u32 $0, [$1], $2;", "=r,l,r,b")

    def store_ws(self, v, s, tile, k, n_el, pred):
        self.asm(self.void, [self.ws_addr(s, tile, k, n_el), v, pred], "@$2 st.global.f32 [$0], $1;", "l,f,b")

    def load_ws(self, s, tile, k, n_el, pred):
        return self.asm(self.f32, [self.ws_addr(s, tile, k, n_el), pred],
                        "mov.f32 $0, 0f00000000;\n@$2 ld.global.cg.f32 $0, [$1];", "=f,l,b")

    def store_y(self, total, row, col, tile, b, out_dtype, last):
        """``y[col, tile * 64 + row] = total * factor`` (rounded to ``out_dtype``) where ``last`` and col < B."""
        a = self.arith
        if getattr(self, "_fac", None) is None:
            self._fac = self.asm(self.f32, [self.fp], "ld.global.f32 $0, [$1];", "=f,l")
        out = a.mulf(total, self._fac)
        ok = a.andi(last, self.lt(col, self.c(b)))
        oidx = a.addi(a.muli(col, self.c(self.np_)), a.addi(a.muli(tile, self.c(64)), row))
        if out_dtype == jnp.dtype(jnp.float32):
            self.asm(self.void, [self.addr(self.y, oidx, 4), out, ok], "@$2 st.global.f32 [$0], $1;", "l,f,b")
        else:
            half = self.ir.BF16Type.get() if out_dtype == jnp.dtype(jnp.bfloat16) else self.ir.F16Type.get()
            h = a.bitcast(self.i16, a.truncf(half, out))
            self.asm(self.void, [self.addr(self.y, oidx, 2), h, ok], "@$2 st.global.b16 [$0], $1;", "l,h,b")

    def reset(self, g, pred):
        self.asm(self.void, [self.counter(g), self.c(0), pred], "@$2 st.relaxed.gpu.global.u32 [$0], $1;", "l,r,b")


def _own_positions(tpad):
    """(row, col) of this thread's accumulator elements of a ``[64, tpad]`` WGMMA tile, in register order (k)."""
    from jax._src.lib.mlir import ir
    from jax._src.lib.mlir.dialects import arith
    from jax.experimental.mosaic.gpu import fragmented_array as fa
    from jax.experimental.mosaic.gpu import utils as mu

    i32 = ir.IntegerType.get_signless(32)
    out = []
    for idx in fa.WGMMA_LAYOUT.thread_idxs((64, tpad)):
        for e in range(fa.WGMMA_LAYOUT.vector_length):
            out.append((arith.index_cast(i32, idx[0]), arith.addi(arith.index_cast(i32, idx[1]), mu.c(e, i32))))
    return out


def _fixup_fragment(rows, tpad, slots, tiles, np_, b, out_dtype, ctx, accs, ws_ref, cnt_ref, y_ref, f_ref,
                    g_fa, slot_fa, npieces_fa, defer_fa):
    """In-kernel stream-K epilogue of row group ``g`` (its ``rows`` accumulators ``[64, Tpad]``), per thread.

    Every thread owns the same accumulator elements in every CTA (the WGMMA layout), so the CTAs sharing a row group
    synchronize thread by thread, without barriers or spinning: a thread stores its f32 partial sums to
    ``ws[slot, tile, k, tid]`` (k: its k-th element) and adds 1 to the counter ``cnt[g, tid]`` with
    ``atom.acq_rel.gpu``; the thread that sees ``npieces - 1`` arrived last (exactly one per (g, tid)), reads the
    other pieces' partial sums (``ld.global.cg``, after its acquire), adds them in slot order (the same bits
    whichever CTA finishes last), multiplies by the factor, rounds to the output dtype and stores ``y[token, row]``
    (the transposed layout), then resets its counter to 0. A group held by one CTA (``npieces == 1``) skips the
    workspace and the counter. Nothing waits on another CTA, so any CTA scheduling order is safe.

    ``defer`` (a run's first group, shared with the previous CTA and ending before the run does): only the
    workspace store happens here; the counter and the sum wait for :func:`_fixup_finish_fragment` at the end of the
    run, so that no release/acquire fence stalls the CTA's weight stream in the middle of its run.
    """
    del ctx
    from jax._src.lib.mlir.dialects import arith, vector
    from jax._src.lib.mlir import ir

    x = _FixupPtx(tiles, np_, ws_ref, cnt_ref, y_ref, f_ref)
    g, slot, npieces, defer = (v.registers.item() for v in (g_fa, slot_fa, npieces_fa, defer_fa))
    multi = arith.cmpi(arith.CmpIPredicate.sgt, npieces, x.c(1))
    sync = arith.andi(multi, x.eq(defer, x.c(0)))

    own = []  # this thread's values of each tile, in the order of _own_positions
    for acc in accs:
        vals = []
        for reg in acc.registers.flat:
            if isinstance(reg.type, ir.VectorType):
                for e in range(ir.VectorType(reg.type).shape[0]):
                    vals.append(vector.extract(reg, dynamic_position=[], static_position=ir.DenseI64ArrayAttr.get([e])))
            else:
                vals.append(reg)
        own.append(vals)
    pos = _own_positions(tpad)
    n_el = len(pos)
    assert all(len(v) == n_el for v in own), (n_el, [len(v) for v in own])

    tile0 = arith.muli(g, x.c(rows))
    for r in range(rows):
        tile = arith.addi(tile0, x.c(r))
        for k, v in enumerate(own[r]):
            x.store_ws(v, slot, tile, k, n_el, multi)
    old = x.arrive(g, sync)
    last = arith.andi(x.eq(old, arith.subi(npieces, x.c(1))), x.eq(defer, x.c(0)))
    for r in range(rows):
        tile = arith.addi(tile0, x.c(r))
        for k, (v, (row, col)) in enumerate(zip(own[r], pos)):
            total = None
            for s_ in range(slots):
                is_own = x.eq(slot, x.c(s_))
                have = x.lt(x.c(s_), npieces)
                pred = arith.andi(arith.andi(last, have), arith.xori(is_own, x.c(1, x.i1)))
                vs = arith.select(is_own, v, x.load_ws(x.c(s_), tile, k, n_el, pred))
                total = vs if total is None else arith.select(have, arith.addf(total, vs), total)
            x.store_y(total, row, col, tile, b, out_dtype, last)
    x.reset(g, arith.andi(last, multi))
    return None


def _fixup_finish_fragment(rows, tpad, slots, tiles, np_, b, out_dtype, ctx, ws_ref, cnt_ref, y_ref, f_ref,
                           g_fa, npieces_fa, pred_fa):
    """The deferred half of :func:`_fixup_fragment` for group ``g`` (where ``pred``): arrive on the counter and,
    if last, add every piece from the workspace (this CTA's own included) in slot order and store ``y``."""
    del ctx
    from jax._src.lib.mlir.dialects import arith

    x = _FixupPtx(tiles, np_, ws_ref, cnt_ref, y_ref, f_ref)
    g, npieces, pred = (v.registers.item() for v in (g_fa, npieces_fa, pred_fa))
    go = arith.cmpi(arith.CmpIPredicate.ne, pred, x.c(0))
    old = x.arrive(g, go)
    last = arith.andi(go, x.eq(old, arith.subi(npieces, x.c(1))))
    pos = _own_positions(tpad)
    tile0 = arith.muli(g, x.c(rows))
    for r in range(rows):
        tile = arith.addi(tile0, x.c(r))
        for k, (row, col) in enumerate(pos):
            total = None
            for s_ in range(slots):
                have = x.lt(x.c(s_), npieces)
                vs = x.load_ws(x.c(s_), tile, k, len(pos), arith.andi(last, have))
                total = vs if total is None else arith.select(have, arith.addf(total, vs), total)
            x.store_y(total, row, col, tile, b, out_dtype, last)
    x.reset(g, last)
    return None


def _finish(out, pw: PackedW4, b: int, inv_xscale, out_dtype):
    acc = out[0] if out.shape[0] == 1 else jnp.sum(out, axis=0)
    factor = (pw.factor * inv_xscale).astype(jnp.float32)
    return (acc[: pw.n, :b].T * factor).astype(out_dtype)


def w4a16_matmul_mosaic(x, pw: PackedW4, cfg: MosaicConfig = MosaicConfig(), out_dtype=jnp.bfloat16):
    """The Mosaic GPU decode GEMM: ``x [B, K] @ W.T`` for ``B <= 64`` (see the module docstring)."""
    b, k = x.shape
    if k != pw.k:
        raise ValueError(f"x has K={k}, weights K={pw.k}")
    if b > 64:
        raise ValueError("the Mosaic decode GEMM takes up to 64 tokens; use w4a16_matmul for any batch")
    p = _plan(pw, b, cfg)
    xs, inv_xscale = _prep_x(x, p["kp"], p["tpad"], pw.dtype)
    if cfg.epilogue == "kernel":
        if jnp.dtype(out_dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32)):
            raise ValueError(f"the in-kernel epilogue writes bf16, f16 or f32, not {jnp.dtype(out_dtype)}")
        factor = pw.factor if pw.dtype == "bf16" else pw.factor * inv_xscale
        y, _ = _mosaic_call(xs, pw, cfg, b, factor, out_dtype)
        return y if pw.n == p["np_"] else y[:, : pw.n]
    return _finish(_mosaic_call(xs, pw, cfg, b), pw, b, inv_xscale, out_dtype)


def _decode_fragment_ctx(fmt, lead, dtype, ctx, codes_ref, scales_ref):
    del ctx
    return _decode_fragment(fmt, codes_ref, scales_ref, lead, dtype)


_CFG_OVERRIDE: list = []


@contextlib.contextmanager
def mosaic_config(cfg: MosaicConfig):
    """Within the block, :func:`w4a16_matmul` calls without ``cfg`` (e.g. from ``jq.deploy``) trace with ``cfg``
    instead of ``MosaicConfig()`` (benchmarks compare configs end to end this way)."""
    _CFG_OVERRIDE.append(cfg)
    try:
        yield cfg
    finally:
        _CFG_OVERRIDE.pop()


def default_config(pw: PackedW4, b: int) -> MosaicConfig:
    """The launch configuration :func:`w4a16_matmul` uses when none is given.

    ``MosaicConfig()`` (stream-K, fastest at N=28672 K=8192, RESULTS.md §4) for weights large enough that a
    stream-K plan over 128-row groups gives every SM work; for smaller weights, where that plan (at most 4
    partial-sum slots per row group) launches fewer CTAs than there are SMs (94, 24 and 97 CTAs at a d=4096
    model's shapes), the grid schedule with 64-row tiles and 3 stages, which splits K to reach two CTAs per SM
    (the rule measured end to end in run 11, RESULTS.md §5).
    """
    cfg = MosaicConfig()
    if _plan(pw, b, _STREAM_K_SIZE_RULE)["ctas"] >= _num_sms():
        return cfg
    return dataclasses.replace(cfg, schedule="grid", rows=1, stages=3)


_STREAM_K_SIZE_RULE = MosaicConfig(rows=2, stages=3)  # the plan default_config sizes a weight with


def w4a16_matmul(x, w, *, impl: str | None = None, cfg: MosaicConfig | None = None, out_dtype=jnp.bfloat16):
    """``x @ dequant(W).T`` for a :class:`PackedW4` (decode kernel) or a QTensor (XLA path); any leading dims."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if isinstance(w, PackedW4):
        cfg = cfg or (_CFG_OVERRIDE[-1] if _CFG_OVERRIDE else default_config(w, min(64, x2.shape[0])))
        ys = [w4a16_matmul_mosaic(x2[s:s + 64], w, cfg, out_dtype)
              for s in range(0, x2.shape[0], 64)]  # decode batches are one chunk; prefill loops over 64
        y = ys[0] if len(ys) == 1 else jnp.concatenate(ys, axis=0)
    else:
        y = w4a16_matmul_xla(x2, w, out_dtype)
    return y.reshape(lead + (y.shape[-1],))
