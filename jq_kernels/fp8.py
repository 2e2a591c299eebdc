"""FP8 (E4M3FN / E5M2) Pallas-Triton kernels: quantize, dequantize and fused fake-quant, per-tensor or per-row scales.

Numeric contract: :func:`jq.numerics.fp8_quantize` / :func:`fp8_fake_quant` and :func:`jq.qtensor.quantize`
(``float8`` values), bit for bit: ``s = max * (1/amax)`` and ``1/s`` are computed outside the kernel with the
reference's own functions; inside, ``q = fp8(clamp(x * s, +-max))`` rounds to nearest even either with the
power-of-two addition trick and bit encoding (``cast=False``, exact on every backend) or with the hardware
conversion ``cvt.rn.satfinite`` (``cast=True``, GPU only), and ``y = q * (1/s)``.

Per-row scales are one amax per leading row of the 2D view ``[rows, K]``: ModelOpt's ``axis=0`` on a canonical
``[out, in]`` weight, or per-token scaling of an activation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jq import numerics as nx
from jq_kernels import _common as C

__all__ = ["fp8_quantize", "fp8_dequantize", "fp8_fake_quant", "FP8Config", "fp8_scales"]

_FMT = {  # name: (max, biased exponent of the smallest normal, mantissa bits, jnp dtype)
    "e4m3": (448.0, 127 - 6, 3, jnp.float8_e4m3fn),
    "e5m2": (57344.0, 127 - 14, 2, jnp.float8_e5m2),
}


class FP8Config:
    block_m = 32
    block_k = 512
    num_warps = 4
    num_stages = 2


def _encode(q, fmt):
    """Unsigned FP8 bit pattern (int32) of non-negative ``q`` on the format's grid."""
    _, emin, mb, _ = _FMT[fmt]
    b = C.f32_bits(q)
    # E4M3: bias 7, E5M2: bias 15; normal code = ((E - 127 + bias) << mb) | top mantissa bits
    bias = 7 if fmt == "e4m3" else 15
    normal = (b >> (23 - mb)) - ((127 - bias) << mb)
    min_normal = 2.0 ** (emin - 127)
    sub = (q * (2.0 ** (-(emin - 127) + mb))).astype(jnp.int32)  # subnormal mantissa
    return jnp.where(q >= min_normal, normal, sub)


def _decode(code, fmt):
    """float32 value of FP8 bit patterns (int32)."""
    _, emin, mb, _ = _FMT[fmt]
    bias = 7 if fmt == "e4m3" else 15
    e = (code >> mb) & ((1 << (7 - mb)) - 1)
    m = code & ((1 << mb) - 1)
    normal = C.bits_f32(((e + 127 - bias) << 23) | (m << (23 - mb)))
    sub = m.astype(jnp.float32) * (2.0 ** (emin - 127 - mb))
    mag = jnp.where(e > 0, normal, sub)
    return jnp.where((code & 0x80) != 0, -mag, mag)


def _scales(a, fmt, mode):
    """``(s, 1/s)`` from amax values, exactly as :func:`jq.numerics.fp8_quant_scale` (``max * (1/amax)``, amax
    <= 2^-24 taken as 1) with correctly rounded reciprocals (in the kernel: XLA on a GPU may turn ``c * (1/a)``
    into a division)."""
    a = jnp.where(a <= 2.0**-24, 1.0, a)
    s = _FMT[fmt][0] * C.recip_rn(a, mode)
    return s, C.recip_rn(s, mode)


def _amax_col(s_ref, per_row, bm):
    if per_row:
        return s_ref[...]  # [bm]
    return jnp.full((bm,), s_ref[0], jnp.float32)


