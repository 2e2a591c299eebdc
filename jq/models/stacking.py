"""Pytrees stacked on a new leading axis: the per-layer params, state and caches a ``lax.scan`` runs over.

Example:
  >>> stacked = stack_trees([{"w": jnp.zeros(3)}, {"w": jnp.ones(3)}])
  >>> stacked["w"].shape
  (2, 3)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["layer_count", "stack_trees", "unstack_trees"]


@jax.jit  # one program, not one eager compile per leaf shape
def stack_trees(trees: list):
    """``out[leaf][i] = trees[i][leaf]``: the leaves of ``trees`` (one structure, equal shapes per leaf) stacked on
    a new axis 0.

    Raises ``ValueError`` when the structures or a leaf's shapes differ.
    """
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *trees)


def unstack_trees(tree) -> list:
    """The inverse of :func:`stack_trees`: ``[tree[leaf][i] for i in range(n)]``, each layer's leaves in buffers of
    their own (sliced eagerly, so a program that reads layer ``i`` reads its buffer, not a slice of the stack).

    Example:
      >>> [t["w"].shape for t in unstack_trees({"w": jnp.zeros((2, 3))})]
      [(3,), (3,)]
    """
    n = layer_count(tree)
    return [jax.tree_util.tree_map(lambda a, i=i: a[i], tree) for i in range(n)]


def layer_count(layers) -> int:
    """The number of layers of ``layers``: a list of per-layer trees, or a tree stacked on axis 0."""
    if isinstance(layers, (list, tuple)):
        return len(layers)
    return jax.tree_util.tree_leaves(layers)[0].shape[0]
