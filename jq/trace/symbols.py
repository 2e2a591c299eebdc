"""Symbols and dependencies: which dimensions of different params are coupled (ModelOpt's Symbol/SymMap).

A dimension of a params leaf is *coupled* to a dimension of another when the model's computation forces
them to be equal: a layer's output features feed the next layer's input features, a residual add ties the
widths of everything it adds, concatenation composes widths, and q/k/v or gate/up projections read the
same input. Pruning must change coupled dimensions together; quantization uses the same facts to share
scales between siblings (fused q/k/v and gate/up need equal input scales in serving stacks).

The analysis is a union-find over ``(var, axis)`` pairs of the jaxpr, joined by per-primitive rules
(elementwise ops with broadcasting, dot_general, conv, transpose, reshape prefix/suffix, broadcast_in_dim,
reductions, concatenate) and through jit/scan/while/cond/remat/shard_map boundaries.
"""

from __future__ import annotations

import collections
import dataclasses

from jax.extend import core as jcore

from jq.trace.control_flow import JaxprVisitor, bodies
from jq.trace.naming import producer_maps
from jq.trace.primitives import LAYOUT_PRIMITIVES
from jq.trace.sites import keypath_parts

__all__ = ["DimRef", "CoupledDims", "DimClasses", "dependency_analysis", "sibling_groups", "sibling_partition"]


@dataclasses.dataclass(frozen=True, order=True)
class DimRef:
    """Axis ``axis`` of the params leaf at ``path`` (``"Dense_0/kernel"``)."""

    path: str
    axis: int

    def __str__(self):
        return f"{self.path}[{self.axis}]"


@dataclasses.dataclass
class CoupledDims:
    """Result of :func:`dependency_analysis`.

    Attributes:
      groups: sets of param dimensions that must stay equal (only groups spanning several leaves).
      concats: ``(output dims, [input dims])`` where a concatenation composes widths.
    """

    groups: list
    concats: list

    def group_of(self, path: str, axis: int):
        for g in self.groups:
            if DimRef(path, axis) in g:
                return g
        return None


class _UnionFind:
    def __init__(self):
        self.parent: dict = {}

    def find(self, a):
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb


_ELEMENTWISE_SKIP = frozenset({"dot_general", "conv_general_dilated", "ragged_dot_general", "ragged_dot",
                               "transpose", "reshape", "broadcast_in_dim", "concatenate", "slice",
                               "dynamic_slice", "dynamic_update_slice", "gather", "scatter", "scatter-add",
                               "pad", "rev", "squeeze", "expand_dims", "iota", "argmax", "argmin", "cumsum",
                               "sort", "split", "select_and_scatter_add", "reduce_window", "top_k"})