def _kernel(x_ref, s_ref, o_ref, *outs, per_row, out, fmt, cast, dtype, mode):
    x = x_ref[...].astype(jnp.float32)
    s_v, inv_v = _scales(_amax_col(s_ref, per_row, x.shape[0]), fmt, mode)
    if outs:
        outs[0][...] = s_v
    s, inv = s_v[:, None], inv_v[:, None]
    mx, emin, mb, jdt = _FMT[fmt]
    v = jnp.clip(x * s, -mx, mx)
    if cast:
        f8 = v.astype(jdt)
        if out == "codes":
            o_ref[...] = lax.bitcast_convert_type(f8, jnp.uint8)
        else:
            o_ref[...] = (f8.astype(jnp.float32) * inv).astype(dtype)
        return
    q = C.magic_round(jnp.abs(v), emin, mb)
    signbit = lax.bitcast_convert_type(v, jnp.uint32) & jnp.uint32(0x80000000)
    if out == "codes":
        code = _encode(q, fmt) | (signbit >> 24).astype(jnp.int32)
        o_ref[...] = code.astype(jnp.uint8)
    else:
        qs = lax.bitcast_convert_type(lax.bitcast_convert_type(q, jnp.uint32) | signbit, jnp.float32)
        o_ref[...] = (qs * inv).astype(dtype)


def _dq_kernel(c_ref, s_ref, o_ref, *, per_row, fmt, dtype, mode):
    q = _decode(c_ref[...].astype(jnp.int32), fmt)
    s = _amax_col(s_ref, per_row, q.shape[0])
    o_ref[...] = (q * C.recip_rn(s, mode)[:, None]).astype(dtype)


def fp8_scales(amax, fmt="e4m3"):
    """``(s, 1/s)`` exactly as :mod:`jq.numerics.fp8` (jnp, outside kernels)."""
    s = nx.fp8_quant_scale(amax, fmt)
    return s, nx.fp8_dequant_scale(s)


def _view2d(x):
    return x.reshape(1, -1) if x.ndim == 1 else x.reshape(-1, x.shape[-1])


