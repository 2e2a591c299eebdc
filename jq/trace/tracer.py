"""Trace an ``apply_fn`` to a jaxpr and find its quantizable sites (jaxpr replaces ModelOpt's FX trace).

``trace(apply_fn, params, *args, **kwargs)`` runs ``jax.make_jaxpr`` on flattened inputs and walks the
jaxpr, following every value back to where it came from:

* a params leaf through replayable equations (layout ops, dtype casts, constant scalings): a *weight*,
  which carries the chain of equations so the weight can be rebuilt from the params alone;
* several params leaves (``W + A @ B``): a *derived* weight;
* the inputs: an *activation*; literals and closed-over arrays: constants.

Each ``dot_general`` / ``conv_general_dilated`` / ``ragged_dot_general`` with an activation and a weight is
a ``linear``/``conv`` site; with two activations it is a ``bmm`` (attention) site. The walk recurses into
jit, remat, custom_jvp/vjp calls, scan, while, cond and shard_map. A scan that slices params along its
``xs`` is a *layer scan* (``nn.scan`` over layers): quantizers of sites inside it get a leading layer axis.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.extend import core as jcore

from jq.trace.control_flow import JaxprVisitor, bodies, scan_counts
from jq.trace.naming import name_sites, weight_view
from jq.trace.output_head import OUTPUT_HEAD_ROLE, output_heads
from jq.trace.symbols import DimClasses
from jq.trace.sites import (
    ACT,
    CONST,
    ChainStep,
    Derived,
    ParamOrigin,
    ScanSlice,
    SkippedSite,
)

__all__ = ["TracedModel", "QuantizerSlot", "trace", "split_dynamic", "signature_of", "weight_view"]


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic)) or hasattr(x, "aval")


def split_dynamic(tree):
    """Split a pytree into array leaves (traced) and everything else (static, baked into the trace)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=lambda x: x is None)
    dyn_idx = [i for i, x in enumerate(leaves) if _is_array(x)]
    static = tuple((i, x) for i, x in enumerate(leaves) if i not in set(dyn_idx))

    def rebuild(dyn):
        out = list(leaves)
        for i, v in zip(dyn_idx, dyn):
            out[i] = v
        return jax.tree_util.tree_unflatten(treedef, out)

    return [leaves[i] for i in dyn_idx], rebuild, (treedef, tuple(dyn_idx), _hashable(static))


def _hashable(static):
    try:
        hash(static)
        return static
    except TypeError:
        return tuple((i, repr(x)) for i, x in static)


def signature_of(leaves) -> tuple:
    """Shapes, dtypes and weak types of array leaves: the cache key of a trace."""
    out = []
    for x in leaves:
        aval = jax.typeof(x) if not isinstance(x, jax.ShapeDtypeStruct) else x
        out.append((tuple(aval.shape), str(aval.dtype), bool(getattr(aval, "weak_type", False))))
    return tuple(out)


@dataclasses.dataclass(eq=False)
class QuantizerSlot:
    """One quantizer as the trace sees it: its sites, the slot it fills and the tensor it quantizes."""

    name: str
    slot: str
    sites: list
    is_weight: bool
    shape: tuple  # canonical shape for weights (without layer axes), activation shape otherwise
    layer_axes: tuple
    batch: int = 0  # leading canonical batch axes (dot_general batch dims of weights)


@dataclasses.dataclass(eq=False)
class TracedModel:
    """A traced ``apply_fn`` for one input signature, with its sites and quantizers."""

    closed_jaxpr: Any
    out_tree: Any
    n_param_leaves: int
    param_paths: list
    param_shapes: list
    sites: list
    skipped: list
    site_at: dict
    has_sites: set
    layer_scans: dict  # path -> length, for scans that slice params
    other_uses: set  # params leaves used outside weight chains (not foldable)
    scan_quantizers: dict  # path of any higher-order eqn -> quantizer names of the sites below it
    quantizers: dict  # name -> QuantizerSlot

    @property
    def jaxpr(self):
        return self.closed_jaxpr.jaxpr

    @functools.cached_property
    def output_heads(self) -> tuple[str, ...]:
        """Names of the sites whose result is the model's output (:mod:`jq.trace.output_head`)."""
        return output_heads(self)

    def roles(self, quantizer: str) -> frozenset:
        """The roles of a quantizer (``{"output_head"}`` or empty) that ``"@role"`` config keys match."""
        slot = self.quantizers.get(quantizer)
        if slot is None or not self.output_heads or not all(s.name in self.output_heads for s in slot.sites):
            return frozenset()
        return frozenset({OUTPUT_HEAD_ROLE})


