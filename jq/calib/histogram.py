"""The amax of a histogram of ``|x|``: percentile, entropy (TensorRT's KL) and MSE (ModelOpt's methods).

Each takes the bin ``counts`` (``(num_bins,)``) and the histogram's ``range`` (bin edges ``e_i = i range /
num_bins``, centres ``c_i = (e_i + e_{i+1}) / 2``) of one tensor; :func:`histogram_amax` maps one of them over
the leading axes of a stacked :class:`~jq.calib.stats.Histogram` (layers, experts).

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
  >>> float(percentile_amax(h.counts, h.range, 50.0))
  499.0
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["percentile_amax", "entropy_amax", "mse_amax", "histogram_amax", "quant_levels", "METHODS"]

METHODS = ("percentile", "entropy", "mse")
_CHUNK = 128  # candidates evaluated together (memory: _CHUNK x num_bins floats)


def quant_levels(spec) -> int:
    """Quantization levels per sign the entropy method merges bins into: ``2^(bits - 1 + unsigned)``."""
    bits = spec.num_bits if isinstance(spec.num_bits, int) else 1 + sum(spec.num_bits)
    return 1 << (bits - 1 + int(spec.unsigned))


def percentile_amax(counts: jax.Array, range_: jax.Array, percentile: float = 99.99) -> jax.Array:
    """``e_i`` for the first bin ``i`` whose cumulative count is ``>= percentile/100`` of the total."""
    nb = counts.shape[-1]
    cum = jnp.cumsum(counts)
    i = jnp.argmax(cum >= (percentile / 100.0) * cum[-1])
    return range_ * (i.astype(jnp.float32) / nb)


def _kl_one(b, cum, total, i, levels):
    """``KL(P || Q)`` for threshold bin ``i`` (see the module docstring); ``b`` with bin 0 replaced."""
    nb = b.shape[-1]
    j = jnp.arange(nb)
    inside = j < i
    outliers = total - cum[i]  # counts in bins >= i  (cum[k] = sum of bins < k)
    p = jnp.where(inside, b, 0.0) + jnp.where(j == i - 1, outliers, 0.0)
    level = (j * levels) // jnp.maximum(i, 1)
    nonzero = inside & (b > 0)
    level_sum = jnp.zeros(levels).at[level].add(jnp.where(inside, b, 0.0), mode="drop")
    level_nnz = jnp.zeros(levels).at[level].add(nonzero.astype(jnp.float32), mode="drop")
    avg = level_sum[jnp.minimum(level, levels - 1)] / jnp.maximum(level_nnz[jnp.minimum(level, levels - 1)], 1.0)
    q = jnp.where(nonzero, avg, 0.0)
    s_in = total - outliers  # sum of q
    # KL = sum_j (p_j / T) log((p_j / T) / (q_j / S_in)) = (1/T) sum_j p_j log(p_j / q_j) + log(S_in / T)
    safe_q = jnp.where(q > 0, q, 1.0)
    terms = jnp.where(p > 0, p * (jnp.log(jnp.where(p > 0, p, 1.0)) - jnp.log(safe_q)), 0.0)
    infinite = jnp.any((p > 0) & (q <= 0))
    kl = jnp.sum(terms) / total + jnp.log(jnp.maximum(s_in, 1e-30) / total)
    return jnp.where(infinite | (s_in <= 0), jnp.inf, kl)


def entropy_amax(counts: jax.Array, range_: jax.Array, levels: int = 128, start_bin: int = 128,
                 stride: int = 1) -> jax.Array:
    """TensorRT's KL-divergence threshold (see the module docstring)."""
    nb = counts.shape[-1]
    b = counts.astype(jnp.float32).at[0].set(counts[1])
    cum = jnp.concatenate([jnp.zeros(1, jnp.float32), jnp.cumsum(b)])
    total = cum[-1]
    cands = jnp.arange(start_bin, nb + 1, stride)
    kl = lax.map(lambda i: _kl_one(b, cum, total, i, levels), cands, batch_size=_CHUNK)
    last_min = kl.shape[0] - 1 - jnp.argmin(kl[::-1])
    amax = range_ * (cands[last_min].astype(jnp.float32) / nb)
    return jnp.where(total > 0, amax, range_)


def mse_amax(counts: jax.Array, range_: jax.Array, fake_quant, start_bin: int = 128, stride: int = 1) -> jax.Array:
    """The bin centre ``c_i`` (``i >= start_bin``) minimising the count-weighted squared error of
    ``fake_quant(centres, amax)``."""
    nb = counts.shape[-1]
    centres = range_ * ((jnp.arange(nb, dtype=jnp.float32) + 0.5) / nb)
    cands = jnp.arange(start_bin, nb, stride)

    def err(i):
        amax = centres[i]
        return jnp.sum(counts * (fake_quant(centres, amax) - centres) ** 2)

    e = lax.map(err, cands, batch_size=_CHUNK)
    return centres[cands[jnp.argmin(e)]]


def histogram_amax(fn, counts: jax.Array, range_: jax.Array) -> jax.Array:
    """``fn(counts, range)`` for each histogram of a stack: ``counts (..., num_bins)``, ``range (...)``."""
    lead = range_.shape
    if not lead:
        return fn(counts, range_)
    flat = lax.map(lambda cr: fn(*cr), (counts.reshape((-1, counts.shape[-1])), range_.reshape(-1)))
    return flat.reshape(lead)
