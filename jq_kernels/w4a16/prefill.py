"""W4A16 prefill GEMM (Pallas-Triton): ``y[M, N] = x[M, K] @ dequant(W)[N, K]^T`` for many tokens, reading the
decode GEMM's packed weight (:class:`~jq_kernels.w4a16.layout.PackedW4`, ``dtype="bf16"``) in place.

At >= 64 tokens the GEMM is compute-bound: each program owns a ``[bm, bn]`` output tile, walks K ``bk`` columns at a
time (Triton pipelines the loop ``num_stages`` deep), decodes the ``[bn, bk]`` weight tile to bf16 in registers (one
decode per weight per M tile) and runs a bf16 MMA with f32 accumulation; the f32 global factor is applied once to
the accumulator.

Reading the packed layout. ``PackedW4.codes[t, c, 32 w + 4 lr + lc]`` holds the 8 codes of weight rows
``64 t + 16 w + lr + 8 r8`` and columns ``16 c + 8 c8 + 2 lc + e`` (slot ``(r8, c8, e)``; bit positions of
:data:`~jq_kernels.w4a16.layout.NVFP4_BF16_SHIFTS` for NVFP4, nibble ``2 c8 + r8 + 4 e`` for INT4). A program loads
the words of its tile as ``[bn/64, bk/16, 32, 4]`` (the array's own blocks), swaps the chunk and ``(w, lr)`` axes in
registers and shifts every word once per slot, which gives the decoded tile with rows in natural order and the
columns of each 16-column chunk in the order ``(lc, c8, e)``: column ``q = 4 lc + 2 c8 + e`` of the tile is weight
column ``8 c8 + 2 lc + e``. The activation is permuted the same way along K (:func:`permute_k`: by XLA before the
call, or in the kernel for each loaded tile: ``x_permute``), so the dot product is unchanged. No second copy of the
weight is stored.

Numerics (equal to the decode GEMM's, :func:`jq_kernels.w4a16.emulate_decode`): NVFP4 ``code * s`` is exact in bf16
(2 x 4 significant bits) and the global scale multiplies the f32 accumulator; INT4 ``code * bf16(amax/7)`` is rounded
to bf16 (round to nearest even) as the decode GEMM does. Products are exact in the f32 accumulator, so the result
matches ``x @ (emulate_decode(pw) * pw.factor).T`` up to the order of the f32 additions.

Example:
  >>> from jq_kernels.w4a16.layout import pack_w4
  >>> codes = jnp.full((64, 64), 0x22, jnp.uint8)  # E2M1 code 2 = 1.0 everywhere
  >>> pw = pack_w4(codes, jnp.ones((64, 8), jnp.float8_e4m3fn), 0.5, fmt="nvfp4", shape=(64, 128))
  >>> w4a16_prefill_matmul(jnp.ones((3, 128), jnp.bfloat16), pw, out_dtype=jnp.float32, interpret=True)[0, :2]
  Array([64., 64.], dtype=float32)
"""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jq_kernels import _common as C
from jq_kernels.w4a16.layout import BF16_SCALE_BIAS, NVFP4_BF16_SHIFTS, PackedW4

__all__ = [
    "CONFIGS",
    "DECODES",
    "INT4_PAIR_PTX",
    "NVFP4_PAIR_PTX",
    "X_PERMUTES",
    "PrefillConfig",
    "permute_k",
    "prefill_plan",
    "w4a16_prefill_matmul",
]

