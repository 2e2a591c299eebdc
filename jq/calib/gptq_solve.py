"""GPTQ on one weight matrix (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for GPTs").

Given the canonical weight ``W [out, in]`` and ``H = sum over tokens of x xᵀ`` (proportional to the layer's
Hessian ``2 X Xᵀ``), GPTQ quantizes the input columns one at a time and spreads each column's rounding
error over the columns not yet quantized, minimising ``tr((Q - W) H (Q - W)ᵀ)``::

    dead columns (H_jj = 0): H_jj = 1, W[:, j] = 0
    act_order: columns by decreasing H_jj
    H += perc_damp * mean(diag H) * I;   U = upper Cholesky factor of H⁻¹  (H⁻¹ = Uᵀ U)
    for each block of block_size columns (lazy batch updates):
        for each column j of the block:
            q = quantize(W[:, j]);  e = (W[:, j] - q) / U_jj
            W[:, j:block end] -= e ⊗ U[j, j:block end];  Q[:, j] = q;  E[:, j] = e
        W[:, block end:] -= E @ U[block, block end:]

Scales. A per-tensor or per-channel amax (FP8, INT8) is the max calibration of the original weight. A
per-block amax (INT groups, NVFP4 16-blocks) is computed from the updated weights when GPTQ reaches the
block's first column (the reference GPTQ's groups), capped at the weight's original largest block amax
``G``; the block that holds ``G`` keeps it (:func:`jq.calib.static_amax.pin_mask`). With ``act_order`` the
per-block amaxes are fixed up front from the original weight (GPTQ's "static groups"), as columns of one block
are no longer quantized together. Two-dimensional tiles (``block_sizes={-1: bk, -2: bn}``: one amax per ``bn``
output x ``bk`` input channels, DeepSeek-style block FP8, NVFP4's 16x16 weight blocks) are static groups in either
order: ``bn`` rows that GPTQ updates independently share one amax, so it is fixed up front from the original
weight (after the scale search, if any) and each row quantizes its columns with its tile's amax.

Each column is quantized by the spec's own fake quantization, as the first block of a two-block tensor whose
second block (zeros) carries ``G``: formats whose tensor-level scale derives from the block amaxes (NVFP4:
``max / 2688``) see the weight's own, and the returned per-block amaxes reproduce the quantized weight exactly
(``fake_quant(Q, amax) == Q``).

Scale search (``shrink``, AutoGPTQ's ``mse=True``): each block amax ``a`` (computed as above, from the updated
weights or up front) becomes ``a * m`` for the shrink factor ``m`` of the grid minimising the block's rounding
error ``Σ d_j |fq(w; a m) - w|^norm`` over its elements (AutoGPTQ: ``m = 1, 0.99, ..., 0.21``, ``norm = 2.4``,
``d_j = 1``; ``hessian_weighted``: ``d_j = H_jj``); the first minimum wins, so ``m = 1`` (max) is kept on
ties. The pinned block keeps ``G``.

Example:
  >>> q, amax, err = gptq_quantize(w, h, amax0, spec=spec, block_size=128)
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jq.calib.mse import reduce_to_amax
from jq.calib.static_amax import pin_mask
from jq.fake_quant import fake_quant
from jq.formats.base import broadcastable_amax

__all__ = ["gptq_quantize", "inverse_hessian_factor", "hessian_error", "shrink_grid", "search_block_amax"]

HIGHEST = lax.Precision.HIGHEST
_CHUNK = 16  # scale-search candidates quantized at once (memory: 16 copies of the block slab)


def inverse_hessian_factor(h: jax.Array, damp: jax.Array) -> jax.Array:
    """The upper Cholesky factor ``U`` of ``(H + damp I)⁻¹`` (``(H + damp I)⁻¹ = Uᵀ U``)."""
    n = h.shape[0]
    eye = jnp.eye(n, dtype=h.dtype)
    lower = jnp.linalg.cholesky(h + damp * eye)
    hinv = jax.scipy.linalg.cho_solve((lower, True), eye)
    return jnp.linalg.cholesky((hinv + hinv.T) / 2).T


def hessian_error(q: jax.Array, w: jax.Array, h: jax.Array) -> jax.Array:
    """``tr((Q - W) H (Q - W)ᵀ) / tr(W H Wᵀ)``: the layer's relative output error on the calibration data."""
    d = (q - w).astype(jnp.float32)
    num = jnp.sum(jnp.matmul(d, h, precision=HIGHEST) * d)
    den = jnp.sum(jnp.matmul(w, h, precision=HIGHEST) * w)
    return num / jnp.maximum(den, 1e-30)


