"""Where a weight quantizer's canonical axes live in the operand the graph actually multiplies.

jq quantizes a weight ``w`` in its canonical view ``c = reshape(transpose(w, perm), shape)`` (``[out, in]``
for a matmul, ``[O, I, *k]`` for a convolution; see :class:`jq.quantizer.CanonicalView`). ONNX Q/DQ nodes act
on ``w`` itself, with one ``axis`` for per-channel and blocked scales. When every non-unit canonical axis is
one axis of ``w`` (the reshape only merges or splits size-1 axes) the view is *direct*: per-channel axis 0
of a Flax ``Dense`` kernel ``[in, out]`` is operand axis 1, its block axis -1 is operand axis 0, and a conv
kernel ``HWIO`` keeps ``O`` at axis 3. A ``DenseGeneral`` kernel ``[d, heads, head_dim]`` merges two axes into
``out``; such weights are exported in the canonical layout and reshaped/transposed back in the graph.

Example:
  >>> from jq.quantizer import CanonicalView
  >>> lay = WeightLayout.create(CanonicalView((1, 0), (4, 8), 0), (8, 4))
  >>> lay.direct, lay.operand_axis(0), lay.operand_axis(1)
  (True, 1, 0)
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jq.quantizer import CanonicalView

__all__ = ["WeightLayout"]


def _group(permuted: tuple[int, ...], canonical: tuple[int, ...]) -> tuple[tuple[int, ...], ...] | None:
    """Permuted axes (non-unit ones) that make up each canonical axis, or None if a reshape splits an axis."""
    nu = [(j, n) for j, n in enumerate(permuted) if n != 1]
    groups, i = [], 0
    for c in canonical:
        if c == 1:
            groups.append(())
            continue
        g, prod = [], 1
        while prod < c and i < len(nu):
            g.append(nu[i][0])
            prod *= nu[i][1]
            i += 1
        if prod != c:
            return None
        groups.append(tuple(g))
    return tuple(groups) if i == len(nu) else None


@dataclasses.dataclass(frozen=True)
class WeightLayout:
    """The canonical view of a weight operand of ``shape``, with its axis correspondence.

    Attributes:
      view: the :class:`~jq.quantizer.CanonicalView`.
      shape: the operand's shape.
      groups: for each canonical axis, the operand axes it is made of (non-unit ones), or None when the
        view splits an operand axis.
    """

    view: CanonicalView
    shape: tuple[int, ...]
    groups: tuple[tuple[int, ...], ...] | None

    @classmethod
    def create(cls, view: CanonicalView, shape) -> WeightLayout:
        shape = tuple(int(s) for s in shape)
        permuted = tuple(shape[p] for p in view.perm)
        groups = _group(permuted, tuple(int(s) for s in view.shape))
        if groups is not None:
            groups = tuple(tuple(view.perm[j] for j in g) for g in groups)
        return cls(view, shape, groups)

    @property
    def direct(self) -> bool:
        """True when every canonical axis is at most one operand axis."""
        return self.groups is not None and all(len(g) <= 1 for g in self.groups)

    def operand_axis(self, canonical_axis: int) -> int:
        """The operand axis of a (non-unit) canonical axis; needs a :attr:`direct` layout."""
        if not self.direct:
            raise ValueError(f"canonical view {self.view} is not a permutation of operand shape {self.shape}")
        g = self.groups[canonical_axis % len(self.groups)]
        if not g:
            raise ValueError(f"canonical axis {canonical_axis} has size 1 and no operand axis")
        return g[0]

    def stats_to_operand(self, stats: np.ndarray) -> np.ndarray:
        """Move a canonical-rank statistic (scales: each axis full, counted in blocks, or 1) to operand rank.

        The result has the operand's rank, the statistic's sizes on the corresponding operand axes and 1
        elsewhere, as ONNX blocked Q/DQ scales need.
        """
        if not self.direct:
            raise ValueError(f"canonical view {self.view} is not a permutation of operand shape {self.shape}")
        stats = np.asarray(stats)
        if stats.ndim != len(self.groups):
            raise ValueError(f"statistic of rank {stats.ndim} for a canonical view of rank {len(self.groups)}")
        keep = [k for k, g in enumerate(self.groups) if g]
        if any(stats.shape[k] != 1 for k, g in enumerate(self.groups) if not g):
            raise ValueError(f"statistic {stats.shape} has a non-unit size on a unit canonical axis")
        s = stats.reshape([stats.shape[k] for k in keep])
        axes = [self.groups[k][0] for k in keep]
        order = np.argsort(axes)
        s = np.transpose(s, order)
        target = [1] * len(self.shape)
        for k in keep:
            target[self.groups[k][0]] = stats.shape[k]
        return s.reshape(target)

    def to_operand(self, canonical: np.ndarray) -> np.ndarray:
        """The inverse of the view for a full canonical-shaped array (always possible)."""
        permuted = tuple(self.shape[p] for p in self.view.perm)
        inv = tuple(int(i) for i in np.argsort(self.view.perm))
        return np.transpose(np.reshape(np.asarray(canonical), permuted), inv)

    @property
    def permuted_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[p] for p in self.view.perm)

    @property
    def inverse_perm(self) -> tuple[int, ...]:
        return tuple(int(i) for i in np.argsort(self.view.perm))

    @property
    def size(self) -> int:
        return math.prod(self.shape)
