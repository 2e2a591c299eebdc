"""The exact solver of auto_quantize: one option per group, least total score within a cost budget.

A multiple-choice knapsack::

    minimise   sum_g score[g][k_g]     subject to   sum_g cost[g][k_g] <= budget

solved exactly by dynamic programming over Pareto frontiers: after group ``g`` the frontier holds, for every
reachable total cost, the least total score, with dominated states (costlier and not better) dropped and states
that cannot fit the cheapest options of the remaining groups pruned. Its size is at most the number of distinct
reachable costs; with a few distinct layer sizes (transformers) it stays small. numpy only.

Example:
  >>> solve([np.array([1.0, 2.0]), np.array([1.0, 2.0])], [np.array([5.0, 0.0]), np.array([1.0, 0.0])], 3.0)
  [1, 0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["solve", "cost_range"]

_RTOL = 1e-9  # budget comparisons tolerate float summation order


def cost_range(costs: Sequence[np.ndarray]) -> tuple[float, float]:
    """``(cheapest, most expensive)`` total cost over all choices."""
    return float(sum(np.min(c) for c in costs)), float(sum(np.max(c) for c in costs))


def solve(costs: Sequence[np.ndarray], scores: Sequence[np.ndarray], budget: float) -> list[int]:
    """The option index per group minimising the total score with total cost ``<= budget`` (ties: the cheaper).

    Args:
      costs, scores: one 1-D array per group, one entry per option (same lengths per group).
      budget: the largest total cost allowed.

    Raises:
      ValueError: the budget is below the cheapest choice, or the shapes do not match.
    """
    if len(costs) != len(scores) or any(np.shape(c) != np.shape(s) or np.ndim(c) != 1 for c, s in zip(costs, scores)):
        raise ValueError("costs and scores need one 1-D array per group, of equal lengths")
    costs = [np.asarray(c, np.float64) for c in costs]
    scores = [np.asarray(s, np.float64) for s in scores]
    lo, _ = cost_range(costs)
    limit = budget + _RTOL * max(abs(budget), 1.0)
    if lo > limit:
        raise ValueError(f"budget {budget} is below the cheapest choice {lo}")
    rest = np.concatenate([np.cumsum([np.min(c) for c in costs[::-1]])[::-1], [0.0]])  # cheapest cost of groups g..
    fc, fs = np.zeros(1), np.zeros(1)
    back = []
    for g, (c, s) in enumerate(zip(costs, scores)):
        k = len(c)
        tc = (fc[:, None] + c[None, :]).ravel()
        ts = (fs[:, None] + s[None, :]).ravel()
        parent = np.repeat(np.arange(len(fc)), k)
        choice = np.tile(np.arange(k), len(fc))
        ok = tc + rest[g + 1] <= limit
        tc, ts, parent, choice = tc[ok], ts[ok], parent[ok], choice[ok]
        order = np.lexsort((ts, tc))  # by cost, then score
        tc, ts, parent, choice = tc[order], ts[order], parent[order], choice[order]
        best_before = np.concatenate([[np.inf], np.minimum.accumulate(ts)[:-1]])
        keep = ts < best_before  # a state survives only if it beats every cheaper one
        back.append((parent[keep], choice[keep]))
        fc, fs = tc[keep], ts[keep]
    i = len(fc) - 1  # scores strictly decrease along the frontier: the last state is the best
    picks = []
    for parent, choice in reversed(back):
        picks.append(int(choice[i]))
        i = int(parent[i])
    return picks[::-1]
