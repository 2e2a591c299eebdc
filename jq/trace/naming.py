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


def name_sites(walker, param_paths, param_shapes, jaxpr) -> list[Site]:
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