def shrink_grid(min_shrink: float, step: float) -> tuple[float, ...]:
    """The shrink factors ``1, 1 - step, ...`` down to ``min_shrink`` (AutoGPTQ: ``step=0.01, min_shrink=0.21``)."""
    n = math.floor((1.0 - min_shrink) / step + 1e-6) + 1
    return tuple(round(1.0 - k * step, 6) for k in range(n))


def search_block_amax(x: jax.Array, amax: jax.Array, keep: jax.Array, *, spec, shrink: tuple[float, ...],
                      norm: float = 2.4, col_weight: jax.Array | None = None) -> jax.Array:
    """Per block amax ``amax * m``, ``m`` in ``shrink``, minimising ``Σ d_j |fake_quant(x; amax m) - x|^norm``
    over the block's elements (the first minimum; ``d_j = col_weight[j]`` per column, else 1); blocks where
    ``keep`` is True keep ``amax``.

    Candidates are evaluated 16 at a time as one stacked tensor (``keep`` blocks unshrunk in every copy), so a
    format whose tensor-level scale comes from the largest block amax (NVFP4) sees the scale it is stored
    with when the largest block is kept (the factors are <= 1).

    Example:
      >>> a = search_block_amax(w, amax, pin_mask(amax), spec=spec, shrink=shrink_grid(0.5, 0.05))
    """
    amax = jnp.asarray(amax, jnp.float32)
    xf = jnp.asarray(x, jnp.float32)
    rb = _row_block(spec, xf.shape)
    if rb > 1:  # 2-D tiles: whole tiles per copy, so the stacked copies keep the tile grid
        xf = jnp.pad(xf, ((0, amax.shape[0] * rb - xf.shape[0]), (0, 0)))
    rows = xf.shape[0]
    n = len(shrink)
    chunk = min(n, _CHUNK)
    padded = list(shrink) + [shrink[-1]] * (-n % chunk)  # repeats lose to their first copy in the argmin
    ms = jnp.asarray(padded, jnp.float32)

    def losses(mc):  # `chunk` stacked copies of x, one candidate each; no vmap (static NVFP4 rejects batches)
        a = jnp.where(keep[None], amax[None], amax[None] * mc[:, None, None]).reshape(chunk * amax.shape[0], -1)
        xs = jnp.tile(xf, (chunk, 1))
        err = jnp.abs(fake_quant(xs, a, spec=spec).astype(jnp.float32) - xs) ** norm
        err = err if col_weight is None else err * col_weight[None, :]
        return reduce_to_amax(err, a, spec).reshape((chunk,) + amax.shape)

    loss = lax.map(losses, ms.reshape(-1, chunk)).reshape((-1,) + amax.shape)
    best = jnp.argmin(loss, axis=0)
    return jnp.where(keep, amax, amax * ms[best])


def _row_block(spec, shape) -> int:
    """Output channels per quantization block (1 unless the weight has 2-D tiles)."""
    layout = spec.format.blocks(spec, shape)
    size = None if layout is None else dict(layout.sizes).get(0)
    return 1 if size is None else size


def _columns_only(spec):
    """``spec`` with its block sizes along the input channels only (a 2-D tile seen one row at a time)."""
    bs = spec.block_sizes
    sizes = tuple((a, n) for a, n in bs.sizes if a in (-1, 1))
    return dataclasses.replace(spec, block_sizes=dataclasses.replace(bs, sizes=sizes))