X_PERMUTES = ("xla", "kernel")
DECODES = ("alu", "ptx")
_NT = (((1,), (1,)), ((), ()))  # contract the K (last) dims of both tiles


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrefillConfig:
    """Launch parameters of the prefill GEMM.

    Attributes:
      block_m: tokens per program (a power of two >= 16; fewer tokens: the next power of two >= 16 of them).
      block_n: weight rows per program (64, 128 or 256; halved while it does not divide the padded N).
      block_k: K per loop step (a power of two >= 64; halved while it does not divide the padded K).
      num_warps, num_stages: Triton compiler parameters.
      swap_ab: the MMA computes ``W_tile @ x_tile^T`` (the decoded weight is the A operand, which Hopper's wgmma
        may read from registers) and the epilogue transposes; False: ``x_tile @ W_tile^T``.
      x_permute: where the activation's K permutation happens: ``"xla"`` (one XLA transpose of ``x`` per call,
        fused with the padding) or ``"kernel"`` (each loaded ``[bm, bk]`` tile is permuted in registers).
      decode: ``"alu"`` (jnp integer / f32 operations, one element per operation; runs in interpret mode too) or
        ``"ptx"`` (GPU only: one inline-PTX instance per codes word and register slot builds two bf16 weights with
        the decode GEMM's bit tricks and one ``mul.rn.bf16x2``; about a third of the ALU operations).

    Example:
      >>> PrefillConfig(block_n=256, num_warps=4).name
      'm128n256k64w4p4'
      >>> PrefillConfig.from_name("m128n128k128w8p3-swap-xk-ptx") == PrefillConfig(
      ...     block_k=128, num_stages=3, swap_ab=True, x_permute="kernel", decode="ptx")
      True
    """

    block_m: int = 128
    block_n: int = 128
    block_k: int = 64
    num_warps: int = 8
    num_stages: int = 4
    swap_ab: bool = False
    x_permute: str = "xla"
    decode: str = "alu"

    def __post_init__(self):
        for field, lo in (("block_m", 16), ("block_n", 64), ("block_k", 64)):
            v = getattr(self, field)
            if v < lo or v & (v - 1):
                raise ValueError(f"PrefillConfig.{field} must be a power of two >= {lo}, got {v}")
        if self.block_n > 256:
            raise ValueError(f"PrefillConfig.block_n must be 64, 128 or 256, got {self.block_n}")
        if self.num_warps < 1 or self.num_stages < 1:
            raise ValueError(f"PrefillConfig: num_warps and num_stages must be >= 1, got {self.num_warps}, "
                             f"{self.num_stages}")
        if self.x_permute not in X_PERMUTES:
            raise ValueError(f"PrefillConfig.x_permute must be one of {X_PERMUTES}, got {self.x_permute!r}")
        if self.decode not in DECODES:
            raise ValueError(f"PrefillConfig.decode must be one of {DECODES}, got {self.decode!r}")

    @property
    def name(self) -> str:
        return (f"m{self.block_m}n{self.block_n}k{self.block_k}w{self.num_warps}p{self.num_stages}"
                + ("-swap" if self.swap_ab else "") + ("-xk" if self.x_permute == "kernel" else "")
                + ("-ptx" if self.decode == "ptx" else ""))

    @classmethod
    def from_name(cls, name: str) -> PrefillConfig:
        """The config whose :attr:`name` is ``name``."""
        m = re.fullmatch(r"m(\d+)n(\d+)k(\d+)w(\d+)p(\d+)(-swap)?(-xk)?(-ptx)?", name)
        if m is None:
            raise ValueError(f"PrefillConfig.from_name: {name!r} is not a config name like 'm128n128k64w4p4'")
        bm, bn, bk, nw, ns = (int(v) for v in m.groups()[:5])
        return cls(block_m=bm, block_n=bn, block_k=bk, num_warps=nw, num_stages=ns, swap_ab=m.group(6) is not None,
                   x_permute="kernel" if m.group(7) else "xla", decode="ptx" if m.group(8) else "alu")


# candidates for the GPU sweep (benchmarks/kernel_bench/w4a16_prefill.py), the default first. Offline Triton 3.9
# compiles for sm_90 (docs/w4a16_prefill.md): all 8 warps, <= 162 registers, no spills (4 warps and bn = 256 spill);
# swap_ab gives an asynchronous wgmma (A from registers), the PTX decode about half the loop instructions.
CONFIGS = (PrefillConfig(), PrefillConfig(swap_ab=True, decode="ptx"), PrefillConfig(decode="ptx"),
           PrefillConfig(swap_ab=True),
           PrefillConfig(block_m=256, block_n=64, num_stages=3),  # the decode amortized over 256 tokens
           PrefillConfig(block_m=256, block_n=64, num_stages=3, swap_ab=True, decode="ptx"),
           PrefillConfig(block_k=128, num_stages=3, swap_ab=True, decode="ptx"))


def _halve_to_divide(want: int, total: int, lo: int) -> int:
    b = want
    while total % b and b > lo:
        b //= 2
    return b


