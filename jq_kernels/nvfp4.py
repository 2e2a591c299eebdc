"""NVFP4 Pallas-Triton kernels: quantize (1D 16-blocks or 2D 16x16 blocks, optional fused 16x16 random Hadamard
transform, optional stochastic rounding), dequantize, and fused fake-quant (quantize -> dequantize in one pass).

Numeric contract: :func:`jq.numerics.nvfp4_quantize` / :func:`jq.numerics.nvfp4_fake_quant` and the storage of
:func:`jq.qtensor.quantize` (packed E2M1 codes, element ``2i`` in the low nibble, E4M3 block scales, fp32 global
scale ``amax / 2688``), bit for bit; the fused RHT equals the reference up to the summation order of its 16-term
Hadamard sums (exact where those sums are exact in float32). Element scaling ``x / s_b`` is correctly rounded
(``div.rn.f32`` or the Markstein sequence, :mod:`jq_kernels._common`). Layouts and measurements: ``docs/kernels.md``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from jq import numerics as nx
from jq_kernels import _common as C

__all__ = [
    "nvfp4_quantize", "nvfp4_dequantize", "nvfp4_fake_quant", "sr_bits", "NVFP4Config",
]

BLOCK = 16


def sr_bits(seed: int | jax.Array, shape) -> jax.Array:
    """The uint8 random bits the in-kernel stochastic rounding uses for a (zero-padded, 16-aligned) shape.

    ``bits[i] = hash(i * 0x9E3779B9 + seed) & 0xFF`` over the flat index of the padded tensor; passing these to
    :func:`jq.numerics.nvfp4_quantize` (``random_bits=``) reproduces the kernel exactly.
    """
    n = int(np.prod(shape))
    idx = jnp.arange(n, dtype=jnp.uint32)
    h = C.hash_u32(idx * jnp.uint32(0x9E3779B9) + jnp.asarray(seed, jnp.uint32))
    return (h & 0xFF).astype(jnp.uint8).reshape(shape)


# ---------------------------------------------------------------------------------------------------
# per-element / per-block arithmetic (shared by all kernels)


def _global_scale(amax_t, shape, mode):
    """``amax / 2688`` correctly rounded (1 where it is below ``2^-117``, amax == 0 included; NaN stays NaN), as a
    vector of ``shape`` (computed per block: the division is cheap there and avoids XLA's GPU division, which is
    not the IEEE one everywhere). The rule is :func:`jq.numerics.nvfp4_global_scale`'s."""
    a = jnp.broadcast_to(amax_t, shape)
    q = C.div_rn(a, jnp.full(shape, nx.NVFP4_AMAX_DIVISOR, jnp.float32), "ieee" if mode == "ieee" else "asm")
    return jnp.where(q < nx.NVFP4_MIN_GLOBAL_SCALE, 1.0, q)


def _block_scale(amax_b, amax_t, mode):
    """E4M3 block scale (float32 value on the grid), the two-level scale ``s = e4m3 * gs`` and ``gs``."""
    gs = _global_scale(amax_t, amax_b.shape, mode)
    r = C.div_rn(amax_b, 6.0 * gs, "ieee" if mode == "ieee" else "asm")
    r = jnp.where(r == 0, 1.0, r)
    r = jnp.clip(r, 2.0**-9, 448.0)
    sc = C.e4m3_round(r)
    return sc, sc * gs, gs


def _scaled_abs(a, s, y, mode):
    """``|x| / s`` correctly rounded (``y``: per-block RN(1/s) for the Markstein mode)."""
    return C.divide(a, s, mode, y)