def _group_size(spec, shape, block_size: int) -> int | None:
    """Columns per quantization block along the input channels (None: no per-block amax)."""
    layout = spec.format.blocks(spec, shape)
    if layout is None:
        return None
    sizes = dict(layout.sizes)
    if len(shape) - 1 not in sizes:
        raise ValueError(f"GPTQ needs {spec.describe()} blocks to run along the input channels")
    gs = sizes[len(shape) - 1]
    if block_size % gs:
        raise ValueError(f"GPTQ block_size={block_size} must be a multiple of the quantization block size {gs} "
                         f"({spec.describe()})")
    return gs


@functools.partial(jax.jit, static_argnames=("spec", "block_size", "perc_damp", "act_order", "shrink", "norm",
                                                "hessian_weighted"))
def gptq_quantize(w: jax.Array, h: jax.Array, amax: jax.Array, *, spec, block_size: int = 128,
                  perc_damp: float = 0.01, act_order: bool = False, shrink: tuple[float, ...] | None = None,
                  norm: float = 2.4, hessian_weighted: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    """GPTQ-quantize ``w`` (see the module docstring).

    Args:
      w: canonical weight ``[out, in]``.
      h: ``[in, in]`` sum of ``x xᵀ`` over the calibration tokens (inputs as the model quantizes them).
      amax: the spec's max-calibrated amax of ``w`` (per tensor, per channel, or per block).
      spec: the weight's single-stage spec with a calibrated amax (static per-block for block formats).
      block_size: columns per lazy-batch block (a multiple of the quantization block size).
      perc_damp: dampening, as a fraction of the mean Hessian diagonal.
      act_order: process columns by decreasing Hessian diagonal.
      shrink: shrink factors searched for every block amax (:func:`shrink_grid`); None: the block max. Only
        formats with per-block amaxes search; per-tensor and per-channel amaxes stay as given.
      norm: the exponent of the scale search's error.
      hessian_weighted: weight the scale search's error of input column ``j`` by ``H_jj`` (the column's
        share of the layer output error when columns are uncorrelated).

    Returns:
      ``(q, amax, error)``: the quantized weight (float32, on the format's grid), the amax that reproduces it,
      and :func:`hessian_error` of ``q``.
    """
    w = jnp.asarray(w, jnp.float32)
    h = jnp.asarray(h, jnp.float32)
    rows, cols = w.shape
    gs = _group_size(spec, (rows, cols), block_size)
    rb = _row_block(spec, (rows, cols))
    static = act_order or rb > 1  # per-block amaxes fixed up front (see the module docstring)
    col_spec = _columns_only(spec) if rb > 1 else spec  # quant_col quantizes one row of a tile at a time
    b = block_size
    cp = math.ceil(cols / b) * b

    dead = jnp.diagonal(h) <= 0
    h = h + jnp.diag(dead.astype(h.dtype))
    w0 = jnp.where(dead[None], 0.0, w)
    damp = perc_damp * jnp.mean(jnp.diagonal(h))
    wp = jnp.pad(w0, ((0, 0), (0, cp - cols)))
    hp = jnp.pad(h, ((0, cp - cols), (0, cp - cols))) + jnp.diag((jnp.arange(cp) >= cols).astype(h.dtype))
    perm = jnp.argsort(-jnp.diagonal(hp), stable=True) if act_order else jnp.arange(cp)
    wp, hp = wp[:, perm], hp[perm][:, perm]
    u = inverse_hessian_factor(hp, damp)
    dp = jnp.diagonal(hp)  # in processing order

    if gs is None:  # one amax per tensor or channel, fixed
        a_cols = jnp.broadcast_to(broadcastable_amax(amax, 2), (rows, cols))
        a_cols = jnp.pad(a_cols, ((0, 0), (0, cp - cols)), constant_values=1.0)[:, perm]
        big, pin, a_blocks = None, None, None
    else:
        big = jnp.max(amax)
        nbp = cp // gs
        if static and shrink is not None:  # static groups: searched once on the original weight
            amax = search_block_amax(w0, amax, pin_mask(amax), spec=spec, shrink=shrink, norm=norm,
                                     col_weight=jnp.diagonal(h) if hessian_weighted else None)
        row_amax = jnp.repeat(amax, rb, axis=0)[:rows] if rb > 1 else amax  # a tile's amax on each of its rows
        a_blocks = jnp.pad(row_amax, ((0, 0), (0, nbp - amax.shape[1])))
        pin = jnp.pad(pin_mask(row_amax), ((0, 0), (0, nbp - amax.shape[1])))
        a_cols = None

    def quant_col(col, a_col):
        if gs is None:
            return fake_quant(col[:, None], a_col[:, None], spec=spec)[:, 0]
        slab = jnp.zeros((rows, 2 * gs), jnp.float32).at[:, 0].set(col)
        a = jnp.stack([a_col, jnp.full_like(a_col, big)], axis=1)
        return fake_quant(slab, a, spec=col_spec)[:, 0]

    def block_step(k, carry):
        wk, ab = carry
        i1 = k * b
        w1 = lax.dynamic_slice(wk, (0, i1), (rows, b))
        u1 = lax.dynamic_slice(u, (i1, i1), (b, b))

        def col_step(i, c):
            w1, q1, e1, ab = c
            j = i1 + i
            if gs is not None and not static:
                g = j // gs

                def refresh(ab):
                    grp = lax.dynamic_slice(w1, (0, i), (rows, gs))
                    a = jnp.minimum(spec.format.compute_amax(grp, spec)[:, 0], big)
                    pinned = lax.dynamic_index_in_dim(pin, g, 1, False)
                    a = jnp.where(pinned, big, a)
                    if shrink is not None:  # the group beside a block carrying G, as quant_col sees it
                        slab = jnp.concatenate([grp, jnp.zeros_like(grp)], axis=1)
                        a2 = jnp.stack([a, jnp.full_like(a, big)], axis=1)
                        keep = jnp.stack([pinned, jnp.ones_like(pinned)], axis=1)
                        d = lax.dynamic_slice(dp, (i1 + i,), (gs,)) if hessian_weighted else None
                        d = None if d is None else jnp.concatenate([d, jnp.zeros_like(d)])
                        a = search_block_amax(slab, a2, keep, spec=spec, shrink=shrink, norm=norm,
                                              col_weight=d)[:, 0]
                    return lax.dynamic_update_slice(ab, a[:, None], (0, g))

                ab = lax.cond(i % gs == 0, refresh, lambda x: x, ab)
                a_col = lax.dynamic_index_in_dim(ab, g, 1, False)
            elif gs is not None:
                a_col = lax.dynamic_index_in_dim(ab, perm[j] // gs, 1, False)
            else:
                a_col = lax.dynamic_index_in_dim(a_cols, j, 1, False)
            col = w1[:, i]
            q = quant_col(col, a_col)
            err = (col - q) / u1[i, i]
            w1 = w1 - err[:, None] * u1[i][None, :]
            return w1, q1.at[:, i].set(q), e1.at[:, i].set(err), ab

        zeros = jnp.zeros((rows, b), jnp.float32)
        _, q1, e1, ab = lax.fori_loop(0, b, col_step, (w1, zeros, zeros, ab))
        wk = lax.dynamic_update_slice(wk, q1, (0, i1))
        later = jnp.matmul(e1, lax.dynamic_slice(u, (i1, 0), (b, cp)), precision=HIGHEST)
        wk = wk - jnp.where(jnp.arange(cp)[None] >= i1 + b, later, 0.0)
        return wk, ab

    ab0 = a_blocks if a_blocks is not None else jnp.zeros((1, 1), jnp.float32)
    qp, ab = lax.fori_loop(0, cp // b, block_step, (wp, ab0))
    q = qp[:, jnp.argsort(perm)][:, :cols]
    amax_out = amax if (gs is None or static) else ab[:, : amax.shape[1]]
    return q, amax_out.astype(jnp.float32), hessian_error(q, w, h - jnp.diag(dead.astype(h.dtype)))