def _launch(kernel, x2, sarg, per_row, odt, interpret, cfg, name, with_scale=False):
    m, k = x2.shape
    bm, mp = C.pick_block(m, cfg.block_m, min_block=8)
    bk, kp = C.pick_block(k, cfg.block_k, min_block=128)
    x2 = C.pad_rows(C.pad_rows(x2, mp, 0), kp, 1)
    if per_row:
        sarg = jnp.pad(sarg, [(0, mp - m)], constant_values=1.0)
    sspec = pl.BlockSpec((bm,), lambda i, j: (i,)) if per_row else pl.BlockSpec((4,), lambda i, j: (0,))
    out_specs = [pl.BlockSpec((bm, bk), lambda i, j: (i, j))]
    out_shape = [jax.ShapeDtypeStruct((mp, kp), odt)]
    if with_scale:
        out_specs.append(pl.BlockSpec((bm,), lambda i, j: (i,)))
        out_shape.append(jax.ShapeDtypeStruct((mp,), jnp.float32))
    res = pl.pallas_call(
        kernel, grid=(mp // bm, kp // bk), in_specs=[pl.BlockSpec((bm, bk), lambda i, j: (i, j)), sspec],
        out_specs=out_specs, out_shape=out_shape,
        interpret=interpret, compiler_params=C.triton_params(cfg.num_warps, cfg.num_stages), name=name)(x2, sarg)
    y = res[0][:m, :k] if (mp, kp) != (m, k) else res[0]
    return (y, res[1][:m]) if with_scale else y


def _prep(x, amax, per_row):
    x2 = _view2d(x)
    if amax is None:  # dynamic: computed in the same call
        amax = (jnp.max(jnp.abs(x2.astype(jnp.float32)), axis=1) if per_row
                else jnp.max(jnp.abs(x2.astype(jnp.float32))))
    amax = jnp.asarray(amax, jnp.float32)
    if per_row is None:
        per_row = amax.size > 1
    if per_row:
        if amax.size not in (1, x2.shape[0]):
            raise ValueError(f"per-row amax must have one entry per row ({x2.shape[0]}), got shape {amax.shape}")
        sarg = jnp.broadcast_to(jnp.reshape(amax, (-1,)), (x2.shape[0],))
    else:
        sarg = jnp.stack([jnp.reshape(amax, ()), jnp.float32(0), jnp.float32(0), jnp.float32(0)])
    return x2, sarg, per_row


def _mode(interpret):
    return "ieee" if interpret else "asm"


def _setup(x, amax, per_row, out, fmt, cast, interpret, cfg):
    """Shared front of the FP8 entry points: 2D view, scale argument, the kernel body for ``out``."""
    cfg = cfg or FP8Config
    interpret = C.resolve_interpret(interpret)
    if cast and interpret:
        raise ValueError("cast=True uses the GPU conversion instruction; interpret mode needs cast=False")
    x2, sarg, per_row = _prep(x, amax, per_row)
    kern = functools.partial(_kernel, per_row=per_row, out=out, fmt=fmt, cast=cast, dtype=x.dtype,
                             mode=_mode(interpret))
    return x2, sarg, per_row, kern, interpret, cfg


def fp8_quantize(x, amax=None, *, fmt: str = "e4m3", per_row: bool | None = None, cast: bool = False,
                 interpret: bool | None = None, cfg=None):
    """``(float8 values of x's shape, scale s)``; ``amax`` scalar (per tensor) or one per row (``[rows]`` or
    ``[rows, 1]``); None computes it in the same call (per tensor, or per row with ``per_row=True``)."""
    x2, sarg, per_row, kern, interpret, cfg = _setup(x, amax, per_row, "codes", fmt, cast, interpret, cfg)
    codes, s = _launch(kern, x2, sarg, per_row, jnp.uint8, interpret, cfg, f"jq_fp8_quantize_{fmt}",
                       with_scale=True)
    q = lax.bitcast_convert_type(codes, _FMT[fmt][3]).reshape(x.shape)
    return q, (s if per_row else s[0])


def fp8_fake_quant(x, amax=None, *, fmt: str = "e4m3", per_row: bool | None = None, cast: bool = False,
                   interpret: bool | None = None, cfg=None):
    """Quantize-dequantize in one pass; equals :func:`jq.numerics.fp8_fake_quant` (``x.dtype`` out)."""
    x2, sarg, per_row, kern, interpret, cfg = _setup(x, amax, per_row, "fake", fmt, cast, interpret, cfg)
    y = _launch(kern, x2, sarg, per_row, x.dtype, interpret, cfg, f"jq_fp8_fake_quant_{fmt}")
    return y.reshape(x.shape)


def fp8_dequantize(q, scale, *, dtype=jnp.bfloat16, interpret: bool | None = None, cfg=None):
    """``q * (1/s)`` in ``dtype``; ``q`` float8 (or its uint8 bits with ``fmt`` from the dtype)."""
    cfg = cfg or FP8Config
    interpret = C.resolve_interpret(interpret)
    fmt = "e5m2" if q.dtype == jnp.float8_e5m2 else "e4m3"
    codes = lax.bitcast_convert_type(q, jnp.uint8) if q.dtype != jnp.uint8 else q
    c2 = _view2d(codes)
    scale = jnp.asarray(scale, jnp.float32)
    per_row = scale.size > 1
    sarg = (jnp.reshape(scale, (-1,)) if per_row
            else jnp.stack([jnp.reshape(scale, ()), jnp.float32(0), jnp.float32(0), jnp.float32(0)]))
    kern = functools.partial(_dq_kernel, per_row=per_row, fmt=fmt, dtype=jnp.dtype(dtype), mode=_mode(interpret))
    y = _launch(kern, c2, sarg, per_row, jnp.dtype(dtype), interpret, cfg, f"jq_fp8_dequantize_{fmt}")
    return y.reshape(q.shape)
