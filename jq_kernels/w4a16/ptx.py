"""Inline-PTX generators of the decode GEMM's in-register weight decode: one 32-bit register (two f16/bf16
weights) of a thread's wgmma A fragment from its codes word and scales.

Each generator returns the PTX text of one ``llvm.inline_asm`` (``$0`` the result register, ``$1`` the codes
word, ``$2`` the scale operand). :mod:`jq_kernels.w4a16.emulate` reproduces every instruction in numpy, bit for bit.
"""

from __future__ import annotations

from jq_kernels.w4a16.layout import BF16_SCALE_BIAS, NVFP4_BF16_SHIFTS

__all__ = ["nvfp4_bf16_decode_ptx", "bf16_scale_pair_ptx", "nvfp4_f16_decode_ptx", "int4_decode_ptx",
           "BF16_SCALE_PAIR_BIAS"]

# the bf16 exponent bias of a scale byte, in both 16-bit halves: (byte << 4) + (237 << 7) per half
BF16_SCALE_PAIR_BIAS = ((BF16_SCALE_BIAS << 7) << 16) | (BF16_SCALE_BIAS << 7)


def nvfp4_bf16_decode_ptx(k: int) -> str:
    """PTX for bf16x2 register ``k`` of an NVFP4 chunk: codes word ``$1``, scale pair ``$2`` (bf16 of rows g | g+8).

    Computes ``w = code * 2^-126 (as bf16) * (s * 2^119) = code * s * 2^-7`` (exact: at most 6 significant bits,
    normal range). The magnitude and sign bits move into place with the shifts of ``NVFP4_BF16_SHIFTS[k]``; the
    scale of row g (k even) or g+8 (k odd) is broadcast through the half-register operand.

    Example:
      >>> print(nvfp4_bf16_decode_ptx(0).splitlines()[1])
       mov.b32 t, $1;
    """
    a, b = NVFP4_BF16_SHIFTS[k]

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


def bf16_scale_pair_ptx() -> str:
    """PTX: scale-byte pair ``$1`` (row g | row g+8 << 8) -> bf16x2 ``{s_g, s_g+8}`` (``(byte << 4) + 237 << 7``
    per half, see :func:`jq_kernels.w4a16.layout.bf16_scale_bytes`): one PRMT and one IMAD."""
    return ("{ .reg .b32 q;\n"
            " prmt.b32 q, $1, 0, 0x4140;\n"
            f" mad.lo.u32 $0, q, 16, {hex(BF16_SCALE_PAIR_BIAS)}; }}")


def nvfp4_f16_decode_ptx(k: int) -> str:
    """PTX for f16x2 register ``k`` of an NVFP4 chunk: codes word ``$1`` (plain nibbles), E4M3 scale pair ``$2``
    (low 16 bits). Computes ``w = code * 2^-14 (as f16) * e4m3_to_f16(s)``, exact in f16."""
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


def int4_decode_ptx(k: int, bf16: bool = False) -> str:
    """PTX for f16x2 (bf16x2 if ``bf16``) register ``k`` of an INT4 chunk: codes word ``$1``, group scales ``$2``.

    ``(c & 15) ^ M`` read as a half is ``B + c - 8`` (M = f16 1032 / bf16 136 with the code's bias folded in);
    subtracting ``B`` gives the signed code, times the group scale of the register's row:
    ``w = RN(RN(half(c ^ M) - B) * s)``.
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
