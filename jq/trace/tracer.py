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
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.extend import core as jcore

from jq.quantizer import CanonicalView
from jq.trace.primitives import SITE_PRIMITIVES, call_jaxpr_param, jaxpr_of
from jq.trace.sites import (
    ACT,
    CONST,
    ChainStep,
    Derived,
    ParamOrigin,
    ScanSlice,
    Site,
    SkippedSite,
    name_from_keypath,
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


# ----------------------------------------------------------------------------------------------------
# Canonical weight views


def weight_view(eqn, operand: int, shape: tuple) -> CanonicalView:
    """The canonical ``[*batch, out, in]`` (dot) or ``[O, I, *spatial]`` (conv) view of a weight operand."""
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial) positions in the kernel
        perm = tuple(rhs_spec)
        return CanonicalView(perm, tuple(shape[p] for p in perm), 0)
    if name == "dot_general":
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        contract, batch = (lc, lb) if operand == 0 else (rc, rb)
    else:  # ragged_dot_general: the group (expert) axis of the rhs is a batch axis
        dn = eqn.params["ragged_dot_dimension_numbers"]
        (lc, rc), (lb, rb) = dn.dot_dimension_numbers
        contract = lc if operand == 0 else rc
        batch = tuple(lb if operand == 0 else rb) + (tuple(dn.rhs_group_dimensions) if operand == 1 else ())
    contract, batch = tuple(contract), tuple(batch)
    free = tuple(d for d in range(len(shape)) if d not in contract and d not in batch)
    perm = batch + free + contract
    cshape = tuple(shape[d] for d in batch) + (math.prod(shape[d] for d in free),
                                               math.prod(shape[d] for d in contract))
    return CanonicalView(perm, cshape, len(batch))


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


