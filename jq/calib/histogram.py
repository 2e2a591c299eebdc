"""The amax of a histogram of ``|x|``: percentile, entropy (TensorRT's KL) and MSE (ModelOpt's methods).

Each takes the bin ``counts`` (``(num_bins,)``) and the histogram's ``range`` (bin edges ``e_i = i range /
num_bins``, centres ``c_i = (e_i + e_{i+1}) / 2``) of one tensor. Percentile and entropy run on the host in
float64 (as ModelOpt's numpy code: no compilation, and the KL minimum is flat); MSE runs the quantizer's own
format under ``jit``. :func:`host_amax` / :func:`histogram_amax` map one over the leading axes of a stacked
:class:`~jq.calib.stats.Histogram` (layers, experts).

* **percentile** ``p``: the left edge of the first bin where the cumulative count reaches ``p/100`` of the
  total, ``amax = e_i`` (ModelOpt's choice of edge).
* **entropy**: for every candidate threshold bin ``i = start_bin, start_bin + stride, ..., num_bins``, the
  reference ``P`` is the first ``i`` bins with the counts beyond folded into bin ``i - 1``, and ``Q`` merges
  those ``i`` bins into ``L`` quantization levels (bin ``j`` goes to level ``floor(j L / i)``; a level's count
  is spread evenly over its non-empty bins, empty bins stay empty). ``amax = e_i`` for the last ``i``
  minimising ``KL(P || Q) = sum_j P_j log(P_j / Q_j)`` (both normalised; ``P_j > 0 = Q_j`` is infinite).
  As TensorRT, bin 0 (the spike of zeros) is given bin 1's count first. ``L = 2^(bits - 1)`` levels per
  sign (128 for INT8, 128 for FP8 E4M3's 7 magnitude bits: the uniform-level model TensorRT and ONNX
  Runtime use for both).
* **mse**: ``amax = c_i`` for the ``i >= start_bin`` minimising ``sum_j counts_j (fq(c_j; c_i) - c_j)^2``
  with ``fq`` the quantizer's own format (the bin centres stand in for the values).

Example:
  >>> from jq.calib.stats import Histogram
  >>> h = Histogram.of(jnp.arange(1000.0), num_bins=1024)
  >>> percentile_amax(h.counts, h.range, 50.0)
  499.0
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["percentile_amax", "entropy_kl", "entropy_amax", "mse_amax", "host_amax", "histogram_amax", "quant_levels",
           "METHODS"]

METHODS = ("percentile", "entropy", "mse")
_CHUNK = 128  # candidates evaluated together (memory: _CHUNK x num_bins floats)


def quant_levels(spec) -> int:
    """Quantization levels per sign the entropy method merges bins into: ``2^(bits - 1 + unsigned)``."""
    bits = spec.num_bits if isinstance(spec.num_bits, int) else 1 + sum(spec.num_bits)
    return 1 << (bits - 1 + int(spec.unsigned))


def percentile_amax(counts: np.ndarray, range_: float, percentile: float = 99.99) -> float:
    """``e_i`` for the first bin ``i`` whose cumulative count is ``>= percentile/100`` of the total (host)."""
    counts = np.asarray(counts, np.float64)
    cum = np.cumsum(counts)
    i = int(np.argmax(cum >= (percentile / 100.0) * cum[-1]))
    return float(range_) * i / counts.shape[-1]


def entropy_kl(counts: np.ndarray, levels: int = 128, start_bin: int = 128, stride: int = 1):
    """``(candidate bins i, KL(P_i || Q_i))`` of TensorRT's entropy method (host, float64, vectorised)."""
    b = np.asarray(counts, np.float64).copy()
    nb = b.shape[-1]
    b[0] = b[1]  # TensorRT: ignore the spike of zeros
    cum = np.concatenate([[0.0], np.cumsum(b)])
    nnz = np.concatenate([[0.0], np.cumsum(b > 0)])
    total = cum[-1]
    cands = np.arange(start_bin, nb + 1, stride)
    kls = []
    j = np.arange(nb)[None, :]
    for lo_c in range(0, len(cands), _CHUNK):
        i = cands[lo_c:lo_c + _CHUNK, None]
        inside = j < i
        p = np.where(inside, b, 0.0) + np.where(j == i - 1, total - cum[i], 0.0)
        # level g holds bins [ceil(g i / L), ceil((g + 1) i / L)): its sums from the running sums at the edges
        level = np.minimum((j * levels) // i, levels - 1)
        lo = (level * i + levels - 1) // levels
        hi = np.minimum(((level + 1) * i + levels - 1) // levels, i)
        avg = (cum[hi] - cum[lo]) / np.maximum(nnz[hi] - nnz[lo], 1.0)
        q = np.where(inside & (b > 0), avg, 0.0)
        s_in = cum[i[:, 0]]
        with np.errstate(divide="ignore", invalid="ignore"):
            # KL = sum_j (p_j/T) log((p_j/T) / (q_j/S_in)) = (1/T) sum_j p_j log(p_j/q_j) + log(S_in/T)
            terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(np.where(q > 0, q, 1.0))), 0.0)
            kl = terms.sum(axis=1) / total + np.log(s_in / total)
        bad = np.any((p > 0) & (q <= 0), axis=1) | (s_in <= 0)
        kls.append(np.where(bad, np.inf, kl))
    return cands, np.concatenate(kls)


