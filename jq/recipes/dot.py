"""``recipe_dot``: any ``lax.dot_general`` with one weight operand, run as a recipe linear.

The operands are brought to the canonical views of :func:`~jq.recipes.linear.linear` with layout-only ops:
the activation's free dims flatten to ``T``, the weight's free dims to ``N``, the contracting dims (in
``dimension_numbers`` order) to ``K``; batch dims (experts, heads) are flattened to one axis ``B`` and the
linear is ``vmap``-ed over it, with one key per batch element and, for DelayedScaling, a state with leading
axes equal to the batch shape (one history per expert). The result has ``lax.dot_general``'s layout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jq.recipes.gemm import fake_gemm
from jq.recipes.linear import linear

__all__ = ["recipe_dot"]


def _canonical(a: jax.Array, batch: Sequence[int], contract: Sequence[int]):
    """Transpose ``a`` to (batch, free, contract) and reshape to ``[B, F, C]``; also return the free shape."""
    free = [d for d in range(a.ndim) if d not in batch and d not in contract]
    t = jnp.transpose(a, (*batch, *free, *contract))
    b = math.prod(a.shape[d] for d in batch)
    f = math.prod(a.shape[d] for d in free)
    c = math.prod(a.shape[d] for d in contract)
    return t.reshape(b, f, c), tuple(a.shape[d] for d in free)


def recipe_dot(
    recipe,
    lhs: jax.Array,
    rhs: jax.Array,
    *,
    dimension_numbers,
    weight_argnum: int = 1,
    state=None,
    key: jax.Array | None = None,
    site_id: int | None = None,
    axis_names: tuple[str, ...] = (),
    gemm: Callable = fake_gemm,
    preferred_element_type=None,
) -> jax.Array:
    """``lax.dot_general(lhs, rhs, dimension_numbers)`` with the recipe's quantized forward and backward.

    Args:
      recipe: the training recipe.
      lhs, rhs: the operands; ``weight_argnum`` (0 or 1) says which one is the weight (quantized as W: 2D
        blocks, E4M3, ...); the other is the activation x. Its cotangent dy is quantized as the gradient.
      dimension_numbers: ``((lhs_contract, rhs_contract), (lhs_batch, rhs_batch))`` as for ``lax.dot_general``.
      state: DelayedScaling state of this site, leading axes = the batch shape (``recipe.init_state(batch)``).
      key: PRNG key of the step; ``site_id`` (an int) is folded in so every site draws different bits.
      axis_names, gemm: see :func:`~jq.recipes.linear.linear`.
      preferred_element_type: output dtype (default ``result_type(lhs, rhs)``).

    Example:
      >>> x, k = jnp.ones((2, 5, 32)), jnp.ones((32, 8))          # a Flax Dense kernel [in, out]
      >>> recipe_dot(Float8CurrentScaling(), x, k, dimension_numbers=(((2,), (0,)), ((), ()))).shape
      (2, 5, 8)
    """
    (lc, rc), (lb, rb) = dimension_numbers
    if weight_argnum not in (0, 1):
        raise ValueError(f"recipe_dot: weight_argnum must be 0 or 1, got {weight_argnum}")
    if len(lc) != len(rc) or len(lb) != len(rb):
        raise ValueError(f"recipe_dot: mismatched dimension_numbers {dimension_numbers}")
    if weight_argnum == 1:
        x, w, xc, wc, xb, wb = lhs, rhs, lc, rc, lb, rb
    else:
        x, w, xc, wc, xb, wb = rhs, lhs, rc, lc, rb, lb
    batch_shape = tuple(x.shape[d] for d in xb)
    if batch_shape != tuple(w.shape[d] for d in wb):
        raise ValueError(f"recipe_dot: batch dims differ: {batch_shape} vs {tuple(w.shape[d] for d in wb)}")
    x3, x_free = _canonical(x, xb, xc)
    w3, w_free = _canonical(w, wb, wc)
    if x3.shape[2] != w3.shape[2]:
        raise ValueError(f"recipe_dot: contracting sizes differ: {x3.shape[2]} vs {w3.shape[2]}")
    out_dtype = preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype)
    nb = x3.shape[0]

    if key is not None and site_id is not None:
        key = jax.random.fold_in(key, site_id)

    def one(x2, w2, st, k):
        return linear(recipe, x2, w2, state=st, key=k, axis_names=axis_names, gemm=gemm, out_dtype=out_dtype)

    if not batch_shape:
        y3 = one(x3[0], w3[0], state, key)[None]
    else:  # one linear per batch element: own key, own state slice (leading batch axes flattened to B)
        keys = None if key is None else jax.random.split(key, nb)
        if state is not None:
            state = jax.tree.map(lambda s: s.reshape(nb, *s.shape[len(batch_shape):]), state)
        y3 = jax.vmap(one)(x3, w3, state, keys)  # [B, T, N]
    y = y3.reshape(*batch_shape, *x_free, *w_free)
    if weight_argnum == 0:  # dot_general puts lhs (= w) free dims before rhs (= x) free dims
        nbd, nx = len(batch_shape), len(x_free)
        perm = (*range(nbd), *range(nbd + nx, y.ndim), *range(nbd, nbd + nx))
        y = jnp.transpose(y, perm)
    return y