# ----------------------------------------------------------------------------------------------------
# The walk


def _leaves_of(o) -> frozenset:
    if isinstance(o, ParamOrigin):
        return frozenset({o.leaf})
    if isinstance(o, Derived):
        return o.leaves
    return frozenset()


def _combine(origins) -> Any:
    if any(o is ACT for o in origins):
        return ACT
    leaves = frozenset().union(*[_leaves_of(o) for o in origins]) if origins else frozenset()
    return Derived(leaves) if leaves else CONST


def _replicated(spec) -> bool:
    return spec is None or all(p is None for p in tuple(spec))


def _is_weight(o) -> bool:
    return isinstance(o, (ParamOrigin, Derived))


def _join_stack(outer: str, inner) -> str:
    inner = str(inner)
    if not outer:
        return inner
    return outer if not inner else f"{outer}/{inner}"


class _Walker(JaxprVisitor):
    """The tracer's walk: the value of each variable is where it comes from (an *origin*)."""

    def __init__(self):
        self.raw_sites: list[dict] = []
        self.skipped: list[SkippedSite] = []
        self.layer_stack: list[int] = []
        self.layer_scans: dict = {}
        self.other_uses: set = set()  # params leaves consumed by something other than a weight chain/site
        self.scopes: list = []  # paths of the jaxprs being walked (innermost last)
        self.stacks: list[str] = [""]  # name stacks of the enclosing equations
        self.const_values: dict = {}  # constvar -> concrete value (constant operands of replayable chains)

    # -- the environment ---------------------------------------------------------------------------------
    def literal(self, lit):
        return CONST

    def unbound(self, var):
        return CONST

    def enter_jaxpr(self, jaxpr, consts, path):
        self.scopes.append(path)
        self.const_values.update(zip(jaxpr.constvars, consts))

    def exit_jaxpr(self, jaxpr, path):
        self.scopes.pop()

    def run(self, jaxpr, consts, in_origins):
        outs = self.visit_jaxpr(jaxpr, consts, in_origins, (), [CONST] * len(jaxpr.constvars))
        for o in outs:
            self.other_uses.update(_leaves_of(o))
        return outs

    def visit_body(self, body, inner_args, path):
        return self.visit_jaxpr(body.jaxpr, body.consts, list(inner_args), path + (body.index,),
                                [CONST] * len(body.jaxpr.constvars))

    def _stack(self, eqn) -> str:
        return _join_stack(self.stacks[-1], eqn.source_info.name_stack)

    def _value(self, v):
        """Concrete value of an operand (a literal or a closed-over constant), or _MISSING."""
        if isinstance(v, jcore.Literal):
            return v.val
        return self.const_values.get(v, _MISSING)

    def _inside(self, eqn, fn):
        self.stacks.append(self._stack(eqn))
        try:
            return fn()
        finally:
            self.stacks.pop()

    # -- plain equations: follow weights through replayable chains ----------------------------------------
    def visit_plain(self, eqn, ins, path):
        n_out = len(eqn.outvars)
        nonconst = [k for k, o in enumerate(ins) if o is not CONST]
        if any(o is ACT for o in ins):
            for o in ins:  # e.g. an embedding table gathered by token ids
                self.other_uses.update(_leaves_of(o))
            return [ACT] * n_out
        if not nonconst:
            return [CONST] * n_out
        if (len(nonconst) == 1 and isinstance(ins[nonconst[0]], ParamOrigin) and n_out == 1
                and not eqn.primitive.multiple_results
                and all(self._value(v) is not _MISSING for k, v in enumerate(eqn.invars) if k != nonconst[0])):
            k = nonconst[0]
            others = tuple(self._value(v) for j, v in enumerate(eqn.invars) if j != k)
            return [ins[k].extend(ChainStep(eqn, k, others))]
        for o in ins:
            self.other_uses.update(_leaves_of(o))
        return [_combine(ins)] * n_out

    # -- sites ------------------------------------------------------------------------------------------
    def visit_site(self, eqn, ins, path):
        name = eqn.primitive.name
        stack = self._stack(eqn)
        shapes = tuple(tuple(v.aval.shape) for v in eqn.invars)
        dtypes = tuple(str(v.aval.dtype) for v in eqn.invars)
        o0, o1 = ins[0], ins[1]
        outs = [_combine(ins)] * len(eqn.outvars)
        if o0 is ACT and _is_weight(o1):
            weight_op, kind = 1, ("conv" if name == "conv_general_dilated" else "linear")
        elif name == "dot_general" and _is_weight(o0) and o1 is ACT:
            weight_op, kind = 0, "linear"
        elif o0 is ACT and o1 is ACT and name == "dot_general":
            weight_op, kind = None, "bmm"
        else:
            if _is_weight(o0) and _is_weight(o1):
                reason = "both operands are weights (computed from params only)"
            elif CONST in (o0, o1):
                reason = "an operand is a constant (closed over or a literal), not a params leaf"
            else:
                reason = "two activations in a convolution or ragged dot"
            self.skipped.append(SkippedSite(name, stack, reason, shapes))
            return outs
        self.raw_sites.append(dict(
            eqn=eqn, path=path, stack=stack, kind=kind, weight_op=weight_op, jaxpr_id=self.scopes[-1],
            weight=None if weight_op is None else ins[weight_op], shapes=shapes, dtypes=dtypes,
            layer_axes=tuple(self.layer_stack)))
        return outs

    # -- higher-order equations ---------------------------------------------------------------------------
    def visit_call(self, eqn, ins, path):
        (body,) = bodies(eqn)
        if eqn.primitive.name == "shard_map":  # a sharded weight is a per-device shard inside: not replayable
            ins = [Derived(o.leaves if isinstance(o, Derived) else frozenset({o.leaf}))
                   if _is_weight(o) and not _replicated(spec) else o
                   for o, spec in zip(ins, eqn.params["in_specs"])]
        inner = self._inside(eqn, lambda: self.visit_body(body, [ins[i] for i in body.operands], path))
        outs = [_combine(ins)] * len(eqn.outvars)
        for o, r in zip(inner, body.results):
            if r is not None:
                outs[r] = o
        return outs

    def visit_scan(self, eqn, ins, path):
        (body,) = bodies(eqn)
        nc, ncar = scan_counts(eqn.params)
        carry_idx = range(nc, nc + ncar)
        layer = any(_is_weight(ins[i]) for i in body.sliced)
        depth = len(self.layer_stack)
        inner = []
        for i in body.operands:
            o = ins[i]
            if i in carry_idx:
                self.other_uses.update(_leaves_of(o))
                o = o if o is CONST else ACT
            elif i in body.sliced and layer and isinstance(o, ParamOrigin):
                o = o.extend(ScanSlice(depth))
            inner.append(o)
        if layer:
            self.layer_stack.append(int(eqn.params["length"]))
            self.layer_scans[path] = int(eqn.params["length"])
        try:
            self._inside(eqn, lambda: self.visit_body(body, inner, path))
        finally:
            if layer:
                self.layer_stack.pop()
        return [_combine(ins)] * len(eqn.outvars)

    def visit_while(self, eqn, ins, path):
        p = eqn.params
        carry_start = p["cond_nconsts"] + p["body_nconsts"]
        for o in ins[carry_start:]:
            self.other_uses.update(_leaves_of(o))

        def arg(i):
            return (ins[i] if ins[i] is CONST else ACT) if i >= carry_start else ins[i]

        cond, body = bodies(eqn)
        for b in (body, cond):  # the body first, as the tracer always did (site order)
            self._inside(eqn, lambda b=b: self.visit_body(b, [arg(i) for i in b.operands], path))
        return [_combine(ins)] * len(eqn.outvars)

    def visit_cond(self, eqn, ins, path):
        for b in bodies(eqn):
            self._inside(eqn, lambda b=b: self.visit_body(b, [ins[i] for i in b.operands], path))
        return [_combine(ins)] * len(eqn.outvars)


