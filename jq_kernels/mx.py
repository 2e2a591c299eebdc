"""MX Pallas-Triton kernels: quantize, dequantize and fused fake-quant for MXFP8 (E4M3), MXFP4 (E2M1) and MXINT8,
32-element blocks along the last axis, E8M0 scales.

Numeric contract: :func:`jq.numerics.mx_quantize` / :func:`jq.numerics.mx_fake_quant` and the storage of
:func:`jq.qtensor.quantize` (MXFP8 as ``float8_e4m3fn``, MXFP4 packed nibbles with the sign taken from the rounded
value, MXINT8 as int8, scales as uint8 biased exponents ``k + 127``), bit for bit::

    k = clamp(ceil(log2(amax_b / dmax)), -127, 127)      (dmax = 448, 6, 127)
    q = elem(x * 2^-k),   y = q * 2^k                     (elem: round to nearest even on the grid, saturate)

``k`` comes from the float bits of the correctly rounded quotient (no ``log2``); ``2^+-k`` is applied with the
reference's two exact multiplications by normal powers of two; elements round with the power-of-two addition trick.
Layout: each 32-element block is one kernel row of 16 element pairs (bf16 pairs read as one uint32 word).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jq_kernels import _common as C

__all__ = ["mx_quantize", "mx_fake_quant", "mx_dequantize", "MXConfig", "MX_FORMATS"]

BLOCK = 32
_DMAX = {"mxfp8": 448.0, "mxfp4": 6.0, "mxint8": 127.0}
MX_FORMATS = tuple(sorted(_DMAX))


class MXConfig:
    """Tile/launch parameters: ``block_rows`` 32-element blocks per program."""

    block_rows = 256
    num_warps = 4
    num_stages = 2


def _pow2(k):
    return C.bits_f32((k + 127) << 23)


def _ldexp(x, k):
    """``x * 2^k`` exactly as :func:`jq.numerics.ldexp` (two multiplications by normal powers of two)."""
    k1 = k >> 1  # floor division by 2 (arithmetic shift), as ``k // 2``
    return (x * _pow2(k1)) * _pow2(k - k1)


def _exponent(amax, dmax, mode):
    if mode == "ieee":
        r = amax / dmax  # the reference's own expression (same XLA rewrite rules in interpret mode)
    else:
        r = C.div_rn(amax, jnp.full(amax.shape, dmax, jnp.float32), "asm")
    b = C.f32_bits(r)
    e = (b >> 23) & 0xFF
    mant = b & 0x7FFFFF
    k = e - 127 + (mant != 0).astype(jnp.int32)
    k = jnp.where(e == 0, jnp.where(mant > (1 << 22), -126, -127), k)  # zero and subnormal quotients
    return jnp.clip(k, -127, 127)


def _round_elem(v, fmt):
    if fmt == "mxint8":  # round half to even onto the integers (|v| <= 127 after the clamp)
        v = jnp.clip(v, -127.0, 127.0)
        q = C.magic_round(jnp.abs(v), 150, 23)
    elif fmt == "mxfp8":
        v = jnp.clip(v, -448.0, 448.0)
        q = C.e4m3_round(jnp.abs(v))
    else:
        v = jnp.clip(v, -6.0, 6.0)
        q = C.e2m1_round(jnp.abs(v))
    sign = lax.bitcast_convert_type(v, jnp.uint32) & jnp.uint32(0x80000000)
    return lax.bitcast_convert_type(lax.bitcast_convert_type(q, jnp.uint32) | sign, jnp.float32)


def _code(q, fmt):
    """Storage code (int32, one byte's worth for fp8/int8, one nibble for fp4) of a rounded element."""
    if fmt == "mxint8":
        mag = jnp.abs(q).astype(jnp.int32)
        return jnp.where(q < 0, (256 - mag) & 0xFF, mag)
    a = jnp.abs(q)
    if fmt == "mxfp8":
        sign = (lax.bitcast_convert_type(q, jnp.uint32) >> 24).astype(jnp.int32) & 0x80
        b = C.f32_bits(a)
        code = jnp.where(a >= 2.0**-6, (b >> 20) - (120 << 3), (a * 512.0).astype(jnp.int32))
        return code | sign
    return C.e2m1_index(a) | ((q < 0).astype(jnp.int32) << 3)


def _value(code, fmt):
    """float32 value of storage codes (int32: a byte for fp8/int8, a nibble for fp4)."""
    if fmt == "mxint8":
        return jnp.where(code >= 128, code - 256, code).astype(jnp.float32)
    if fmt == "mxfp8":
        nan = lax.bitcast_convert_type(jnp.uint32(0x7FC00000) | ((code & 0x80).astype(jnp.uint32) << 24),
                                       jnp.float32)  # E4M3FN NaN codes: the quiet NaN with the code's sign
        return jnp.where((code & 0x7F) == 0x7F, nan, C.e4m3_value_from_bits(code))
    return C.e2m1_value(code)


def _load_pair(x_ref, src):
    """(even, odd) float32 elements of the current blocks ``[rows, 16]``."""
    if src == "bf16pair":
        w = x_ref[...]
        return (lax.bitcast_convert_type(w << 16, jnp.float32),
                lax.bitcast_convert_type(w & jnp.uint32(0xFFFF0000), jnp.float32))
    return x_ref[:, :, 0].astype(jnp.float32), x_ref[:, :, 1].astype(jnp.float32)


def _store_pair(o_ref, lo, hi, src, dtype):
    if src == "bf16pair":
        o_ref[...] = C.bf16_round_bits(lo) | (C.bf16_round_bits(hi) << 16)
    else:
        o_ref[:, :, 0] = lo.astype(dtype)
        o_ref[:, :, 1] = hi.astype(dtype)


def _block_quant(x_ref, fmt, src, mode):
    """Per block: the rounded elements (lo, hi) and the E8M0 exponent ``k`` ``[rows]``."""
    lo, hi = _load_pair(x_ref, src)
    amax = jnp.max(jnp.maximum(jnp.abs(lo), jnp.abs(hi)), axis=1)
    k = _exponent(amax, _DMAX[fmt], mode)
    nk = jnp.broadcast_to((-k)[:, None], lo.shape)
    return _round_elem(_ldexp(lo, nk), fmt), _round_elem(_ldexp(hi, nk), fmt), k


def _quant_kernel(x_ref, o_ref, s_ref, *, fmt, src, mode):
    q_lo, q_hi, k = _block_quant(x_ref, fmt, src, mode)
    c_lo, c_hi = _code(q_lo, fmt), _code(q_hi, fmt)
    if fmt == "mxfp4":
        o_ref[...] = (c_lo | (c_hi << 4)).astype(jnp.uint8)
    else:
        o_ref[...] = (c_lo | (c_hi << 8)).astype(jnp.uint16)
    s_ref[...] = (k + 127).astype(jnp.uint8)


def _fake_kernel(x_ref, o_ref, *, fmt, src, mode, dtype):
    q_lo, q_hi, k = _block_quant(x_ref, fmt, src, mode)
    kk = jnp.broadcast_to(k[:, None], q_lo.shape)
    _store_pair(o_ref, _ldexp(q_lo, kk), _ldexp(q_hi, kk), src, dtype)


def _dequant_kernel(d_ref, s_ref, o_ref, *, fmt, src, dtype):
    w = d_ref[...].astype(jnp.int32)
    if fmt == "mxfp4":
        c_lo, c_hi = w & 0xF, w >> 4
    else:
        c_lo, c_hi = w & 0xFF, w >> 8
    k = jnp.broadcast_to((s_ref[...].astype(jnp.int32) - 127)[:, None], w.shape)
    _store_pair(o_ref, _ldexp(_value(c_lo, fmt), k), _ldexp(_value(c_hi, fmt), k), src, dtype)


# ---------------------------------------------------------------------------------------------------
# wrappers


def _check_fmt(fmt, where):
    if fmt not in _DMAX:
        raise ValueError(f"{where}: fmt must be one of {MX_FORMATS}, got {fmt!r}")


def _src(dtype):
    return "bf16pair" if jnp.dtype(dtype) == jnp.bfloat16 else "strided"


def _pair_view(x2, src):
    """``[r, 32]`` -> bf16 words ``[r, 16]`` or element pairs ``[r, 16, 2]``, its block shape and index map."""
    r = x2.shape[0]
    if src == "bf16pair":
        return lax.bitcast_convert_type(x2.reshape(r, 16, 2), jnp.uint32), (16,), (lambda i: (i, 0))
    return x2.reshape(r, 16, 2), (16, 2), (lambda i: (i, 0, 0))


def _blocks(x):
    """Zero-pad the last axis to 32 and view ``x`` as ``[r, 32]`` blocks: (blocks, lead shape, Kp)."""
    k = x.shape[-1]
    kp = -(-k // BLOCK) * BLOCK
    if kp != k:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, kp - k)])
    return x.reshape(-1, BLOCK), x.shape[:-1], kp