class _Walker:
    def __init__(self):
        self.raw_sites: list[dict] = []
        self.skipped: list[SkippedSite] = []
        self.layer_stack: list[int] = []
        self.layer_scans: dict = {}
        self.other_uses: set = set()  # params leaves consumed by something other than a weight chain/site

    def run(self, jaxpr, consts, in_origins, prefix: tuple, stack: str):
        outer_jaxpr, self.current_jaxpr = getattr(self, "current_jaxpr", None), prefix
        try:
            return self._run(jaxpr, consts, in_origins, prefix, stack)
        finally:
            self.current_jaxpr = outer_jaxpr

    def _run(self, jaxpr, consts, in_origins, prefix: tuple, stack: str):
        env: dict = {}
        vals: dict = {}
        for v, c in zip(jaxpr.constvars, consts):
            env[v] = CONST
            vals[v] = c
        for v, o in zip(jaxpr.invars, in_origins):
            env[v] = o

        def read(a):
            if isinstance(a, jcore.Literal):
                return CONST
            return env.get(a, CONST)

        def value(a):
            if isinstance(a, jcore.Literal):
                return a.val
            return vals.get(a, _MISSING)

        for eqn in jaxpr.eqns:
            path = prefix + (id(eqn),)
            full_stack = _join_stack(stack, eqn.source_info.name_stack)
            ins = [read(v) for v in eqn.invars]
            name = eqn.primitive.name
            n_out = len(eqn.outvars)
            if name in SITE_PRIMITIVES:
                self._site(eqn, ins, path, full_stack)
                outs = [_combine(ins)] * n_out
            elif name == "scan":
                outs = self._scan(eqn, ins, path, full_stack)
            elif name == "while":
                outs = self._while(eqn, ins, path, full_stack)
            elif name == "cond":
                outs = self._cond(eqn, ins, path, full_stack)
            elif call_jaxpr_param(eqn) is not None:
                inner, inner_consts = jaxpr_of(eqn.params[call_jaxpr_param(eqn)])
                if name == "shard_map":  # a sharded weight is a per-device shard inside: not replayable
                    ins = [Derived(o.leaves if isinstance(o, Derived) else frozenset({o.leaf}))
                           if _is_weight(o) and not _replicated(spec) else o
                           for o, spec in zip(ins, eqn.params["in_specs"])]
                outs = self.run(inner, inner_consts, ins, path + (0,), full_stack)
                outs = list(outs)[:n_out] + [_combine(ins)] * max(0, n_out - len(outs))
            else:
                nonconst = [k for k, o in enumerate(ins) if o is not CONST]
                if any(o is ACT for o in ins):
                    outs = [ACT] * n_out
                    for o in ins:  # e.g. an embedding table gathered by token ids
                        self.other_uses.update(_leaves_of(o))
                elif not nonconst:
                    outs = [CONST] * n_out
                elif (len(nonconst) == 1 and isinstance(ins[nonconst[0]], ParamOrigin) and n_out == 1
                      and not eqn.primitive.multiple_results
                      and all(value(v) is not _MISSING for k, v in enumerate(eqn.invars) if k != nonconst[0])):
                    k = nonconst[0]
                    others = tuple(value(v) for j, v in enumerate(eqn.invars) if j != k)
                    outs = [ins[k].extend(ChainStep(eqn, k, others))]
                else:
                    outs = [_combine(ins)] * n_out
                    for o in ins:
                        self.other_uses.update(_leaves_of(o))
            for v, o in zip(eqn.outvars, outs):
                env[v] = o
        outs = [read(v) for v in jaxpr.outvars]
        if not prefix:
            for o in outs:
                self.other_uses.update(_leaves_of(o))
        return outs

    # -- sites ------------------------------------------------------------------------------------------
    def _site(self, eqn, ins, path, stack):
        name = eqn.primitive.name
        shapes = tuple(tuple(v.aval.shape) for v in eqn.invars)
        dtypes = tuple(str(v.aval.dtype) for v in eqn.invars)
        o0, o1 = ins[0], ins[1]
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
            return
        self.raw_sites.append(dict(
            eqn=eqn, path=path, stack=stack, kind=kind, weight_op=weight_op, jaxpr_id=self.current_jaxpr,
            weight=None if weight_op is None else ins[weight_op], shapes=shapes, dtypes=dtypes,
            layer_axes=tuple(self.layer_stack)))

    # -- control flow -------------------------------------------------------------------------------
    def _scan(self, eqn, ins, path, stack):
        p = eqn.params
        nc, ncar = p["num_consts"], p["num_carry"]
        consts, carry, xs = ins[:nc], ins[nc:nc + ncar], ins[nc + ncar:]
        layer = any(_is_weight(o) for o in xs)
        depth = len(self.layer_stack)
        inner_xs = [o.extend(ScanSlice(depth)) if (layer and isinstance(o, ParamOrigin)) else o for o in xs]
        carry_in = [o if o is CONST else ACT for o in carry]
        for o in carry:
            self.other_uses.update(_leaves_of(o))
        if layer:
            self.layer_stack.append(int(p["length"]))
            self.layer_scans[path] = int(p["length"])
        body, body_consts = jaxpr_of(p["jaxpr"])
        self.run(body, body_consts, list(consts) + carry_in + inner_xs, path + (0,), stack)
        if layer:
            self.layer_stack.pop()
        return [_combine(ins)] * len(eqn.outvars)

    def _while(self, eqn, ins, path, stack):
        p = eqn.params
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cconsts, bconsts, carry = ins[:cn], ins[cn:cn + bn], ins[cn + bn:]
        carry_in = [o if o is CONST else ACT for o in carry]
        body, body_consts = jaxpr_of(p["body_jaxpr"])
        self.run(body, body_consts, list(bconsts) + carry_in, path + (1,), stack)
        cond, cond_consts = jaxpr_of(p["cond_jaxpr"])
        self.run(cond, cond_consts, list(cconsts) + carry_in, path + (0,), stack)
        return [_combine(ins)] * len(eqn.outvars)

    def _cond(self, eqn, ins, path, stack):
        ops = ins[1:]
        for i, br in enumerate(eqn.params["branches"]):
            inner, consts = jaxpr_of(br)
            self.run(inner, consts, ops, path + (i,), stack)
        return [_combine(ins)] * len(eqn.outvars)


_MISSING = object()


# ----------------------------------------------------------------------------------------------------
# Naming


def _is_noise_component(c: str) -> bool:
    """Name-stack components that are not module names: einsum specs, transformations, jit wrappers."""
    return ("->" in c or "," in c or "(" in c or c in ("", "jit", "pjit", "remat", "checkpoint", "scan", "while",
                                                          "cond", "shard_map", "vmap"))


def _clean_stack(stack: str) -> list[str]:
    return [c for c in stack.split("/") if not _is_noise_component(c)]


def _learn_root(raw_sites, names) -> tuple[str, ...]:
    """Name-stack prefix that linear sites carry but param-derived names do not (e.g. the root module)."""
    votes = collections.Counter()
    for r, n in zip(raw_sites, names):
        if n is None:
            continue
        comps, nparts = _clean_stack(r["stack"]), n.split(".")
        if len(comps) >= len(nparts) and comps[len(comps) - len(nparts):] == nparts:
            votes[tuple(comps[:len(comps) - len(nparts)])] += 1
    return votes.most_common(1)[0][0] if votes else ()


