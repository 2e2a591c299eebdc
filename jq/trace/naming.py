"""Naming the sites a trace found, and each weight's canonical ``[out, in]`` view.

Weight sites are named after their weight's key path (``Dense_0/kernel`` -> ``Dense_0``), stable across input
shapes and re-traces; several views of one weight get ``_1``, ``_2`` suffixes. Attention (activation x
activation) sites are named after their module scope from the name stack, and their role (q.kᵀ or p.v)
is found by looking for the softmax's ``exp`` behind an operand.
"""

from __future__ import annotations

import collections
import math

from jax.extend import core as jcore

from jq.quantizer import CanonicalView
from jq.trace.primitives import SITE_PRIMITIVES, call_jaxpr_param, jaxpr_of
from jq.trace.sites import ParamOrigin, Site, name_from_keypath

__all__ = ["weight_view", "name_sites", "producer_maps"]


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


def _reaches(target, eqn, producers, depth=0) -> bool:
    """Whether equation ``target`` is among the producers of ``eqn`` (a short backward walk)."""
    if eqn is None or depth > 16:
        return False
    if eqn is target:
        return True
    if eqn.primitive.name in SITE_PRIMITIVES and depth:
        return False
    return any(_reaches(target, producers.get(v), producers, depth + 1)
               for v in eqn.invars if not isinstance(v, jcore.Literal))


def _key_operand(qk, pv_eqns, producers, dims) -> int | None:
    """Which operand of the q·kᵀ equation ``qk`` is the keys: the one whose free (sequence) axis is tied, through
    the softmax, to the axis the p·v equation contracts with the values. None when no p·v uses ``qk``."""
    for pv, p_op in pv_eqns:
        if not _reaches(qk, producers.get(pv.invars[p_op]), producers):
            continue
        (lc, rc), _ = pv.params["dimension_numbers"]
        p_contract = lc if p_op == 0 else rc
        (qlc, qrc), (qlb, qrb) = qk.params["dimension_numbers"]
        out = qk.outvars[0]
        lhs_free = [d for d in range(len(qk.invars[0].aval.shape)) if d not in qlc and d not in qlb]
        first = {0: len(qlb), 1: len(qlb) + len(lhs_free)}
        n_free = {0: len(lhs_free),
                  1: len([d for d in range(len(qk.invars[1].aval.shape)) if d not in qrc and d not in qrb])}
        free = {op: range(first[op], first[op] + n_free[op]) for op in (0, 1)}
        tied = [op for op in (0, 1) if any(dims.same(out, a, pv.invars[p_op], c) for a in free[op] for c in p_contract)]
        if len(tied) == 1:
            return tied[0]
        # both tied (self-attention: q and k sequence axes both come from x's): follow the contracted axis of
        # the probabilities back to the scores through axis-preserving ops and transposes
        back = {_axis_back(pv.invars[p_op], c, out, producers) for c in p_contract} - {None}
        owners = [op for op in (0, 1) if back & set(free[op])]
        if len(owners) == 1:
            return owners[0]
    return None


def _axis_back(var, axis: int, target, producers, depth: int = 0) -> int | None:
    """The axis of ``target`` that axis ``axis`` of ``var`` is, through transposes, reshapes that keep the axis
    and ops whose operand has the output's shape (elementwise ops, a softmax call); None when no such path
    reaches ``target``."""
    if var is target:
        return axis
    eqn = producers.get(var)
    if eqn is None or depth > 32 or len(eqn.outvars) != 1:
        return None
    if eqn.primitive.name == "transpose":
        return _axis_back(eqn.invars[0], eqn.params["permutation"][axis], target, producers, depth + 1)
    shape = var.aval.shape
    if eqn.primitive.name == "reshape":  # an axis that survives: same size, same product of the axes before it
        src = eqn.invars[0].aval.shape
        before = math.prod(shape[:axis])
        same = [j for j in range(len(src)) if src[j] == shape[axis] and math.prod(src[:j]) == before]
        return _axis_back(eqn.invars[0], same[0], target, producers, depth + 1) if same else None
    for v in eqn.invars:
        if not isinstance(v, jcore.Literal) and getattr(v.aval, "shape", None) == shape:
            found = _axis_back(v, axis, target, producers, depth + 1)
            if found is not None:
                return found
    return None