def _sr_round(a, bits):
    """Stochastic E2M1 rounding of non-negative ``a`` with uint (0..255) ``bits``, as the reference."""
    a6 = jnp.minimum(a, 6.0)
    e = jnp.maximum(C.f32_bits(a6) & 0x7F800000, 127 << 23)
    p = C.bits_f32(e - (1 << 23))  # 2^k, k = max(floor(log2 a), 0) - 1
    ip = C.bits_f32((254 << 23) - e + (1 << 23))  # 2^-k
    sc = a6 * ip
    lo = jnp.floor(sc) * p
    hi = jnp.minimum(jnp.ceil(sc) * p, 6.0)
    frac = jnp.where(hi - lo > 0, (a6 - lo) * ip, 0.0)
    u = bits.astype(jnp.float32) * (2.0**-8)
    return jnp.where(u < frac, hi, lo)


def _signed(yabs, xf):
    """``copysign(yabs, xf)`` by bits (``yabs`` >= 0)."""
    sign = lax.bitcast_convert_type(xf, jnp.uint32) & jnp.uint32(0x80000000)
    return lax.bitcast_convert_type(lax.bitcast_convert_type(yabs, jnp.uint32) | sign, jnp.float32)


def _load_pair(x_ref, src):
    """(even, odd) float32 elements of the current block."""
    if src == "bf16pair":
        w = x_ref[...]
        lo = lax.bitcast_convert_type(w << 16, jnp.float32)
        hi = lax.bitcast_convert_type(w & jnp.uint32(0xFFFF0000), jnp.float32)
        return lo, hi
    idx = (slice(None),) * (len(x_ref.shape) - 1)
    return x_ref[idx + (0,)].astype(jnp.float32), x_ref[idx + (1,)].astype(jnp.float32)


def _store_pair(o_ref, lo, hi, src, dtype):
    if src == "bf16pair":
        o_ref[...] = C.bf16_round_bits(lo) | (C.bf16_round_bits(hi) << 16)
        return
    idx = (slice(None),) * (len(o_ref.shape) - 1)
    o_ref[idx + (0,)] = lo.astype(dtype)
    o_ref[idx + (1,)] = hi.astype(dtype)


# ---------------------------------------------------------------------------------------------------
# kernels


def _quant_kernel(*refs, src, mode, two_d, out, sr, dtype):
    """One kernel body for quantize (``out='codes'``) and fake-quant (``out='fake'``), 1D or 2D blocks."""
    refs = list(refs)
    x_ref, p_ref = refs.pop(0), refs.pop(0)
    bits_ref = refs.pop(0) if sr == "bits" else None
    seed_ref = refs.pop(0) if sr == "hash" else None
    amax_t = p_ref[0]
    lo, hi = _load_pair(x_ref, src)
    amag = jnp.maximum(jnp.abs(lo), jnp.abs(hi))
    if two_d:  # tile [1, 16, BKB, 8]: one block per (row group, column block)
        amax_b = jnp.max(jnp.max(amag, axis=3), axis=1)  # [1, BKB]
        sc, s, gs = _block_scale(amax_b, amax_t, mode)
        s_e = s[:, None, :, None]
    else:  # tile [BR, 8]: one block per row
        amax_b = jnp.max(amag, axis=1)  # [BR]
        sc, s, gs = _block_scale(amax_b, amax_t, mode)
        s_e = s[:, None]
    s_full = jnp.broadcast_to(s_e, lo.shape)
    y_full = None
    if mode == "markstein":
        rec = C.recip_rn(s, mode)
        y_full = jnp.broadcast_to(rec[:, None, :, None] if two_d else rec[:, None], lo.shape)
    a_lo = _scaled_abs(jnp.abs(lo), s_full, y_full, mode)
    a_hi = _scaled_abs(jnp.abs(hi), s_full, y_full, mode)
    if sr is None:
        q_lo, q_hi = C.e2m1_round(a_lo), C.e2m1_round(a_hi)
    else:
        if sr == "bits":
            b = bits_ref[...].astype(jnp.uint32)  # uint16 pairs: low byte = even element
        else:
            base = pl.program_id(0) * lo.shape[0]
            row = lax.broadcasted_iota(jnp.uint32, lo.shape, 0) + base.astype(jnp.uint32)
            col = lax.broadcasted_iota(jnp.uint32, lo.shape, 1)
            flat = row * jnp.uint32(16) + col * jnp.uint32(2)
            seed = seed_ref[0]
            k = jnp.uint32(0x9E3779B9)
            b = (C.hash_u32(flat * k + seed) & jnp.uint32(0xFF)) | (
                (C.hash_u32((flat + jnp.uint32(1)) * k + seed) & jnp.uint32(0xFF)) << 8)
        q_lo = _sr_round(a_lo, b & jnp.uint32(0xFF))
        q_hi = _sr_round(a_hi, (b >> 8) & jnp.uint32(0xFF))
    if out == "codes":
        codes_ref, scale_ref, gs_ref = refs
        c_lo = C.e2m1_index(q_lo) | ((lo < 0).astype(jnp.int32) << 3)
        c_hi = C.e2m1_index(q_hi) | ((hi < 0).astype(jnp.int32) << 3)
        codes_ref[...] = (c_lo | (c_hi << 4)).astype(jnp.uint8)
        scale_ref[...] = C.e4m3_bits_from_value(sc).astype(jnp.uint8)
        gs_ref[...] = jnp.full((1,), jnp.max(gs), jnp.float32)
    else:
        (o_ref,) = refs
        _store_pair(o_ref, _signed(q_lo * s_full, lo), _signed(q_hi * s_full, hi), src, dtype)


