"""MX (OCP microscaling) quantize kernels: MXFP8 (E4M3), MXFP4 (E2M1) and MXINT8, 32-element blocks, E8M0 scales.

Numeric contract: :func:`jq.numerics.mx_quantize` and the storage of :func:`jq.qtensor.quantize` (MXFP8 as
``float8_e4m3fn``, MXFP4 packed nibbles with the sign taken from the rounded value, MXINT8 as int8, scales as
uint8 biased exponents ``k + 127``), bit for bit. ``k = clamp(ceil(log2(amax_b / dmax)), -127, 127)`` comes from
the float bits of the correctly rounded quotient (no ``log2``), elements are scaled by ``2^-k`` with the
reference's two exact power-of-two multiplications and rounded with the power-of-two addition trick.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels import _common as C

__all__ = ["mx_quantize", "MXConfig"]

BLOCK = 32
_DMAX = {"mxfp8": 448.0, "mxfp4": 6.0, "mxint8": 127.0}


class MXConfig:
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


def _kernel(x_ref, o_ref, s_ref, *, fmt, src, mode):
    if src == "bf16pair":
        w = x_ref[...]
        lo = lax.bitcast_convert_type(w << 16, jnp.float32)
        hi = lax.bitcast_convert_type(w & jnp.uint32(0xFFFF0000), jnp.float32)
    else:
        lo = x_ref[:, :, 0].astype(jnp.float32)
        hi = x_ref[:, :, 1].astype(jnp.float32)
    amax = jnp.max(jnp.maximum(jnp.abs(lo), jnp.abs(hi)), axis=1)
    k = _exponent(amax, _DMAX[fmt], mode)
    nk = jnp.broadcast_to((-k)[:, None], lo.shape)
    c_lo = _code(_round_elem(_ldexp(lo, nk), fmt), fmt)
    c_hi = _code(_round_elem(_ldexp(hi, nk), fmt), fmt)
    if fmt == "mxfp4":
        o_ref[...] = (c_lo | (c_hi << 4)).astype(jnp.uint8)
    else:
        o_ref[...] = (c_lo | (c_hi << 8)).astype(jnp.uint16)
    s_ref[...] = (k + 127).astype(jnp.uint8)


def mx_quantize(x, fmt: str = "mxfp8", *, interpret: bool | None = None, div_mode: str | None = None, cfg=None):
    """``(data, e8m0 scales)`` as :func:`jq.qtensor.quantize` stores them for ``fmt`` in mxfp8/mxfp4/mxint8.

    data: MXFP8 ``float8_e4m3fn [..., Kp]``, MXINT8 ``int8 [..., Kp]``, MXFP4 packed ``uint8 [..., Kp/2]``
    (``Kp`` = K rounded up to 32); scales: ``uint8 [..., Kp/32]`` (biased exponents).
    """
    if fmt not in _DMAX:
        raise ValueError(f"fmt must be one of {sorted(_DMAX)}, got {fmt!r}")
    cfg = cfg or MXConfig
    interpret = C.resolve_interpret(interpret)
    mode = div_mode or ("ieee" if interpret else "asm")
    k = x.shape[-1]
    kp = -(-k // BLOCK) * BLOCK
    if kp != k:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, kp - k)])
    lead = x.shape[:-1]
    r = x.size // BLOCK
    src = "bf16pair" if x.dtype == jnp.bfloat16 else "strided"
    if src == "bf16pair":
        xv = lax.bitcast_convert_type(x.reshape(r, 16, 2), jnp.uint32)
        xspec_shape, imap = (16,), (lambda i: (i, 0))
    else:
        xv = x.reshape(r, 16, 2)
        xspec_shape, imap = (16, 2), (lambda i: (i, 0, 0))
    br, rp = C.pick_block(r, cfg.block_rows)
    xv = C.pad_rows(xv, rp)
    odt = jnp.uint8 if fmt == "mxfp4" else jnp.uint16
    data, scales = pl.pallas_call(
        functools.partial(_kernel, fmt=fmt, src=src, mode=mode), grid=(rp // br,),
        in_specs=[pl.BlockSpec((br,) + xspec_shape, imap)],
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