class _DimWalker(JaxprVisitor):
    """Ties ``(var, axis)`` pairs; the value of each variable is the variable itself."""

    def __init__(self):
        self.uf = _UnionFind()
        self.concats: list = []

    def literal(self, lit):
        return lit

    def tie(self, a, i, b, j):
        if isinstance(a, jcore.Literal) or isinstance(b, jcore.Literal):
            return
        if a.aval.shape[i] == b.aval.shape[j]:
            self.uf.union((a, i), (b, j))

    def tie_all(self, a, b, offset_b=0):
        if isinstance(a, jcore.Literal):
            return
        for i in range(len(a.aval.shape)):
            if i + offset_b < len(getattr(b.aval, "shape", ())):
                self.tie(a, i, b, i + offset_b)

    def run(self, jaxpr):
        self.visit_jaxpr(jaxpr, [], list(jaxpr.invars), (), list(jaxpr.constvars))

    def visit_control(self, eqn, invals, path):
        """Every higher-order equation: inner inputs and outputs tied to operands and results (scan's sliced
        inputs and stacked outputs one axis apart)."""
        for body in bodies(eqn):
            inner_in = body.jaxpr.invars
            for k, (iv, op) in enumerate(zip(inner_in, body.operands)):
                self.tie_all(iv, eqn.invars[op], 1 if k in body.sliced else 0)
            self.visit_jaxpr(body.jaxpr, [], list(inner_in), path + (body.index,), list(body.jaxpr.constvars))
            for k, (ov, r) in enumerate(zip(body.jaxpr.outvars, body.results)):
                if r is not None:
                    self.tie_all(ov, eqn.outvars[r], 1 if k in body.stacked else 0)
        return list(eqn.outvars)

    visit_scan = visit_while = visit_cond = visit_call = visit_remat = visit_shard_map = visit_control

    def visit_plain(self, eqn, invals, path):
        self.eqn(eqn)
        return list(eqn.outvars)

    def eqn(self, eqn):
        name, p = eqn.primitive.name, eqn.params
        ins, outs = eqn.invars, eqn.outvars
        if name == "dot_general":
            (lc, rc), (lb, rb) = p["dimension_numbers"]
            lhs, rhs = ins[0], ins[1]
            out = outs[0]
            for a, b in zip(lc, rc):
                self.tie(lhs, a, rhs, b)
            for k, (a, b) in enumerate(zip(lb, rb)):
                self.tie(lhs, a, rhs, b)
                self.tie(lhs, a, out, k)
            lf = [d for d in range(len(lhs.aval.shape)) if d not in lc and d not in lb]
            rf = [d for d in range(len(rhs.aval.shape)) if d not in rc and d not in rb]
            for k, d in enumerate(lf):
                self.tie(lhs, d, out, len(lb) + k)
            for k, d in enumerate(rf):
                self.tie(rhs, d, out, len(lb) + len(lf) + k)
            return
        if name == "conv_general_dilated":
            dn = p["dimension_numbers"]
            lhs, rhs, out = ins[0], ins[1], outs[0]
            self.tie(lhs, dn.lhs_spec[0], out, dn.out_spec[0])
            self.tie(rhs, dn.rhs_spec[0], out, dn.out_spec[1])
            if p.get("feature_group_count", 1) == 1:
                self.tie(lhs, dn.lhs_spec[1], rhs, dn.rhs_spec[1])
            else:
                self.tie(lhs, dn.lhs_spec[1], out, dn.out_spec[1])
            return
        if name == "transpose":
            for k, d in enumerate(p["permutation"]):
                self.tie(ins[0], d, outs[0], k)
            return
        if name == "broadcast_in_dim":
            for k, d in enumerate(p["broadcast_dimensions"]):
                self.tie(ins[0], k, outs[0], d)
            return
        if name == "reshape":
            a, b = ins[0].aval.shape, outs[0].aval.shape
            i = 0
            while i < min(len(a), len(b)) and a[i] == b[i]:
                self.tie(ins[0], i, outs[0], i)
                i += 1
            j = 1
            while j <= min(len(a), len(b)) - i and a[-j] == b[-j]:
                self.tie(ins[0], len(a) - j, outs[0], len(b) - j)
                j += 1
            return
        if name in ("squeeze", "expand_dims"):
            a, b = ins[0].aval.shape, outs[0].aval.shape
            kept = [d for d in range(len(a)) if not (name == "squeeze" and d in p["dimensions"])]
            targets = [d for d in range(len(b)) if not (name == "expand_dims" and d in p["dimensions"])]
            for x, y in zip(kept, targets):
                self.tie(ins[0], x, outs[0], y)
            return
        if name.startswith("reduce_") or name in ("argmax", "argmin"):
            axes = p.get("axes", ())
            kept = [d for d in range(len(ins[0].aval.shape)) if d not in axes]
            for k, d in enumerate(kept):
                self.tie(ins[0], d, outs[0], k)
            return
        if name == "concatenate":
            dim = p["dimension"]
            for v in ins:
                for d in range(len(v.aval.shape)):
                    if d != dim:
                        self.tie(v, d, outs[0], d)
            self.concats.append(((outs[0], dim), [(v, dim) for v in ins if not isinstance(v, jcore.Literal)]))
            return
        if name == "slice":
            for d, (s, e) in enumerate(zip(p["start_indices"], p["limit_indices"])):
                if s == 0 and e == ins[0].aval.shape[d] and (not p.get("strides") or p["strides"][d] == 1):
                    self.tie(ins[0], d, outs[0], d)
            return
        if name in _ELEMENTWISE_SKIP or len(outs) != 1:
            return
        out = outs[0]
        rank = len(out.aval.shape)
        for v in ins:  # elementwise with broadcasting (add, mul, select_n, convert, tanh, ...)
            if isinstance(v, jcore.Literal) or len(v.aval.shape) != rank:
                continue
            for d in range(rank):
                if v.aval.shape[d] == out.aval.shape[d]:
                    self.tie(v, d, out, d)


