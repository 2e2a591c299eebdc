"""Block layouts: split axes into fixed-size blocks (zero-padding partial blocks) and merge them back.

A block layout maps an array of shape ``(..., n, ...)`` to ``(..., ceil(n/b), b, ...)`` for each blocked
axis. Reductions over the in-block axes with ``keepdims=True`` give per-block statistics that broadcast
back over the blocked array. Zero padding never changes an absolute maximum, and padded positions are
sliced off again by :meth:`BlockLayout.merge`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

__all__ = ["BlockLayout", "normalize_axes", "reduce_amax"]


def normalize_axes(axes: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    """Turn an axis spec (int, tuple or None) into sorted non-negative axes; raises on out-of-range axes."""
    if axes is None:
        return ()
    if isinstance(axes, int):
        axes = (axes,)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for a tensor of rank {ndim}")
        out.append(a % ndim)
    return tuple(sorted(set(out)))


def reduce_amax(x: jax.Array, keep_axes: int | Sequence[int] | None = None) -> jax.Array:
    """``max|x|`` over every axis except ``keep_axes`` (ModelOpt's ``axis`` semantics), keeping dims.

    Computed in float32. ``keep_axes=None`` gives a per-tensor amax of shape ``()``.
    """
    x = jnp.abs(jnp.asarray(x).astype(jnp.float32))
    if keep_axes is None:
        return jnp.max(x)
    keep = normalize_axes(keep_axes, x.ndim)
    reduce = tuple(a for a in range(x.ndim) if a not in keep)
    return jnp.max(x, axis=reduce, keepdims=True) if reduce else x


@dataclasses.dataclass(frozen=True)
class BlockLayout:
    """Blocks of ``sizes[axis]`` elements along each blocked axis of a tensor of ``shape``.

    A block size of ``None`` (or ``0``) means the whole axis is one block (per-token scaling).

    Example:
      >>> layout = BlockLayout.create((4, 40), {-1: 16})
      >>> layout.blocked_shape
      (4, 3, 16)
    """

    shape: tuple[int, ...]
    sizes: tuple[tuple[int, int], ...]  # (axis, block size) pairs, axis non-negative, ascending

    @classmethod
    def create(cls, shape: Sequence[int], block_sizes: Mapping[int, int | None]) -> BlockLayout:
        shape = tuple(int(s) for s in shape)
        sizes = {}
        for axis, size in block_sizes.items():
            (a,) = normalize_axes(axis, len(shape))
            size = shape[a] if not size else int(size)
            if size <= 0:
                raise ValueError(f"block size along axis {axis} must be positive, got {size}")
            sizes[a] = size
        return cls(shape, tuple(sorted(sizes.items())))

    @property
    def padded_shape(self) -> tuple[int, ...]:
        shape = list(self.shape)
        for a, b in self.sizes:
            shape[a] = math.ceil(shape[a] / b) * b
        return tuple(shape)

    @property
    def needs_padding(self) -> bool:
        return self.padded_shape != self.shape

    @property
    def blocked_shape(self) -> tuple[int, ...]:
        out = []
        sizes = dict(self.sizes)
        for a, n in enumerate(self.padded_shape):
            out.extend((n // sizes[a], sizes[a]) if a in sizes else (n,))
        return tuple(out)

    @property
    def num_blocks_shape(self) -> tuple[int, ...]:
        """Shape of per-block statistics with the in-block axes dropped, e.g. ``(4, 3)`` for ``(4, 40)/{-1:16}``."""
        sizes = dict(self.sizes)
        return tuple(n // sizes[a] if a in sizes else n for a, n in enumerate(self.padded_shape))

    @property
    def in_block_axes(self) -> tuple[int, ...]:
        """Axes of the blocked array that run inside a block (reduce over these for per-block stats)."""
        axes, pos = [], 0
        sizes = dict(self.sizes)
        for a in range(len(self.shape)):
            if a in sizes:
                axes.append(pos + 1)
                pos += 2
            else:
                pos += 1
        return tuple(axes)

    def split(self, x: jax.Array) -> jax.Array:
        """Zero-pad partial blocks and reshape to :attr:`blocked_shape`."""
        if tuple(x.shape) != self.shape:
            raise ValueError(f"expected shape {self.shape}, got {tuple(x.shape)}")
        if self.needs_padding:
            x = jnp.pad(x, [(0, p - n) for n, p in zip(self.shape, self.padded_shape)])
        return x.reshape(self.blocked_shape)

    def merge(self, xb: jax.Array) -> jax.Array:
        """Inverse of :meth:`split`: reshape back and drop the padding."""
        x = xb.reshape(self.padded_shape)
        if self.needs_padding:
            x = x[tuple(slice(0, n) for n in self.shape)]
        return x

    def block_amax(self, x: jax.Array) -> jax.Array:
        """Per-block ``max|x|`` in float32, shaped to broadcast against :meth:`split` output."""
        xb = jnp.abs(self.split(x).astype(jnp.float32))
        return jnp.max(xb, axis=self.in_block_axes, keepdims=True)

    def squeeze_stats(self, stats: jax.Array) -> jax.Array:
        """Drop the in-block singleton axes of a per-block statistic: result has :attr:`num_blocks_shape`."""
        return stats.reshape(self.num_blocks_shape)

    def expand_stats(self, stats: jax.Array) -> jax.Array:
        """Inverse of :meth:`squeeze_stats`: re-insert singleton in-block axes."""
        shape = list(self.blocked_shape)
        for a in self.in_block_axes:
            shape[a] = 1
        return jnp.reshape(stats, shape)