def _weight_scope(eqn, producers, linear_name, depth=0) -> str | None:
    """The module path of the projection feeding an attention operand (``layers.3.attn`` for a q·kᵀ whose q
    comes from the site ``layers.3.attn.q_proj``), found by a short backward walk."""
    if eqn is None or depth > 16:
        return None
    for v in eqn.invars:
        if isinstance(v, jcore.Literal):
            continue
        p = producers.get(v)
        if p is None:
            continue
        if id(p) in linear_name:
            name = linear_name[id(p)]
            return name.rsplit(".", 1)[0] if "." in name else None
        if p.primitive.name not in SITE_PRIMITIVES:
            found = _weight_scope(p, producers, linear_name, depth + 1)
            if found:
                return found
    return None


def producer_maps(jaxpr, maps=None):
    """var -> producing eqn, for every (nested) jaxpr."""
    maps = {} if maps is None else maps
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            maps[v] = eqn
        for sub in _subjaxprs(eqn):
            producer_maps(sub, maps)
    return maps


def _subjaxprs(eqn):
    out = []
    for v in eqn.params.values():
        for item in (v if isinstance(v, (tuple, list)) else (v,)):
            if isinstance(item, (jcore.Jaxpr, jcore.ClosedJaxpr)):
                out.append(jaxpr_of(item)[0])
    return out


def name_sites(walker, param_paths, param_shapes, jaxpr, dim_classes=None) -> list[Site]:
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
    producers = producer_maps(jaxpr)
    linear_name = {id(r["eqn"]): names[i] for i, r in enumerate(raws) if r["kind"] != "bmm"}
    counters: dict = collections.Counter()
    roles_of: list = [None] * len(raws)
    att: list = [None] * len(raws)
    pv_eqns = []
    for i, r in enumerate(raws):
        if r["kind"] != "bmm":
            continue
        eqn = r["eqn"]
        lhs_p, rhs_p = (producers.get(v) for v in eqn.invars[:2])
        if _derives_from_exp(lhs_p, producers):
            att[i], roles_of[i] = "pv", {0: "softmax_quantizer", 1: "v_bmm_quantizer"}
            pv_eqns.append((eqn, 0))
        elif _derives_from_exp(rhs_p, producers):
            att[i], roles_of[i] = "pv", {1: "softmax_quantizer", 0: "v_bmm_quantizer"}
            pv_eqns.append((eqn, 1))
    dims = None
    for i, r in enumerate(raws):
        if r["kind"] != "bmm" or att[i] is not None:
            continue
        if dims is None and pv_eqns:
            dims = dim_classes()
        k_op = _key_operand(r["eqn"], pv_eqns, producers, dims) if dims is not None else None
        k_op = 1 if k_op is None else k_op  # no p·v found: operand order (q first, as einsum "qd,kd" writes it)
        att[i] = "qk"
        roles_of[i] = {1 - k_op: "q_bmm_quantizer", k_op: "k_bmm_quantizer"}
    stack_scope = {}
    for i, r in enumerate(raws):
        if r["kind"] == "bmm":
            comps = _clean_stack(r["stack"])
            if root and tuple(comps[:len(root)]) == root:
                comps = comps[len(root):]
            stack_scope[i] = ".".join(comps)
    uses = collections.Counter((scope, att[i]) for i, scope in stack_scope.items())
    for i, scope in stack_scope.items():
        role = att[i]
        if uses[(scope, role)] > 1 or not scope:  # the name stack does not tell attention blocks apart (nnx)
            scope = _weight_scope(raws[i]["eqn"], producers, linear_name) or scope
        k = counters[(scope, role)]
        counters[(scope, role)] += 1
        base = scope or "attn"
        names[i] = base if k == 0 else f"{base}.attn{k}"
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


