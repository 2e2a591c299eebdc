"""Pytrees stacked on a new leading axis: the per-layer params, state and caches a ``lax.scan`` runs over.

Example:
  >>> stacked = stack_trees([{"w": jnp.zeros(3)}, {"w": jnp.ones(3)}])
  >>> stacked["w"].shape
  (2, 3)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["stack_trees"]


@jax.jit  # one program, not one eager compile per leaf shape
def stack_trees(trees: list):
    """``out[leaf][i] = trees[i][leaf]``: the leaves of ``trees`` (one structure, equal shapes per leaf) stacked on
    a new axis 0.

    Raises ``ValueError`` when the structures or a leaf's shapes differ.
    """
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *trees)