def _setup(fmt, where, interpret, div_mode, cfg):
    _check_fmt(fmt, where)
    interpret = C.resolve_interpret(interpret)
    return interpret, div_mode or ("ieee" if interpret else "asm"), cfg or MXConfig


def mx_quantize(x, fmt: str = "mxfp8", *, interpret: bool | None = None, div_mode: str | None = None, cfg=None):
    """``(data, e8m0 scales)`` as :func:`jq.qtensor.quantize` stores them for ``fmt`` in mxfp8/mxfp4/mxint8.

    data: MXFP8 ``float8_e4m3fn [..., Kp]``, MXINT8 ``int8 [..., Kp]``, MXFP4 packed ``uint8 [..., Kp/2]``
    (``Kp`` = K rounded up to 32, zero-padded); scales: ``uint8 [..., Kp/32]`` (biased exponents ``k + 127``).

    Example:
      >>> data, scales = mx_quantize(jnp.full((2, 32), 3.0), "mxfp4", interpret=True)
      >>> data.shape, int(scales[0, 0]) - 127  # k = ceil(log2(3 / 6)): 3 is stored as 6 * 2^-1
      ((2, 16), -1)
    """
    interpret, mode, cfg = _setup(fmt, "mx_quantize", interpret, div_mode, cfg)
    x2, lead, kp = _blocks(x)
    r = x2.shape[0]
    xv, xblock, imap = _pair_view(x2, _src(x.dtype))
    br, rp = C.pick_block(r, cfg.block_rows)
    xv = C.pad_rows(xv, rp)
    odt = jnp.uint8 if fmt == "mxfp4" else jnp.uint16
    data, scales = pl.pallas_call(
        functools.partial(_quant_kernel, fmt=fmt, src=_src(x.dtype), mode=mode), grid=(rp // br,),
        in_specs=[pl.BlockSpec((br,) + xblock, imap)],
        out_specs=[pl.BlockSpec((br, 16), lambda i: (i, 0)), pl.BlockSpec((br,), lambda i: (i,))],
        out_shape=[jax.ShapeDtypeStruct((rp, 16), odt), jax.ShapeDtypeStruct((rp,), jnp.uint8)],
        interpret=interpret, compiler_params=C.triton_params(cfg.num_warps, cfg.num_stages),
        name=f"jq_{fmt}_quantize")(xv)
    data, scales = data[:r], scales[:r]
    scales = scales.reshape(lead + (kp // BLOCK,))
    if fmt == "mxfp4":
        return data.reshape(lead + (kp // 2,)), scales
    b = lax.bitcast_convert_type(data, jnp.uint8).reshape(lead + (kp,))
    return lax.bitcast_convert_type(b, jnp.float8_e4m3fn if fmt == "mxfp8" else jnp.int8), scales


def mx_fake_quant(x, fmt: str = "mxfp8", *, interpret: bool | None = None, div_mode: str | None = None, cfg=None):
    """Quantize-dequantize in one pass: ``y = elem(x * 2^-k) * 2^k`` per 32-element block along the last axis, in
    ``x.dtype`` (bf16, f16 or f32); equals :func:`jq.numerics.mx_fake_quant` bit for bit.

    Example:
      >>> y = mx_fake_quant(jnp.array([[0.3, -1.0] + [0.0] * 30]), "mxfp4", interpret=True)
      >>> y[0, :2].tolist()  # k = ceil(log2(1 / 6)) = -2: the grid is {0, 0.125, 0.25, 0.375, ...}
      [0.25, -1.0]
    """
    interpret, mode, cfg = _setup(fmt, "mx_fake_quant", interpret, div_mode, cfg)
    x2, lead, kp = _blocks(x)
    r = x2.shape[0]
    src = _src(x.dtype)
    xv, xblock, imap = _pair_view(x2, src)
    br, rp = C.pick_block(r, cfg.block_rows)
    y = pl.pallas_call(
        functools.partial(_fake_kernel, fmt=fmt, src=src, mode=mode, dtype=x.dtype), grid=(rp // br,),
        in_specs=[pl.BlockSpec((br,) + xblock, imap)], out_specs=pl.BlockSpec((br,) + xblock, imap),
        out_shape=jax.ShapeDtypeStruct((rp,) + xblock, xv.dtype),
        interpret=interpret, compiler_params=C.triton_params(cfg.num_warps, cfg.num_stages),
        name=f"jq_{fmt}_fake_quant")(C.pad_rows(xv, rp))[:r]
    y = C.unpack_bf16_words(y) if src == "bf16pair" else y
    return y.reshape(lead + (kp,))[..., : x.shape[-1]]


def mx_dequantize(data, scales, shape, fmt: str = "mxfp8", *, dtype=jnp.bfloat16, interpret: bool | None = None,
                  cfg=None):
    """Dequantize MX storage (the layout :func:`mx_quantize` returns) to ``shape`` in ``dtype``: ``q * 2^(s - 127)``.

    ``data``: MXFP8 ``float8_e4m3fn`` / MXINT8 ``int8`` ``[..., Kp]`` (or their uint8 bits), MXFP4 packed uint8
    ``[..., Kp/2]``; ``scales``: uint8 ``[..., Kp/32]``. Equals :func:`jq.qtensor.dequantize` bit for bit.

    Example:
      >>> x = jnp.linspace(-1.0, 1.0, 64).reshape(2, 32)
      >>> data, scales = mx_quantize(x, "mxint8", interpret=True)
      >>> y = mx_dequantize(data, scales, x.shape, "mxint8", dtype=jnp.float32, interpret=True)
      >>> float(jnp.max(jnp.abs(y - x))) <= 2.0**-7
      True
    """
    _check_fmt(fmt, "mx_dequantize")
    cfg = cfg or MXConfig
    interpret = C.resolve_interpret(interpret)
    dtype = jnp.dtype(dtype)
    kp = data.shape[-1] * (2 if fmt == "mxfp4" else 1)
    if kp % BLOCK or scales.shape[-1] * BLOCK != kp or tuple(shape[:-1]) != tuple(data.shape[:-1]) \
            or not kp - BLOCK < shape[-1] <= kp:
        raise ValueError(f"mx_dequantize: {fmt} data {tuple(data.shape)} / scales {tuple(scales.shape)} do not "
                         f"hold a tensor of shape {tuple(shape)} in 32-element blocks")
    r = scales.size
    bytes_ = lax.bitcast_convert_type(data, jnp.uint8) if data.dtype != jnp.uint8 else data
    codes = bytes_.reshape(r, 16) if fmt == "mxfp4" else \
        lax.bitcast_convert_type(bytes_.reshape(r, 16, 2), jnp.uint16)  # low byte = even element
    src = _src(dtype)
    oblock, omap = ((16,), (lambda i: (i, 0))) if src == "bf16pair" else ((16, 2), (lambda i: (i, 0, 0)))
    br, rp = C.pick_block(r, cfg.block_rows)
    y = pl.pallas_call(
        functools.partial(_dequant_kernel, fmt=fmt, src=src, dtype=dtype), grid=(rp // br,),
        in_specs=[pl.BlockSpec((br, 16), lambda i: (i, 0)), pl.BlockSpec((br,), lambda i: (i,))],
        out_specs=pl.BlockSpec((br,) + oblock, omap),
        out_shape=jax.ShapeDtypeStruct((rp,) + oblock, jnp.uint32 if src == "bf16pair" else dtype),
        interpret=interpret, compiler_params=C.triton_params(cfg.num_warps, cfg.num_stages),
        name=f"jq_{fmt}_dequantize")(C.pad_rows(codes, rp), C.pad_rows(scales.reshape(r), rp))[:r]
    y = C.unpack_bf16_words(y) if src == "bf16pair" else y
    return y.reshape(tuple(shape[:-1]) + (kp,))[..., : shape[-1]]