def _dequant_kernel(codes_ref, scale_ref, p_ref, o_ref, *, two_d, src, dtype):
    gs = p_ref[0]
    c = codes_ref[...].astype(jnp.int32)
    sc = C.e4m3_value_from_bits(scale_ref[...].astype(jnp.int32))
    s = sc * gs
    s_full = jnp.broadcast_to(s[:, None, :, None] if two_d else s[:, None], c.shape)
    lo = C.e2m1_value(c & 0xF)
    hi = C.e2m1_value(c >> 4)
    _store_pair(o_ref, lo * s_full, hi * s_full, src, dtype)


def _rht_kernel(*refs, mode, out, sr, dtype):
    """1D quantize / fake-quant with the fused 16x16 RHT. Tile: ``[BR2, 32]`` = two blocks per row."""
    refs = list(refs)
    x_ref, m_ref, pk_ref, p_ref = refs[:4]
    refs = refs[4:]
    seed_ref = refs.pop(0) if sr == "hash" else None
    amax_t = p_ref[0]
    x = x_ref[...]
    mm = m_ref[...]
    if x.dtype == jnp.bfloat16:  # products with +-1/4 are exact; f32 accumulation on the tensor cores
        y = jnp.dot(x, mm.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
    else:
        y = jnp.dot(x.astype(jnp.float32), mm, preferred_element_type=jnp.float32,
                    precision=lax.Precision.HIGHEST)
    if dtype != jnp.float32:  # the unfused composition rounds the rotated tensor to x.dtype first
        y = y.astype(dtype).astype(jnp.float32)
    col = lax.broadcasted_iota(jnp.int32, y.shape, 1)
    first = col < 16
    ay = jnp.abs(y)
    amax0 = jnp.max(jnp.where(first, ay, 0.0), axis=1)
    amax1 = jnp.max(jnp.where(first, 0.0, ay), axis=1)
    sc0, s0, gs = _block_scale(amax0, amax_t, mode)
    sc1, s1, _ = _block_scale(amax1, amax_t, mode)
    s_full = jnp.where(first, s0[:, None], s1[:, None])
    y_full = jnp.where(first, C.recip_rn(s0, mode)[:, None], C.recip_rn(s1, mode)[:, None]) \
        if mode == "markstein" else None
    a = _scaled_abs(ay, s_full, y_full, mode)
    if sr is None:
        q = C.e2m1_round(a)
    else:
        base = pl.program_id(0) * y.shape[0]
        row = lax.broadcasted_iota(jnp.uint32, y.shape, 0) + base.astype(jnp.uint32)
        flat = row * jnp.uint32(32) + col.astype(jnp.uint32)
        b = C.hash_u32(flat * jnp.uint32(0x9E3779B9) + seed_ref[0]) & jnp.uint32(0xFF)
        q = _sr_round(a, b)
    if out == "codes":
        codes_ref, scale_ref, gs_ref = refs
        gs_ref[...] = jnp.full((1,), jnp.max(gs), jnp.float32)
        code = (C.e2m1_index(q) | ((y < 0).astype(jnp.int32) << 3)).astype(jnp.float32)
        packed = jnp.dot(code.astype(jnp.bfloat16), pk_ref[...].astype(jnp.bfloat16),
                         preferred_element_type=jnp.float32)  # [BR2, 16]: integers 0..255, exact
        codes_ref[...] = packed.astype(jnp.int32).astype(jnp.uint8)
        scale_ref[:, 0] = C.e4m3_bits_from_value(sc0).astype(jnp.uint8)
        scale_ref[:, 1] = C.e4m3_bits_from_value(sc1).astype(jnp.uint8)
    else:
        (o_ref,) = refs
        o_ref[...] = _signed(q * s_full, y).astype(dtype)


# ---------------------------------------------------------------------------------------------------
# wrappers


class NVFP4Config:
    """Tile/launch parameters (defaults from the H100 sweep in benchmarks/RESULTS.md: 256 rows x 4 warps)."""

    block_rows = 256  # 1D: blocks (rows of 8 words) per program
    block_cols_2d = 32  # 2D: column blocks per program (x 16 rows)
    num_warps = 4
    num_stages = 2
    rht_rows = 128


def _prep(x, two_d):
    """Flatten to 2D ``[M, K]``, zero-pad K to 16 (and M to 16 for 2D). Returns (x2, M, K, Mp, Kp, lead)."""
    if x.ndim == 0:
        raise ValueError("NVFP4 needs at least one axis")
    lead = x.shape[:-2] if two_d else ()
    if two_d:
        if x.ndim < 2:
            raise ValueError("2D NVFP4 blocks need a rank >= 2 tensor")
        x = x.reshape((-1,) + x.shape[-2:]) if x.ndim > 2 else x[None]
    k = x.shape[-1]
    kp = -(-k // BLOCK) * BLOCK
    pads = [(0, 0)] * (x.ndim - 1) + [(0, kp - k)]
    if two_d:
        m = x.shape[-2]
        mp = -(-m // BLOCK) * BLOCK
        pads[-2] = (0, mp - m)
    if any(p[1] for p in pads):
        x = jnp.pad(x, pads)
    return x, kp, lead


def _scalars(amax, x):
    """Kernel params ``[amax, 0, 0, 0]`` (the kernels derive the global scale themselves)."""
    if amax is None:
        amax = jnp.max(jnp.abs(x.astype(jnp.float32)))
    a = jnp.asarray(amax, jnp.float32).reshape(())
    return jnp.stack([a, jnp.float32(0), jnp.float32(0), jnp.float32(0)])


def _src(dtype):
    return "bf16pair" if dtype == jnp.bfloat16 else "strided"


def _view_in(x2d, src, group):
    """``[..., K]`` -> bf16 words ``[..., K/2]`` or ``[..., K/2, 2]`` element pairs."""
    if src == "bf16pair":
        return lax.bitcast_convert_type(x2d.reshape(x2d.shape[:-1] + (x2d.shape[-1] // 2, 2)), jnp.uint32)
    return x2d.reshape(x2d.shape[:-1] + (x2d.shape[-1] // 2, 2))


def _call(kernel, grid, in_specs, out_specs, out_shape, interpret, cfg, name):
    return pl.pallas_call(
        kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
        interpret=interpret, compiler_params=C.triton_params(cfg.num_warps, cfg.num_stages), name=name)


def _bits_view(random_bits, kp, two_d):
    rb = random_bits.astype(jnp.uint8)
    if rb.shape[-1] != kp:
        rb = jnp.pad(rb, [(0, 0)] * (rb.ndim - 1) + [(0, kp - rb.shape[-1])])
    return lax.bitcast_convert_type(rb.reshape(-1, kp // 2, 2), jnp.uint16).reshape(-1, 8)


def _nvfp4_run(x, amax, *, two_d, rht, out, random_bits, sr_seed, interpret, div_mode, cfg):
    cfg = cfg or NVFP4Config
    interpret = C.resolve_interpret(interpret)
    mode = div_mode or C.default_div_mode(interpret)
    if interpret and mode != "ieee":
        raise ValueError("interpret mode supports only div_mode='ieee' (inline PTX cannot be interpreted)")
    dtype = x.dtype
    if rht and amax is None:  # the global amax is the rotated tensor's (TransformerEngine's RHT amax)
        xr, _, _ = _prep(x, False)
        amax = jnp.max(jnp.abs(nx.random_hadamard_transform(xr).astype(jnp.float32)))
    params = _scalars(amax, x)
    xp, kp, lead = _prep(x, two_d)
    sr = "bits" if random_bits is not None else ("hash" if sr_seed is not None else None)
    pspec = pl.BlockSpec((4,), lambda *i: (0,))
    if rht:
        if two_d or sr == "bits":
            raise NotImplementedError("the fused RHT supports 1D blocks with hashed stochastic rounding only")
        return _rht_run(xp, x, kp, params, out=out, sr_seed=sr_seed, interpret=interpret, mode=mode, cfg=cfg)
    src = _src(dtype)
    tail = () if src == "bf16pair" else (2,)
    if not two_d:
        m = int(np.prod(xp.shape[:-1]))
        r = m * kp // BLOCK
        br, rp = C.pick_block(r, cfg.block_rows)
        xv = C.pad_rows(_view_in(xp.reshape(m, kp), src, 8).reshape((r, 8) + tail), rp)
        grid = (rp // br,)
        xspec = pl.BlockSpec((br, 8) + tail, (lambda i: (i, 0)) if not tail else (lambda i: (i, 0, 0)))
        ins, specs = [xv, params], [xspec, pspec]
        if sr == "bits":
            ins.append(C.pad_rows(_bits_view(random_bits.reshape(-1, random_bits.shape[-1]), kp, False), rp))
            specs.append(pl.BlockSpec((br, 8), lambda i: (i, 0)))
        elif sr == "hash":
            ins.append(jnp.asarray(sr_seed, jnp.uint32).reshape(1))
            specs.append(pl.BlockSpec((1,), lambda i: (0,)))
        kern = functools.partial(_quant_kernel, src=src, mode=mode, two_d=False, out=out, sr=sr, dtype=dtype)
        if out == "codes":
            codes, scales, gsv = _call(kern, grid, specs, [pl.BlockSpec((br, 8), lambda i: (i, 0)),
                                                          pl.BlockSpec((br,), lambda i: (i,)),
                                                          pl.BlockSpec((1,), lambda i: (i,))],
                                       [jax.ShapeDtypeStruct((rp, 8), jnp.uint8),
                                        jax.ShapeDtypeStruct((rp,), jnp.uint8),
                                        jax.ShapeDtypeStruct((grid[0],), jnp.float32)],
                                       interpret, cfg, "jq_nvfp4_quantize_1d")(*ins)
            gs = gsv[0]
            data = codes[:r].reshape(xp.shape[:-1] + (kp // 2,))
            scale = lax.bitcast_convert_type(scales[:r], jnp.float8_e4m3fn).reshape(xp.shape[:-1] + (kp // BLOCK,))
            return data, scale, gs
        y = _call(kern, grid, specs, xspec,
                  jax.ShapeDtypeStruct((rp, 8) + tail, jnp.uint32 if src == "bf16pair" else dtype),
                  interpret, cfg, "jq_nvfp4_fake_quant_1d")(*ins)[:r]
        if src == "bf16pair":
            y = C.unpack_bf16_words(y)
        y = y.reshape(xp.shape)
        return y[..., : x.shape[-1]].reshape(x.shape)
    # 2D: [B, Mp, Kp] -> [B*Mp/16, 16, Kp/16, 8(,2)]
    if sr is not None:
        raise NotImplementedError("stochastic rounding is implemented for 1D blocks (gradients) only")
    b_, mp = xp.shape[0], xp.shape[1]
    mb, kb = b_ * mp // BLOCK, kp // BLOCK
    bkb, kb2 = C.pick_block(kb, cfg.block_cols_2d, min_block=8)
    xv = C.pad_rows(_view_in(xp.reshape(b_ * mp, kp), src, 8).reshape((mb, 16, kb, 8) + tail), kb2, axis=2)
    grid = (mb, kb2 // bkb)
    xspec = pl.BlockSpec((1, 16, bkb, 8) + tail, lambda i, j: (i, 0, j, 0) + (0,) * len(tail))
    pspec2 = pl.BlockSpec((4,), lambda i, j: (0,))
    kern = functools.partial(_quant_kernel, src=src, mode=mode, two_d=True, out=out, sr=None, dtype=dtype)
    if out == "codes":
        nj = grid[1]
        codes, scales, gsv = _call(kern, grid, [xspec, pspec2],
                                   [pl.BlockSpec((1, 16, bkb, 8), lambda i, j: (i, 0, j, 0)),
                                    pl.BlockSpec((1, bkb), lambda i, j: (i, j)),
                                    pl.BlockSpec((1,), lambda i, j: (i * nj + j,))],
                                   [jax.ShapeDtypeStruct((mb, 16, kb2, 8), jnp.uint8),
                                    jax.ShapeDtypeStruct((mb, kb2), jnp.uint8),
                                    jax.ShapeDtypeStruct((grid[0] * nj,), jnp.float32)],
                                   interpret, cfg, "jq_nvfp4_quantize_2d")(xv, params)
        gs = gsv[0]
        data = codes[:, :, :kb].reshape(lead + (mp, kp // 2))
        scale = lax.bitcast_convert_type(scales[:, :kb], jnp.float8_e4m3fn).reshape(lead + (mp // BLOCK, kb))
        return data, scale, gs
    y = _call(kern, grid, [xspec, pspec2], xspec,
              jax.ShapeDtypeStruct((mb, 16, kb2, 8) + tail, jnp.uint32 if src == "bf16pair" else dtype),
              interpret, cfg, "jq_nvfp4_fake_quant_2d")(xv, params)[:, :, :kb]
    if src == "bf16pair":
        y = C.unpack_bf16_words(y)
    y = y.reshape(xp.shape)[..., : x.shape[-2], : x.shape[-1]]
    return y.reshape(x.shape)


def _rht_mats():
    m = np.asarray(nx.rht_matrix(), np.float32)
    big = np.zeros((32, 32), np.float32)
    big[:16, :16] = m
    big[16:, 16:] = m
    pk = np.zeros((32, 16), np.float32)
    for blk in range(2):
        for p in range(8):
            pk[16 * blk + 2 * p, 8 * blk + p] = 1.0
            pk[16 * blk + 2 * p + 1, 8 * blk + p] = 16.0
    return jnp.asarray(big), jnp.asarray(pk)


def _rht_run(xp, x, kp, params, *, out, sr_seed, interpret, mode, cfg):
    dtype = x.dtype
    m = int(np.prod(xp.shape[:-1]))
    xp2 = xp.reshape(-1)
    if (m * kp) % 32:  # an odd number of blocks: one zero block completes the last row pair
        xp2 = jnp.pad(xp2, [(0, 16)])
    r2 = xp2.size // 32
    xv = xp2.reshape(r2, 32)
    if xv.dtype not in (jnp.bfloat16, jnp.float32):
        xv = xv.astype(jnp.float32)
    br, rp = C.pick_block(r2, cfg.rht_rows, min_block=16)
    if br < 16:  # tl.dot needs >= 16 rows
        br, rp = 16, -(-r2 // 16) * 16
    xv = C.pad_rows(xv, rp)
    grid = (rp // br,)
    big, pk = _rht_mats()
    sr = "hash" if sr_seed is not None else None
    ins = [xv, big, pk, params]
    specs = [pl.BlockSpec((br, 32), lambda i: (i, 0)), pl.BlockSpec((32, 32), lambda i: (0, 0)),
             pl.BlockSpec((32, 16), lambda i: (0, 0)), pl.BlockSpec((4,), lambda i: (0,))]
    if sr:
        ins.append(jnp.asarray(sr_seed, jnp.uint32).reshape(1))
        specs.append(pl.BlockSpec((1,), lambda i: (0,)))
    kern = functools.partial(_rht_kernel, mode=mode, out=out, sr=sr, dtype=dtype)
    if out == "codes":
        codes, scales, gsv = _call(kern, grid, specs, [pl.BlockSpec((br, 16), lambda i: (i, 0)),
                                                       pl.BlockSpec((br, 2), lambda i: (i, 0)),
                                                       pl.BlockSpec((1,), lambda i: (i,))],
                                   [jax.ShapeDtypeStruct((rp, 16), jnp.uint8), jax.ShapeDtypeStruct((rp, 2), jnp.uint8),
                                    jax.ShapeDtypeStruct((grid[0],), jnp.float32)],
                                   interpret, cfg, "jq_nvfp4_quantize_rht")(*ins)
        gs = gsv[0]
        nrow = m * kp // 2
        data = codes.reshape(-1)[:nrow].reshape(xp.shape[:-1] + (kp // 2,))
        scale = lax.bitcast_convert_type(scales.reshape(-1)[: m * kp // BLOCK], jnp.float8_e4m3fn).reshape(
            xp.shape[:-1] + (kp // BLOCK,))
        return data, scale, gs
    y = _call(kern, grid, specs, pl.BlockSpec((br, 32), lambda i: (i, 0)),
              jax.ShapeDtypeStruct((rp, 32), dtype), interpret, cfg, "jq_nvfp4_fake_quant_rht")(*ins)
    y = y.reshape(-1)[: m * kp].reshape(xp.shape)
    return y[..., : x.shape[-1]].reshape(x.shape)


def nvfp4_quantize(x, amax=None, *, two_d: bool = False, rht: bool = False, random_bits=None, sr_seed=None,
                   interpret: bool | None = None, div_mode: str | None = None, cfg=None):
    """Quantize ``x`` to NVFP4 storage: ``(packed uint8 codes, E4M3 block scales, fp32 global scale)``.

    Same layout as :func:`jq.qtensor.quantize` (data ``[..., ceil(K/16)*8]`` for 1D; ``[.., Mp, Kp/2]`` and
    scales ``[.., Mp/16, Kp/16]`` for 2D). ``amax``: the per-tensor amax (computed when None, in the same call).
    ``rht`` applies the 16x16 random Hadamard transform first (1D only). Stochastic rounding: ``random_bits``
    (uint8, ``x``'s shape) or ``sr_seed`` (bits hashed in the kernel, see :func:`sr_bits`).
    """
    return _nvfp4_run(x, amax, two_d=two_d, rht=rht, out="codes", random_bits=random_bits, sr_seed=sr_seed,
                      interpret=interpret, div_mode=div_mode, cfg=cfg)


def nvfp4_fake_quant(x, amax=None, *, two_d: bool = False, rht: bool = False, random_bits=None, sr_seed=None,
                     interpret: bool | None = None, div_mode: str | None = None, cfg=None):
    """Quantize-dequantize in one kernel (``x.dtype`` out); equals :func:`jq.numerics.nvfp4_fake_quant`.

    With ``rht`` the result stays in the rotated basis (as the reference applied to ``RHT(x)``).
    """
    return _nvfp4_run(x, amax, two_d=two_d, rht=rht, out="fake", random_bits=random_bits, sr_seed=sr_seed,
                      interpret=interpret, div_mode=div_mode, cfg=cfg)


def nvfp4_dequantize(data, scale, global_scale, shape, *, two_d: bool = False, dtype=jnp.bfloat16,
                     interpret: bool | None = None, cfg=None):
    """Dequantize NVFP4 storage (the layout :func:`nvfp4_quantize` returns) to ``shape`` in ``dtype``."""
    cfg = cfg or NVFP4Config
    interpret = C.resolve_interpret(interpret)
    dtype = jnp.dtype(dtype)
    src = _src(dtype)
    kp = data.shape[-1] * 2
    params = jnp.stack([jnp.asarray(global_scale, jnp.float32).reshape(()), jnp.float32(0), jnp.float32(0),
                        jnp.float32(0)])
    sbits = lax.bitcast_convert_type(scale, jnp.uint8) if scale.dtype != jnp.uint8 else scale
    tail = () if src == "bf16pair" else (2,)
    odt = jnp.uint32 if src == "bf16pair" else dtype
    if not two_d:
        r = data.size // 8
        br, rp = C.pick_block(r, cfg.block_rows)
        kern = functools.partial(_dequant_kernel, two_d=False, src=src, dtype=dtype)
        y = _call(kern, (rp // br,),
                  [pl.BlockSpec((br, 8), lambda i: (i, 0)), pl.BlockSpec((br,), lambda i: (i,)),
                   pl.BlockSpec((4,), lambda i: (0,))],
                  pl.BlockSpec((br, 8) + tail, lambda i: (i, 0) + (0,) * len(tail)),
                  jax.ShapeDtypeStruct((rp, 8) + tail, odt), interpret, cfg, "jq_nvfp4_dequantize_1d")(
            C.pad_rows(data.reshape(r, 8), rp), C.pad_rows(sbits.reshape(r), rp), params)[:r]
        y = C.unpack_bf16_words(y) if src == "bf16pair" else y
        y = y.reshape(data.shape[:-1] + (kp,))
        return y[..., : shape[-1]].reshape(shape)
    mp = data.shape[-2]
    mb, kb = data.size // (16 * kp // 2), kp // BLOCK
    bkb, kb2 = C.pick_block(kb, cfg.block_cols_2d, min_block=8)
    kern = functools.partial(_dequant_kernel, two_d=True, src=src, dtype=dtype)
    y = _call(kern, (mb, kb2 // bkb),
              [pl.BlockSpec((1, 16, bkb, 8), lambda i, j: (i, 0, j, 0)), pl.BlockSpec((1, bkb), lambda i, j: (i, j)),
               pl.BlockSpec((4,), lambda i, j: (0,))],
              pl.BlockSpec((1, 16, bkb, 8) + tail, lambda i, j: (i, 0, j, 0) + (0,) * len(tail)),
              jax.ShapeDtypeStruct((mb, 16, kb2, 8) + tail, odt), interpret, cfg, "jq_nvfp4_dequantize_2d")(
        C.pad_rows(data.reshape(mb, 16, kb, 8), kb2, axis=2), C.pad_rows(sbits.reshape(mb, kb), kb2, axis=1),
        params)[:, :, :kb]
    y = C.unpack_bf16_words(y) if src == "bf16pair" else y
    y = y.reshape(data.shape[:-2] + (mp, kp))
    return y[..., : shape[-2], : shape[-1]].reshape(shape)

