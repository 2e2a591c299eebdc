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
from typing import ClassVar

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["Statistic", "Amax", "Sum", "Finite", "Stats", "merge_stats", "reduce_steps", "all_reduce", "identity_like"]


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