def _derives_from_exp(eqn, producers, depth=0) -> bool:
    """Whether an operand comes out of a softmax: a short backward walk looking for ``exp``."""
    if eqn is None or depth > 12:
        return False
    if eqn.primitive.name == "exp":
        return True
    key = call_jaxpr_param(eqn)
    if key is not None:
        inner, _ = jaxpr_of(eqn.params[key])
        if any(e.primitive.name == "exp" for e in inner.eqns):
            return True
    if eqn.primitive.name in SITE_PRIMITIVES:
        return False
    return any(_derives_from_exp(producers.get(v), producers, depth + 1)
               for v in eqn.invars if not isinstance(v, jcore.Literal))


def _producer_maps(jaxpr, maps=None):
    """var -> producing eqn, for every (nested) jaxpr."""
    maps = {} if maps is None else maps
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            maps[v] = eqn
        for sub in _subjaxprs(eqn):
            _producer_maps(sub, maps)
    return maps


def _subjaxprs(eqn):
    out = []
    for v in eqn.params.values():
        for item in (v if isinstance(v, (tuple, list)) else (v,)):
            if isinstance(item, (jcore.Jaxpr, jcore.ClosedJaxpr)):
                out.append(jaxpr_of(item)[0])
    return out


def _name_sites(walker: _Walker, param_paths, param_shapes, jaxpr) -> list[Site]:
    raws = walker.raw_sites
    # weight sites: group by (weight identity, canonical view)
    base_names: list[str | None] = []
    views: list[CanonicalView | None] = []
    group_key: list = []
    for r in raws:
        if r["weight_op"] is None:
            base_names.append(None)
            views.append(None)
            group_key.append(None)
            continue
        w = r["weight"]
        view = weight_view(r["eqn"], r["weight_op"], r["shapes"][r["weight_op"]])
        views.append(view)
        if isinstance(w, ParamOrigin):
            leaf = w.leaf
            ident = ("leaf", leaf, tuple(type(s).__name__ for s in w.chain))
        else:
            leaf = max(w.leaves, key=lambda i: math.prod(param_shapes[i]))
            ident = ("derived", w.leaves)
        base_names.append(name_from_keypath(param_paths[leaf]))
        group_key.append((ident, view.perm, view.shape))
    names: list[str | None] = [None] * len(raws)
    taken: dict[str, list] = {}
    for i, (base, key) in enumerate(zip(base_names, group_key)):
        if base is None:
            continue
        keys = taken.setdefault(base, [])
        if key not in keys:
            keys.append(key)
        j = keys.index(key)
        names[i] = base if j == 0 else f"{base}_{j}"
    # attention (bmm) sites: scope from the name stack, role from softmax ancestry
    root = _learn_root(raws, names)
    producers = _producer_maps(jaxpr)
    counters: dict = collections.Counter()
    roles_of: list = [None] * len(raws)
    att: list = [None] * len(raws)
    for i, r in enumerate(raws):
        if r["kind"] != "bmm":
            continue
        comps = _clean_stack(r["stack"])
        if root and tuple(comps[:len(root)]) == root:
            comps = comps[len(root):]
        scope = ".".join(comps)
        eqn = r["eqn"]
        lhs_p, rhs_p = (producers.get(v) for v in eqn.invars[:2])
        if _derives_from_exp(lhs_p, producers):
            role, roles = "pv", {0: "softmax_quantizer", 1: "v_bmm_quantizer"}
        elif _derives_from_exp(rhs_p, producers):
            role, roles = "pv", {1: "softmax_quantizer", 0: "v_bmm_quantizer"}
        else:
            role, roles = "qk", {0: "q_bmm_quantizer", 1: "k_bmm_quantizer"}
        k = counters[(scope, role)]
        counters[(scope, role)] += 1
        base = scope or "attn"
        names[i] = base if k == 0 else f"{base}.attn{k}"
        if not scope and k == 0:
            names[i] = "attn"
        roles_of[i] = roles
        att[i] = role
    sites = []
    for i, r in enumerate(raws):
        if r["kind"] == "bmm":
            roles = roles_of[i]
        else:
            act = 1 - r["weight_op"]
            roles = {act: "input_quantizer", r["weight_op"]: "weight_quantizer"}
        sites.append(Site(
            name=names[i], kind=r["kind"], primitive=r["eqn"].primitive.name, path=r["path"], roles=roles,
            weight_operand=r["weight_op"], weight=r["weight"], view=views[i], shapes=r["shapes"],
            dtypes=r["dtypes"], name_stack=r["stack"], layer_axes=r["layer_axes"], params=dict(r["eqn"].params),
            attention_role=att[i], scope=r["jaxpr_id"], eqn=r["eqn"]))
    return sites


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
    walker.run(closed.jaxpr, closed.consts, in_origins, (), "")
    shapes = [tuple(np.shape(x)) for x in p_leaves]
    sites = _name_sites(walker, p_paths, shapes, closed.jaxpr)
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