_MISSING = object()


def _collect_quantizers(sites) -> dict:
    quantizers: dict[str, QuantizerSlot] = {}
    for s in sites:
        entries = [(op, slot) for op, slot in s.roles.items()] + (
            [(None, "output_quantizer")] if s.kind != "bmm" else [])
        for op, slot in entries:
            qname = f"{s.name}.{slot}"
            is_w = op is not None and op == s.weight_operand
            if is_w:
                shape, batch = s.view.shape, s.view.batch
            elif op is None:
                shape, batch = (), 0  # output shape is not needed for per-tensor output quantizers
            else:
                shape, batch = s.shapes[op], 0
            q = quantizers.get(qname)
            if q is None:
                quantizers[qname] = QuantizerSlot(qname, slot, [s], is_w, shape, s.layer_axes, batch)
            else:
                if q.layer_axes != s.layer_axes:
                    raise ValueError(f"quantizer {qname} is used both inside and outside a layer scan "
                                     f"({q.layer_axes} vs {s.layer_axes}); jq cannot share its state")
                q.sites.append(s)
    return quantizers


def trace(apply_fn: Callable, params, *args, **kwargs) -> TracedModel:
    """Trace ``apply_fn(params, *args, **kwargs)`` and find its quantizable sites.

    Array leaves of ``args``/``kwargs`` are traced; other leaves (Python bools, strings, None) are static.
    ``params`` leaves must all be arrays (or ``jax.ShapeDtypeStruct``).

    Example:
      >>> import flax.linen as nn
      >>> m = nn.Dense(4); p = m.init(jax.random.key(0), jnp.ones((1, 8)))
      >>> [s.name for s in trace(m.apply, p, jnp.ones((2, 8))).sites]
      ['params']
    """
    p_leaves_with_paths, p_def = jax.tree_util.tree_flatten_with_path(params)
    p_paths = [p for p, _ in p_leaves_with_paths]
    p_leaves = [x for _, x in p_leaves_with_paths]
    for path, x in zip(p_paths, p_leaves):
        if not (_is_array(x) or isinstance(x, jax.ShapeDtypeStruct)):
            raise ValueError(f"params leaf {jax.tree_util.keystr(path)} is a {type(x).__name__}, not an array")
    dyn, rebuild, _ = split_dynamic((args, kwargs))
    n_p = len(p_leaves)

    def flat_fn(*flat):
        p = jax.tree_util.tree_unflatten(p_def, flat[:n_p])
        a, kw = rebuild(flat[n_p:])
        return apply_fn(p, *a, **kw)

    specs = [jax.ShapeDtypeStruct(np.shape(x), x.dtype) for x in p_leaves + dyn]
    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*specs)
    out_tree = jax.tree_util.tree_structure(out_shape)
    walker = _Walker()
    in_origins = [ParamOrigin(i) for i in range(n_p)] + [ACT] * len(dyn)
    walker.run(closed.jaxpr, closed.consts, in_origins)
    shapes = [tuple(np.shape(x)) for x in p_leaves]
    sites = name_sites(walker, p_paths, shapes, closed.jaxpr, lambda: DimClasses(closed.jaxpr))
    site_at = {s.path: s for s in sites}
    has_sites: set = set()
    below: dict = collections.defaultdict(set)
    for s in sites:
        for k in range(1, len(s.path), 2):
            prefix = s.path[:k]
            has_sites.add(prefix)
            below[prefix].update(q for q in s.quantizer_names)
    return TracedModel(
        closed_jaxpr=closed, out_tree=out_tree, n_param_leaves=n_p, param_paths=p_paths, param_shapes=shapes,
        sites=sites, skipped=walker.skipped, site_at=site_at, has_sites=has_sites,
        layer_scans=dict(walker.layer_scans), other_uses=set(walker.other_uses), scan_quantizers=dict(below), quantizers=_collect_quantizers(sites))