def entropy_amax(counts: np.ndarray, range_: float, levels: int = 128, start_bin: int = 128, stride: int = 1) -> float:
    """``e_i`` for the last candidate ``i`` of least KL divergence (TensorRT's entropy method, host)."""
    counts = np.asarray(counts, np.float64)
    if counts.sum() - counts[0] + counts[1] <= 0:  # nothing but zeros
        return float(range_)
    cands, kl = entropy_kl(counts, levels, start_bin, stride)
    last_min = len(kl) - 1 - int(np.argmin(kl[::-1]))
    return float(range_) * cands[last_min] / counts.shape[-1]


def host_amax(fn, counts: jax.Array, range_: jax.Array) -> jax.Array:
    """``fn(counts, range)`` (numpy, one histogram) for each histogram of a stack (``counts (..., num_bins)``,
    ``range (...)``), as float32; through ``pure_callback`` when traced (weights calibrated per layer)."""

    def run(c, r):
        c, r = np.asarray(c), np.asarray(r)
        flat = [fn(ci, ri) for ci, ri in zip(c.reshape(-1, c.shape[-1]), r.reshape(-1))]
        return np.asarray(flat, np.float32).reshape(r.shape)

    if isinstance(counts, jax.core.Tracer) or isinstance(range_, jax.core.Tracer):
        return jax.pure_callback(run, jax.ShapeDtypeStruct(jnp.shape(range_), jnp.float32), counts, range_,
                                 vmap_method="expand_dims")
    return jnp.asarray(run(counts, range_))


@functools.partial(jax.jit, static_argnames=("spec", "start_bin", "stride"))
def mse_amax(counts: jax.Array, range_: jax.Array, spec, start_bin: int = 128, stride: int = 1) -> jax.Array:
    """The bin centre ``c_i`` (``i >= start_bin``) minimising the count-weighted squared error of the spec's
    ``fake_quant(centres, c_i)``."""
    nb = counts.shape[-1]
    centres = range_ * ((jnp.arange(nb, dtype=jnp.float32) + 0.5) / nb)
    cands = jnp.arange(start_bin, nb, stride)

    def err(i):
        return jnp.sum(counts * (spec.format.fake_quant(centres, spec, centres[i]) - centres) ** 2)

    e = lax.map(err, cands, batch_size=_CHUNK)
    return centres[cands[jnp.argmin(e)]]


def histogram_amax(fn, counts: jax.Array, range_: jax.Array) -> jax.Array:
    """``fn(counts, range)`` (one histogram, jitted) for each histogram of a stack: ``counts (..., num_bins)``,
    ``range (...)``; a Python loop over concrete stacks (one compilation), ``vmap`` under a transformation."""
    lead = range_.shape
    if not lead:
        return fn(counts, range_)
    c, r = counts.reshape((-1, counts.shape[-1])), range_.reshape(-1)
    if isinstance(c, jax.core.Tracer) or isinstance(r, jax.core.Tracer):
        return jax.vmap(fn)(c, r).reshape(lead)
    return jnp.stack([fn(c[k], r[k]) for k in range(r.shape[0])]).reshape(lead)