def prefill_plan(m: int, pw: PackedW4, cfg: PrefillConfig | None = None) -> dict:
    """Blocks and padding of one call: ``bm, m_pad, bn, np_, bk, kp, steps`` (K steps per program) and ``grid``.

    Only ``pw.codes.shape`` (``[Np/64, Kp/16, 128]``) is read.

    Example:
      >>> import types
      >>> pw = types.SimpleNamespace(codes=jax.ShapeDtypeStruct((64, 256, 128), "uint32"))
      >>> p = prefill_plan(40, pw, PrefillConfig(block_k=256)); (p["bm"], p["m_pad"], p["bn"], p["bk"], p["grid"])
      (64, 64, 128, 256, (1, 32))
    """
    cfg = cfg or PrefillConfig()
    if m < 1:
        raise ValueError(f"w4a16_prefill: need at least one token, got {m}")
    tiles, chunks, _ = pw.codes.shape
    np_, kp = tiles * 64, chunks * 16
    bn = _halve_to_divide(cfg.block_n, np_, 64)
    bk = _halve_to_divide(cfg.block_k, kp, 64)
    if np_ % bn or kp % bk:  # pack_w4 pads N to 64 and K to 128: unreachable for its output
        raise ValueError(f"w4a16_prefill: config {cfg.name} does not divide the packed weight ({np_}x{kp})")
    bm = min(cfg.block_m, max(16, 1 << (m - 1).bit_length()))
    m_pad = -(-m // bm) * bm
    return {"bm": bm, "m_pad": m_pad, "bn": bn, "np_": np_, "bk": bk, "kp": kp, "steps": kp // bk,
            "grid": (m_pad // bm, np_ // bn)}


def permute_k(x, kp: int | None = None):
    """Activations ``[M, K]`` -> zero-padded to ``Kp`` columns and permuted within each 16-column chunk:
    ``out[:, 16 c + 4 lc + 2 c8 + e] = x[:, 16 c + 8 c8 + 2 lc + e]`` (the column order of the decoded weight tile).

    Example:
      >>> permute_k(jnp.arange(16.0)[None])[0].astype(int).tolist()
      [0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15]
    """
    m, k = x.shape
    kp = kp or -(-k // 16) * 16
    if kp % 16 or kp < k:
        raise ValueError(f"permute_k: kp must be a multiple of 16 >= K={k}, got {kp}")
    xp = C.pad_rows(x, kp, 1)
    return xp.reshape(m, kp // 16, 2, 4, 2).transpose(0, 1, 3, 2, 4).reshape(m, kp)


def _slot_iotas(shape, r8_axis, g_axis):
    """int32 ``(r8, c8, e)`` of each slot, broadcast over ``shape`` (``g = 2 c8 + e`` along ``g_axis``)."""
    r8 = lax.broadcasted_iota(jnp.int32, shape, r8_axis)
    g = lax.broadcasted_iota(jnp.int32, shape, g_axis)
    return r8, g >> 1, g & 1


def _pick(k, table):
    """``table[k]`` for an int32 array ``k`` of values 0..3 (a select chain: kernels take no constant arrays)."""
    out = jnp.full(k.shape, table[3], jnp.int32)
    for i in (2, 1, 0):
        out = jnp.where(k == i, table[i], out)
    return out


def _code_values(words, fmt):
    """Packed words ``[R, 1, 8, Q, 1]`` -> f32 code values ``[R, 2, 8, Q, 4]`` (axis 1: r8, axis 4: ``2 c8 + e``).

    Integer and f32 ALU operations only (no int-to-float conversion, no subnormal):

    * NVFP4: the magnitude bits ``(e1 e0 m)`` put at f32 bits 24..22 over exponent 126 give
      ``f = (1 + m/2) 2^(e - 1)``, the E2M1 value when ``e >= 1``; ``min(f, 2 f - 1)`` is that value for every
      magnitude (``e = 0``: ``2 f - 1`` = 0 and 0.5, the smaller); the sign bit is moved to bit 31 and xor-ed in.
    * INT4: the two's-complement nibble xor 8 is ``v + 8`` (0..15); over the f32 bits of ``2^23`` it is the float
      ``2^23 + v + 8``, and subtracting ``2^23 + 8`` (exact) leaves ``v``.
    """
    r8, c8, e = _slot_iotas((1, 2, 1, 1, 4), 1, 4)
    k = 2 * c8 + r8  # the decode GEMM's register index
    if fmt == "nvfp4":  # magnitude (e1 e0 m) at 6 - a + 16 e, sign at 15 - b + 16 e (layout.NVFP4_BF16_SHIFTS)
        mag_at = _pick(k, [6 - a for a, _ in NVFP4_BF16_SHIFTS]) + 16 * e
        sign_to_31 = 31 - (_pick(k, [15 - b for _, b in NVFP4_BF16_SHIFTS]) + 16 * e)  # >= 0
        mag = (words >> mag_at.astype(jnp.uint32)) & 7
        f = C.bits_f32((mag << 22) + (126 << 23))
        v = jnp.minimum(f, 2.0 * f - 1.0)
        sign = (words << sign_to_31.astype(jnp.uint32)) & jnp.uint32(0x80000000)
        return C.bits_f32(lax.bitcast_convert_type(v, jnp.uint32) ^ sign)
    offset = (words ^ jnp.uint32(0x88888888)) >> (4 * (k + 4 * e)).astype(jnp.uint32)  # nibble 2 c8 + r8 + 4 e
    return C.bits_f32((offset & 15) | jnp.uint32(0x4B000000)) - jnp.float32(2.0**23 + 8)


def _scale_values(s, fmt):
    """Packed scales ``[R, 1, 8, G]`` -> f32 multipliers ``[R, 2, 8, G, 1]`` (axis 1: r8, the row half)."""
    r8 = lax.broadcasted_iota(jnp.int32, (1, 2, 1, 1), 1).astype(jnp.uint32)
    s = s.astype(jnp.uint32)
    if fmt == "nvfp4":  # bf16 (byte << 4) + (237 << 7) is scale * 2^119 (layout.bf16_scale_bytes)
        byte = (s >> (8 * r8)) & 0xFF
        v = C.bits_f32(((byte << 4) + (BF16_SCALE_BIAS << 7)) << 16) * jnp.float32(2.0**-119)
    else:  # bf16 amax / 7 of row g (low half) and row g + 8 (high half)
        v = C.bits_f32(((s >> (16 * r8)) & 0xFFFF) << 16)
    return v[..., None]


# One register slot (two bf16 weights, elements e = 0 / 1 in the low / high half) per instance: $1 the codes word,
# $2 the row half's scale as bf16x2 {s, s}; NVFP4: $3 / $4 left / right shift moving the magnitude bits (e1 e0 m) to
# bits 8..6 of each half, $5 the left shift moving the sign to bit 15 (layout.NVFP4_BF16_SHIFTS), then
# code * 2^-126 (a bf16 pattern) * s * 2^119 = code * s * 2^-7, exact (ptx.nvfp4_bf16_decode_ptx with the shifts
# as operands); INT4: $3 the shift 4 k, then (c & 15) ^ 136 - 136 = the signed code, times s, rounded to bf16
# (ptx.int4_decode_ptx).
NVFP4_PAIR_PTX = ("{ .reg .b32 t, u;\n shl.b32 t, $1, $3;\n shr.b32 t, t, $4;\n shl.b32 u, $1, $5;\n"
                  " and.b32 u, u, 0x80008000;\n lop3.b32 t, t, 0x01C001C0, u, 0xEA;\n mul.rn.bf16x2 $0, t, $2; }")
INT4_PAIR_PTX = ("{ .reg .b32 t, v, c;\n shr.b32 t, $1, $3;\n lop3.b32 v, t, 0x000F000F, 0x43084308, 0x6A;\n"
                 " mov.b32 c, 0x43084308;\n sub.rn.bf16x2 v, v, c;\n mul.rn.bf16x2 $0, v, $2; }")


def _decode_ptx(words, sd, fmt):
    """Packed words ``[R, 1, 8, Q, 1]`` and bf16x2 row-half scales ``[R, 2, 8, Q, 1]`` -> decoded weights as f32
    ``[R, 2, 8, Q, 2 (c8), 2 (e)]`` (NVFP4: ``code * s * 2^-7``; INT4: ``bf16(code * s)``)."""
    from jax.experimental.pallas import triton as pltr

    shape = (words.shape[0], 2, 8, words.shape[3], 2)
    r8 = lax.broadcasted_iota(jnp.int32, shape, 1)
    c8 = lax.broadcasted_iota(jnp.int32, shape, 4)
    k = 2 * c8 + r8
    u32 = functools.partial(jnp.asarray, dtype=jnp.uint32)
    w, sd = jnp.broadcast_to(words, shape), jnp.broadcast_to(sd, shape)
    if fmt == "nvfp4":
        a = _pick(k, [a for a, _ in NVFP4_BF16_SHIFTS])
        b = _pick(k, [b for _, b in NVFP4_BF16_SHIFTS])
        args = [w, sd, u32(jnp.maximum(a, 0)), u32(jnp.maximum(-a, 0)), u32(b)]
        asm, cons = NVFP4_PAIR_PTX, "=r,r,r,r,r,r"
    else:
        args, asm, cons = [w, sd, u32(4 * k)], INT4_PAIR_PTX, "=r,r,r,r"
    # the result as int32: Triton's op takes signless integers only (a uint32 result type fails its verifier)
    [pair] = pltr.elementwise_inline_asm(asm, args=args, constraints=cons, pack=1,
                                         result_shape_dtypes=[jax.ShapeDtypeStruct(shape, jnp.int32)])
    pair = lax.bitcast_convert_type(pair, jnp.uint32)
    lo = C.bits_f32(pair << 16)  # a bf16 pattern in the high half of a f32 is that value
    hi = C.bits_f32(pair & jnp.uint32(0xFFFF0000))
    return jnp.concatenate([lo[..., None], hi[..., None]], axis=-1)


def _scale_pairs(s, fmt, cols):
    """Packed scales ``[R, 1, 8, G]`` -> bf16x2 ``{s, s}`` of each row half ``[R, 2, 8, G * cols, 1]`` (uint32; NVFP4:
    ``s * 2^119``), repeated over the ``cols`` codes words each scale covers."""
    r8 = lax.broadcasted_iota(jnp.int32, (1, 2, 1, 1), 1).astype(jnp.uint32)
    s = s.astype(jnp.uint32)
    if fmt == "nvfp4":
        half = (((s >> (8 * r8)) & 0xFF) << 4) + (BF16_SCALE_BIAS << 7)
    else:
        half = (s >> (16 * r8)) & 0xFFFF
    pair = half | (half << 16)
    r, _, _, g = pair.shape
    return jnp.broadcast_to(pair[..., None], (r, 2, 8, g, cols)).reshape(r, 2, 8, g * cols, 1)


def _kernel(x_ref, c_ref, s_ref, f_ref, o_ref, *, fmt: str, bk: int, steps: int, swap_ab: bool, x_in_kernel: bool,
            ptx: bool):
    """One ``[bm, bn]`` output tile: ``sum_k x[bm, k] W[bn, k]`` over all of K, times the global factor."""
    tb = c_ref.shape[0]  # 64-row weight tiles in the block
    bm, bn = o_ref.shape
    cb = bk // 16  # 16-column chunks per step
    gw = min(bk, 128) if fmt == "int4" else 16  # columns per scale
    gb = bk // gw  # scales per row and step

    def step(i, acc):
        k0 = pl.multiple_of(i * bk, bk)
        x = x_ref[:, pl.ds(k0, bk)]
        if x_in_kernel:  # permute_k on the tile
            x = x.reshape(bm, cb, 2, 4, 2).transpose(0, 1, 3, 2, 4).reshape(bm, bk)
        words = c_ref[:, pl.ds(pl.multiple_of(i * cb, cb), cb), :, :]  # [tb, cb, 32 (w, lr), 4 (lc)]
        words = words.transpose(0, 2, 1, 3).reshape(tb * 4, 1, 8, cb * 4, 1)  # [(t, w), ., lr, (c, lc), .]
        if fmt == "int4":
            s = s_ref[:, pl.ds((i * bk) // 128, gb), :]  # [tb, gb, 32]
        else:
            s = s_ref[:, pl.ds(pl.multiple_of(i * cb, cb), cb), :]
        s = s.transpose(0, 2, 1).reshape(tb * 4, 1, 8, gb)
        if ptx:  # [(t, w), r8, lr, (c, lc), c8, e], already scaled
            w = _decode_ptx(words, _scale_pairs(s, fmt, gw // 4), fmt).astype(jnp.bfloat16).reshape(bn, bk)
        else:
            vals = _code_values(words, fmt)  # [(t, w), r8, lr, (c, lc), (c8, e)]
            sc = _scale_values(s, fmt)  # [(t, w), r8, lr, g, 1]
            w = (vals.reshape(tb * 4, 2, 8, gb, gw) * sc).astype(jnp.bfloat16).reshape(bn, bk)  # rows in order
        if swap_ab:
            return acc + lax.dot_general(w, x, _NT, preferred_element_type=jnp.float32)
        return acc + lax.dot_general(x, w, _NT, preferred_element_type=jnp.float32)

    acc = lax.fori_loop(0, steps, step, jnp.zeros((bn, bm) if swap_ab else (bm, bn), jnp.float32))
    if swap_ab:
        acc = acc.T
    o_ref[...] = (acc * f_ref[0]).astype(o_ref.dtype)


def _factor(pw: PackedW4, ptx: bool):
    """The f32 multiplier of the accumulator: ``pw.factor`` (NVFP4 ``gs * 2^7``, INT4 1) for the PTX decode
    (weights ``code * s * 2^-7``), NVFP4's global scale ``gs`` for the ALU decode (weights ``code * s``)."""
    return pw.factor * jnp.float32(2.0**-7) if pw.fmt == "nvfp4" and not ptx else pw.factor


def w4a16_prefill_matmul(x, pw: PackedW4, *, cfg: PrefillConfig | None = None, out_dtype=jnp.bfloat16,
                         interpret: bool | None = None):
    """``y [..., N] = x [..., K] @ dequant(W).T`` on the prefill GEMM (any token count; best at >= 64).

    ``x`` is used as bf16; ``pw`` is :func:`~jq_kernels.w4a16.pack_w4`'s output with ``dtype="bf16"`` (its default);
    ``cfg`` None: :class:`PrefillConfig` ``()``; ``interpret`` None: compiled on a GPU, Pallas interpret mode
    elsewhere.
    """
    if not isinstance(pw, PackedW4):
        raise TypeError(f"w4a16_prefill_matmul takes a PackedW4 (jq_kernels.w4a16.pack_w4), got {type(pw).__name__}")
    if pw.dtype != "bf16":
        raise ValueError(f"w4a16_prefill_matmul reads the bf16 packing (pack_w4(..., dtype='bf16'), the default); "
                         f"this {pw.fmt} weight is packed for dtype={pw.dtype!r}")
    if x.ndim < 1 or x.shape[-1] != pw.k:
        raise ValueError(f"w4a16_prefill_matmul: x has K={x.shape[-1] if x.ndim else None}, the packed weight "
                         f"[N, K] = [{pw.n}, {pw.k}]")
    cfg = cfg or PrefillConfig()
    lead = x.shape[:-1]
    x2 = x.reshape(-1, pw.k).astype(jnp.bfloat16)
    m = x2.shape[0]
    p = prefill_plan(m, pw, cfg)
    bm, bn, bk, kp = p["bm"], p["bn"], p["bk"], p["kp"]
    x_in_kernel = cfg.x_permute == "kernel"
    xp = C.pad_rows(C.pad_rows(x2, kp, 1), p["m_pad"], 0)
    if not x_in_kernel:
        xp = permute_k(xp, kp)
    tiles, chunks, _ = pw.codes.shape
    codes = pw.codes.reshape(tiles, chunks, 32, 4)  # free: the 128 threads as (w, lr) x lc
    tb = bn // 64
    ptx = cfg.decode == "ptx"
    interpret = C.resolve_interpret(interpret)
    if ptx and interpret:
        raise ValueError(f"w4a16_prefill_matmul: config {cfg.name} decodes with inline PTX, which runs on a GPU only "
                         "(interpret mode: decode='alu')")
    kern = functools.partial(_kernel, fmt=pw.fmt, bk=bk, steps=p["steps"], swap_ab=cfg.swap_ab,
                             x_in_kernel=x_in_kernel, ptx=ptx)
    factor = jnp.zeros((4,), jnp.float32).at[0].set(jnp.reshape(_factor(pw, ptx), ()).astype(jnp.float32))
    y = pl.pallas_call(
        kern, grid=p["grid"],  # program_id(0) (the M tile) varies fastest: programs in flight share weight tiles
        in_specs=[pl.BlockSpec((bm, kp), lambda i, j: (i, 0)),
                  pl.BlockSpec((tb, chunks, 32, 4), lambda i, j: (j, 0, 0, 0)),
                  pl.BlockSpec((tb,) + pw.scales.shape[1:], lambda i, j: (j, 0, 0)),
                  pl.BlockSpec((4,), lambda i, j: (0,))],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct((p["m_pad"], p["np_"]), out_dtype),
        interpret=interpret, compiler_params=C.triton_params(cfg.num_warps, cfg.num_stages),
        name=f"jq_w4a16_prefill_{pw.fmt}")(xp, codes, pw.scales, factor)
    if p["m_pad"] != m or p["np_"] != pw.n:
        y = y[:m, : pw.n]
    return y.reshape(lead + (pw.n,))