class DimClasses:
    """Which axes of which variables of a jaxpr are forced equal (the union-find of the dependency analysis).

    Example:
      >>> dims = DimClasses(traced.jaxpr)
      >>> dims.same(q_var, 2, p_var, 3)
    """

    def __init__(self, jaxpr):
        self._w = _DimWalker()
        self._w.run(jaxpr)

    def same(self, a, i: int, b, j: int) -> bool:
        """True when axis ``i`` of var ``a`` and axis ``j`` of var ``b`` are tied."""
        if isinstance(a, jcore.Literal) or isinstance(b, jcore.Literal):
            return False
        return self._w.uf.find((a, i)) == self._w.uf.find((b, j))


def dependency_analysis(traced) -> CoupledDims:
    """Coupled param dimensions of a :class:`~jq.trace.TracedModel`.

    Example:
      >>> # a Dense(8) -> Dense(4) MLP couples Dense_0/kernel[1], Dense_0/bias[0] and Dense_1/kernel[0]
    """
    w = _DimWalker()
    jaxpr = traced.closed_jaxpr.jaxpr
    w.run(jaxpr)
    names = ["/".join(p for p in keypath_parts(path) if p not in ("params", "value")) for path in traced.param_paths]
    owner: dict = {}
    for leaf, v in enumerate(jaxpr.invars[: traced.n_param_leaves]):
        for d in range(len(v.aval.shape)):
            owner.setdefault(w.uf.find((v, d)), set()).add(DimRef(names[leaf], d))
    groups = [g for g in owner.values() if len({r.path for r in g}) > 1]
    groups.sort(key=lambda g: sorted(g)[0])
    concats = []
    for (ov, od), parts in w.concats:
        root = w.uf.find((ov, od))
        out_refs = owner.get(root, set())
        in_refs = [owner.get(w.uf.find(pt), set()) for pt in parts]
        if out_refs or any(in_refs):
            concats.append((out_refs, in_refs))
    return CoupledDims(groups, concats)


def _root_var(var, producers):
    """Follow layout-only equations (casts, reshapes) back to the var they came from."""
    seen = 0
    while seen < 16:
        eqn = producers.get(var)
        if eqn is None or eqn.primitive.name not in LAYOUT_PRIMITIVES:
            return var
        nonlit = [v for v in eqn.invars if not isinstance(v, jcore.Literal)]
        if len(nonlit) != 1:
            return var
        var = nonlit[0]
        seen += 1
    return var


def sibling_partition(traced, names) -> list[list[str]]:
    """``names`` split into groups: sibling groups whose members are all in ``names``, then singletons."""
    names = list(names)
    groups = [g for g in sibling_groups(traced) if all(n in names for n in g)]
    grouped = {n for g in groups for n in g}
    return groups + [[n] for n in names if n not in grouped]


def sibling_groups(traced) -> list[list[str]]:
    """Linear sites that read the same activation (q/k/v, gate/up): lists of site names, 2 or more each."""
    producers = producer_maps(traced.closed_jaxpr.jaxpr)
    by_input: dict = collections.defaultdict(list)
    for s in traced.sites:
        if s.kind not in ("linear", "conv") or s.eqn is None:
            continue
        act = s.eqn.invars[1 - s.weight_operand]
        if isinstance(act, jcore.Literal):
            continue
        key = (s.scope, id(_root_var(act, producers)))
        if s.name not in by_input[key]:
            by_input[key].append(s.name)
    return [names for names in by_input.values() if len(names) > 1]
