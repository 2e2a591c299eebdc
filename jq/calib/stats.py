"""Typed calibration statistics: what a pass over the data accumulates, and how partial results combine.

A statistic is a pytree (so it flows through ``jit``, ``lax.scan``, ``while_loop``, ``cond`` and ``shard_map``)
with four rules, written next to each other as for a JAX primitive:

* ``merge(other)``: combine two partial results (two batches, two loop iterations, two branches);
* ``reduce_steps()``: combine results stacked along a leading axis (the iterations of a non-layer scan);
* ``all_reduce(axis_names)``: combine across devices inside ``shard_map`` (``pmax`` / ``psum``);
* ``identity_like()``: the neutral element of ``merge`` (a ``while`` loop's initial carry, a branch that
  never ran).

Statistics are stored in a :class:`Stats` dict keyed by ``(name, kind)``: the quantizer or site name and the
statistic's ``kind``. Every statistic records whether the values it saw were all finite, so calibration can
name the quantizer and batch that first saw a NaN or inf.

Example:
  >>> a = Amax.of(jnp.array([1.0, -3.0])); b = Amax.of(jnp.array([2.0]))
  >>> float(a.merge(b).value)
  3.0
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["Statistic", "Amax", "Sum", "Finite", "Histogram", "Stats", "merge_stats", "reduce_steps", "all_reduce",
           "identity_like", "histogram_range", "rebin"]


class Statistic:
    """Base of the statistic types (see the module docstring for the four rules)."""

    kind: ClassVar[str] = ""

    def merge(self, other):
        raise NotImplementedError

    def reduce_steps(self):
        raise NotImplementedError

    def all_reduce(self, axis_names):
        raise NotImplementedError

    def identity_like(self):
        raise NotImplementedError

    @property
    def finite(self) -> jax.Array:
        raise NotImplementedError


def _pytree(cls):
    """Register a dataclass statistic as a pytree whose fields are all children."""
    fields = [f.name for f in dataclasses.fields(cls)]
    jax.tree_util.register_dataclass(cls, data_fields=fields, meta_fields=[])
    return cls


@_pytree
@dataclasses.dataclass
class Amax(Statistic):
    """A running ``max|x|`` (any shape: per tensor, per axis, per block, per channel), and finiteness.

    ``value`` is the amax; ``all_finite`` is False once a NaN or inf was seen.
    """

    value: jax.Array
    all_finite: jax.Array
    kind: ClassVar[str] = "amax"

    @classmethod
    def of(cls, x: jax.Array, value: jax.Array | None = None) -> Amax:
        """The statistic of one tensor; ``value`` is its amax when already computed (e.g. per block)."""
        x = jnp.asarray(x)
        v = jnp.max(jnp.abs(x.astype(jnp.float32))) if value is None else value
        return cls(jnp.asarray(v, jnp.float32), jnp.all(jnp.isfinite(x)))

    def merge(self, other):
        return Amax(jnp.maximum(self.value, other.value), jnp.logical_and(self.all_finite, other.all_finite))

    def reduce_steps(self):
        return Amax(jnp.max(self.value, axis=0), jnp.all(self.all_finite, axis=0))

    def all_reduce(self, axis_names):
        return Amax(lax.pmax(self.value, axis_names), lax.pmin(self.all_finite.astype(jnp.int32), axis_names) > 0)

    def identity_like(self):
        return Amax(jnp.zeros_like(self.value), jnp.ones_like(self.all_finite))

    @property
    def finite(self):
        return self.all_finite


@_pytree
@dataclasses.dataclass
class Sum(Statistic):
    """A running sum (per-channel ``sum|x|``, a token count, search losses, a Gram matrix ``XᵀX``).

    ``kind`` is set per instance purpose by subclasses; plain sums use ``"sum"``.
    """

    value: jax.Array
    all_finite: jax.Array
    kind: ClassVar[str] = "sum"

    @classmethod
    def of(cls, value: jax.Array) -> Sum:
        value = jnp.asarray(value, jnp.float32)
        return cls(value, jnp.all(jnp.isfinite(value)))

    def merge(self, other):
        return type(self)(self.value + other.value, jnp.logical_and(self.all_finite, other.all_finite))

    def reduce_steps(self):
        return type(self)(jnp.sum(self.value, axis=0), jnp.all(self.all_finite, axis=0))

    def all_reduce(self, axis_names):
        return type(self)(lax.psum(self.value, axis_names),
                          lax.pmin(self.all_finite.astype(jnp.int32), axis_names) > 0)

    def identity_like(self):
        return type(self)(jnp.zeros_like(self.value), jnp.ones_like(self.all_finite))

    @property
    def finite(self):
        return self.all_finite


@_pytree
@dataclasses.dataclass
class Finite(Statistic):
    """Only whether every value seen was finite (dynamic quantizers keep no amax but must see no NaN)."""

    all_finite: jax.Array
    kind: ClassVar[str] = "finite"

    @classmethod
    def of(cls, x: jax.Array) -> Finite:
        return cls(jnp.all(jnp.isfinite(jnp.asarray(x))))

    def merge(self, other):
        return Finite(jnp.logical_and(self.all_finite, other.all_finite))

    def reduce_steps(self):
        return Finite(jnp.all(self.all_finite, axis=0))

    def all_reduce(self, axis_names):
        return Finite(lax.pmin(self.all_finite.astype(jnp.int32), axis_names) > 0)

    def identity_like(self):
        return Finite(jnp.ones_like(self.all_finite))

    @property
    def finite(self):
        return self.all_finite


def histogram_range(amax: jax.Array) -> jax.Array:
    """The upper edge of a histogram of values up to ``amax``: the smallest power of two ``>= amax`` (0 for 0).

    Ranges on the power-of-two grid make every merge exact: two ranges differ by a factor ``2^k`` and each bin
    of the smaller one lies inside one bin of the larger one (the merge adds ``2^k`` neighbours).

    Example:
      >>> [float(histogram_range(jnp.float32(v))) for v in (0.0, 0.3, 0.5, 3.0)]
      [0.0, 0.5, 0.5, 4.0]
    """
    amax = jnp.asarray(amax, jnp.float32)
    mant, exp = jnp.frexp(amax)  # amax = mant * 2^exp, mant in [0.5, 1)
    up = jnp.ldexp(jnp.float32(1.0), jnp.minimum(exp, 127))  # 2^exp; amaxes above 2^127 saturate there
    return jnp.where(amax <= 0, 0.0, jnp.where(mant == 0.5, amax, up)).astype(jnp.float32)


def _bin_shift(old_range: jax.Array, new_range: jax.Array) -> jax.Array:
    """``k`` with ``new_range = 2^k old_range`` (both on the power-of-two grid; a zero old range: 31)."""
    _, e_old = jnp.frexp(old_range)
    _, e_new = jnp.frexp(new_range)
    return jnp.where(old_range > 0, jnp.clip(e_new - e_old, 0, 31), 31).astype(jnp.int32)


def rebin(counts: jax.Array, old_range: jax.Array, new_range: jax.Array) -> jax.Array:
    """Counts of a histogram over ``[0, old_range]`` re-binned onto ``[0, new_range]`` (``new >= old``).

    With ``new_range = 2^k old_range`` bin ``i`` lands in bin ``i >> k``; every count is kept (exactly: the
    sums are of integers). Leading axes of ``counts`` (``(..., num_bins)``) pair with those of the ranges.
    """
    nb = counts.shape[-1]
    shift = _bin_shift(old_range, new_range)

    def one(c, k):
        dest = jnp.right_shift(jnp.arange(nb, dtype=jnp.int32), k)
        return jnp.zeros_like(c).at[dest].add(c)

    lead = counts.shape[:-1]
    flat = jax.vmap(one)(counts.reshape((-1, nb)), jnp.broadcast_to(shift, lead).reshape(-1))
    return flat.reshape(counts.shape)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _histogram(x, num_bins: int, batch: int):
    if batch:
        return jax.vmap(lambda v: _histogram(v, num_bins, batch - 1))(x)
    a = jnp.abs(x.astype(jnp.float32)).reshape(-1)
    finite = jnp.isfinite(a)
    a = jnp.where(finite, a, 0.0)
    r = histogram_range(jnp.max(a, initial=0.0))
    safe = jnp.where(r > 0, r, 1.0)
    idx = jnp.clip(jnp.floor(a / safe * num_bins), 0, num_bins - 1).astype(jnp.int32)  # exact: r = 2^k
    return jnp.bincount(idx, length=num_bins).astype(jnp.float32), r, jnp.all(finite)


@_pytree
@dataclasses.dataclass
class Histogram(Statistic):
    """Bin counts of ``|x|`` over ``[0, range]`` (ModelOpt's ``HistogramCalibrator``), and finiteness.

    ``counts`` has shape ``(..., num_bins)`` and ``range`` the leading shape (one histogram per layer of a
    layer scan, per expert ...). Bin ``i`` holds ``i <= |x| num_bins / range < i + 1`` (values equal to the
    range go to the last bin). ``range`` is the smallest power of two at or above the largest finite
    ``|x|`` (:func:`histogram_range`); where two histograms meet (batches, loop iterations, branches,
    devices) the one with the smaller range is re-binned onto the larger (:func:`rebin`) and the counts add.
    ModelOpt grows the number of bins instead; with static shapes under ``jit`` the bin count stays fixed,
    and the power-of-two ranges make the result independent of how the data is split (exact counts, any
    order), so a sharded calibration gives the histogram of one device. Non-finite values count in bin 0
    and clear ``all_finite``.

    Example:
      >>> h = Histogram.of(jnp.array([0.5, -1.0, 3.0]), num_bins=4)   # range 4: bins of width 1
      >>> h.counts.tolist(), float(h.range)
      ([1.0, 1.0, 0.0, 1.0], 4.0)
    """

    counts: jax.Array
    range: jax.Array
    all_finite: jax.Array
    kind: ClassVar[str] = "histogram"

    @classmethod
    def of(cls, x: jax.Array, num_bins: int = 2048, batch: int = 0) -> Histogram:
        """The histogram of one tensor; its ``batch`` leading axes get one histogram each."""
        counts, r, finite = _histogram(jnp.asarray(x), num_bins, batch)
        return cls(counts, r, finite)

    @property
    def num_bins(self) -> int:
        return self.counts.shape[-1]

    def edges(self) -> jax.Array:
        """Bin edges ``i range / num_bins``, shape ``(..., num_bins + 1)``."""
        i = jnp.arange(self.num_bins + 1, dtype=jnp.float32)
        return self.range[..., None] * (i / self.num_bins)

    def merge(self, other):
        r = jnp.maximum(self.range, other.range)
        counts = rebin(self.counts, self.range, r) + rebin(other.counts, other.range, r)
        return Histogram(counts, r, jnp.logical_and(self.all_finite, other.all_finite))

    def reduce_steps(self):
        r = jnp.max(self.range, axis=0)
        counts = rebin(self.counts, self.range, jnp.broadcast_to(r, self.range.shape))
        return Histogram(jnp.sum(counts, axis=0), r, jnp.all(self.all_finite, axis=0))

    def all_reduce(self, axis_names):
        r = lax.pmax(self.range, axis_names)
        counts = lax.psum(rebin(self.counts, self.range, r), axis_names)
        return Histogram(counts, r, lax.pmin(self.all_finite.astype(jnp.int32), axis_names) > 0)

    def identity_like(self):
        return Histogram(jnp.zeros_like(self.counts), jnp.zeros_like(self.range), jnp.ones_like(self.all_finite))

    @property
    def finite(self):
        return self.all_finite


Key = tuple  # (quantizer or site name, statistic kind)
Stats = dict  # Key -> Statistic


def merge_stats(a: Stats, b: Stats) -> Stats:
    """``a`` with every statistic of ``b`` merged in (keys of either)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = out[k].merge(v) if k in out else v
    return out


def reduce_steps(stats: Stats) -> Stats:
    """Every statistic reduced over its leading (scan iteration) axis."""
    return {k: v.reduce_steps() for k, v in stats.items()}


def all_reduce(stats: Stats, axis_names) -> Stats:
    """Every statistic combined across the devices of ``axis_names``."""
    return {k: v.all_reduce(axis_names) for k, v in stats.items()}


def identity_like(stats: Stats) -> Stats:
    """Neutral statistics with the structure (and shapes) of ``stats`` (also of ``jax.eval_shape`` outputs)."""
    return {k: jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), v).identity_like()
            for k, v in stats.items()}
