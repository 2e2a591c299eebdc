"""Dependency levels of sites: which sites' inputs depend on which sites' outputs (GPTQ's sequential order).

A *unit* is one site in one layer: ``(site name, layer index)``, where the layer index has one entry per
enclosing layer scan (``()`` outside scans). A walk over the traced jaxpr gives every variable the set of
target units it depends on (transitively); a target site's output adds its own unit. Layer scans are walked
once per layer with the carry flowing from layer to layer, so layer ``l`` depends on layers ``< l``; other
scans and while loops are walked until their carries stop changing; cond takes the union of its branches.

The level of a unit is ``1 + max(level of the units its inputs depend on)`` (0 for none). Units that depend
on each other (a site inside a recurrence) share a level. Processing the levels in order, each level's inputs
depend only on units of earlier levels.

Example (a transformer block): q/k/v at level 0, the attention output projection at 1, the MLP up at 2,
its down projection at 3, the next block's q/k/v at 4.
  >>> levels = dependency_levels(traced, {"h_0.attn.q_proj", ...})
  >>> levels[0]
  [('h_0.attn.q_proj', ()), ('h_0.attn.k_proj', ()), ('h_0.attn.v_proj', ())]
"""

from __future__ import annotations

import collections

from jq.trace.control_flow import JaxprVisitor, bodies, scan_counts

__all__ = ["dependency_levels", "unit_dependencies"]

EMPTY: frozenset = frozenset()
MAX_FIXPOINT_STEPS = 64


def _union(vals) -> frozenset:
    out = EMPTY
    for v in vals:
        if v:
            out = out | v
    return out


class _DependencyWalker(JaxprVisitor):
    """Values are frozensets of the target units a variable depends on."""

    def __init__(self, traced, targets):
        self.traced = traced
        self.targets = frozenset(targets)
        self.layer = []  # the current index in each enclosing layer scan
        self.deps: dict = collections.defaultdict(frozenset)

    def literal(self, lit):
        return EMPTY

    def unbound(self, var):
        return EMPTY

    def visit_body(self, body, inner_args, path):
        return self.visit_jaxpr(body.jaxpr, body.consts, list(inner_args), path + (body.index,),
                                [EMPTY] * len(body.jaxpr.constvars))

    def visit_plain(self, eqn, invals, path):
        return [_union(invals)] * len(eqn.outvars)

    def visit_site(self, eqn, invals, path):
        site = self.traced.site_at.get(path)
        dep = _union(invals)
        if site is None or site.name not in self.targets:
            return [dep] * len(eqn.outvars)
        unit = (site.name, tuple(self.layer))
        self.deps[unit] = self.deps[unit] | dep
        return [dep | {unit}] * len(eqn.outvars)

    def _outs(self, eqn, body, inner):
        outs = [EMPTY] * len(eqn.outvars)
        for o, r in zip(inner, body.results):
            if r is not None:
                outs[r] = outs[r] | o
        return outs

    def visit_call(self, eqn, invals, path):
        (body,) = bodies(eqn)
        return self._outs(eqn, body, self.visit_body(body, [invals[i] for i in body.operands], path))

    def visit_cond(self, eqn, invals, path):
        outs = [EMPTY] * len(eqn.outvars)
        index_dep = invals[0]
        for body in bodies(eqn):
            for k, o in enumerate(self._outs(eqn, body, self.visit_body(body, [invals[i] for i in body.operands],
                                                                         path))):
                outs[k] = outs[k] | o | index_dep
        return outs

    def visit_scan(self, eqn, invals, path):
        (body,) = bodies(eqn)
        p = eqn.params
        nc, ncar = scan_counts(p)
        consts, carry, xs = invals[:nc], list(invals[nc:nc + ncar]), invals[nc + ncar:]
        ys = [EMPTY] * (len(eqn.outvars) - ncar)
        if path in self.traced.layer_scans:
            for layer in range(int(p["length"])):
                self.layer.append(layer)
                try:
                    out = self.visit_body(body, [*consts, *carry, *xs], path)
                finally:
                    self.layer.pop()
                carry = out[:ncar]
                ys = [y | o for y, o in zip(ys, out[ncar:])]
            return [*carry, *ys]
        for _ in range(MAX_FIXPOINT_STEPS):  # a recurrence: iterate until the carried dependencies settle
            out = self.visit_body(body, [*consts, *carry, *xs], path)
            new = [c | o for c, o in zip(carry, out[:ncar])]
            ys = [y | o for y, o in zip(ys, out[ncar:])]
            if new == carry:
                break
            carry = new
        return [*carry, *ys]

    def visit_while(self, eqn, invals, path):
        cond, body = bodies(eqn)
        n_carry = len(eqn.outvars)
        consts = [invals[i] for i in body.operands[: len(body.operands) - n_carry]]
        carry = list(invals[len(invals) - n_carry:])
        for _ in range(MAX_FIXPOINT_STEPS):
            out = self.visit_body(body, [*consts, *carry], path)
            new = [c | o for c, o in zip(carry, out)]
            if new == carry:
                break
            carry = new
        return carry


def unit_dependencies(traced, targets) -> dict:
    """``{unit: frozenset of the target units its inputs depend on}`` for every target unit reached."""
    walker = _DependencyWalker(traced, targets)
    jaxpr = traced.closed_jaxpr.jaxpr
    walker.visit_jaxpr(jaxpr, traced.closed_jaxpr.consts, [EMPTY] * len(jaxpr.invars), (),
                       [EMPTY] * len(jaxpr.constvars))
    return dict(walker.deps)


def dependency_levels(traced, targets) -> list[list[tuple]]:
    """The target units grouped by level (see the module docstring), each level in trace order."""
    deps = unit_dependencies(traced, targets)
    order = {u: k for k, u in enumerate(deps)}
    level: dict = {}

    def peers(u):  # units in a cycle with u (deps are transitive, so mutual membership is enough)
        return {d for d in deps[u] if u in deps.get(d, ())} | {u}

    def visit(u, stack):
        if u in level:
            return level[u]
        group = peers(u)
        outside = set().union(*(deps[g] for g in group)) - group
        lv = 0
        for d in outside:
            if d in deps and d not in stack:
                lv = max(lv, visit(d, stack | group) + 1)
        for g in group:
            level[g] = lv
        return lv

    for u in deps:
        visit(u, frozenset())
    out: dict = collections.defaultdict(list)
    for u in sorted(deps, key=order.get):
        out[level[u]].append(u)
    return [out[k] for k in sorted(out)]
