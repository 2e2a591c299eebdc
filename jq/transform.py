"""The functional transform: evaluate a traced ``apply_fn`` with quantizers inserted at its sites.

:class:`Evaluator` interprets the jaxpr of a :class:`~jq.trace.TracedModel`. At each site it replaces the
operands by ``fake_quant(operand)`` (``apply`` mode) or records calibration statistics without changing
anything (``collect`` mode, ModelOpt's "calibrate with quantization off"). Equations without sites below
them are re-bound unchanged, so jitted sub-computations stay intact. Higher-order primitives with sites
inside are rebuilt:

* ``jit``/``closed_call``/``custom_jvp``/``custom_vjp`` calls are inlined (their custom derivative rules
  are replaced by differentiation of the quantized body, whose quantizers carry the STE);
* ``remat`` is re-wrapped in ``jax.checkpoint`` with the same policy;
* ``scan`` is rebuilt with ``lax.scan``; in a layer scan the quantizer state is sliced per layer as ``xs``
  and statistics come back stacked, otherwise they are reduced over iterations;
* ``while`` carries running statistics; ``cond`` returns the same statistics structure from every branch;
* ``shard_map`` is re-wrapped with the quantizer state replicated and statistics ``pmax``-reduced.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jcore

from jq.fake_quant import fake_quant
from jq.quantizer import compute_amax, needs_amax
from jq.trace.primitives import bind_eqn, call_jaxpr_param, jaxpr_of
from jq.trace import geometry
from jq.trace.tracer import TracedModel

__all__ = ["Evaluator", "merge_stats"]

_REMAT = ("remat", "remat2", "checkpoint")


def merge_stats(a: dict, b: Mapping) -> dict:
    """Combine statistics: elementwise max (sums for keys ending in ``#sum``), and of the finite flags."""
    out = dict(a)
    for k, (value, finite) in b.items():
        if k in out:
            old, old_finite = out[k]
            if old is not None:
                value = old + value if k.endswith("#sum") else jnp.maximum(old, value)
            finite = jnp.logical_and(old_finite, finite)
        out[k] = (value, finite)
    return out


def _reduce_leading(stats: Mapping) -> dict:
    """Reduce statistics stacked over scan iterations (non-layer scans)."""
    def red(k, a):
        return None if a is None else (jnp.sum(a, axis=0) if k.endswith("#sum") else jnp.max(a, axis=0))
    return {k: (red(k, a), jnp.all(f, axis=0)) for k, (a, f) in stats.items()}


def _zeros_like_stats(shapes: Mapping) -> dict:
    return {k: (None if a is None else jnp.zeros(a.shape, a.dtype), jnp.ones(f.shape, bool))
            for k, (a, f) in shapes.items()}


def _bind(eqn, invals):
    ans = bind_eqn(eqn, invals)
    return list(ans) if eqn.primitive.multiple_results else [ans]


class Evaluator:
    """Evaluate a traced model with quantizers.

    Args:
      traced: the :class:`TracedModel`.
      specs: quantizer name -> resolved spec (a :class:`QuantizerSpec` or a tuple of them) or None (off).
      qstate: quantizer name -> ``{"amax": ..., "amax_1": ..., "pre_quant_scale": ...}``.
      mode: ``"apply"`` or ``"collect"``.
      collect_weights: weight quantizers whose statistics are collected from data (weights derived from
        several params leaves); other weights are calibrated from params and skipped in collect mode.
      site_impls: ``{site name: fn(eqn, site, invals, qstate) -> outvals}`` replacing the quantized
        evaluation of a site in apply mode (real-quantized kernels, e.g. an FP8 GEMM on stored FP8 weights).
      site_stats: ``{site name: kinds}`` of extra per-site statistics in collect mode, stored under
        ``"{input quantizer}#{kind}"``: ``channel_amax`` (per input channel max|x|), ``channel_abssum`` and
        ``count`` (for mean|x|), ``awq`` (AWQ-lite search losses, see :mod:`jq.calib.awq`).
      awq_alphas: the AWQ-lite grid of alphas (for the ``awq`` statistic).

    A site whose input quantizer state holds ``pre_quant_scale`` (SmoothQuant / AWQ) computes
    ``(x * pre_quant_scale) @ (W / pre_quant_scale)`` before quantizing, in every mode.
    """

    def __init__(self, traced: TracedModel, specs: Mapping, qstate: Mapping, mode: str = "apply",
                 collect_weights=frozenset(), site_impls: Mapping | None = None,
                 site_stats: Mapping | None = None, awq_alphas=None):
        if mode not in ("apply", "collect"):
            raise ValueError(f"mode must be 'apply' or 'collect', got {mode!r}")
        self.traced = traced
        self.specs = specs
        self.qstate = qstate
        self.mode = mode
        self.collect_weights = frozenset(collect_weights)
        self.site_impls = dict(site_impls or {})
        self.site_stats = {k: frozenset(v) for k, v in (site_stats or {}).items()}
        self.awq_alphas = awq_alphas

    # -- entry point ---------------------------------------------------------------------------------
    def run(self, flat_args):
        """Evaluate on flat ``params + dynamic args`` leaves: outputs (apply) or ``(outputs, stats)`` (collect)."""
        closed = self.traced.closed_jaxpr
        stats: dict | None = {} if self.mode == "collect" else None
        outs = self.eval_jaxpr(closed.jaxpr, closed.consts, list(flat_args), (), dict(self.qstate), stats)
        return (outs, stats) if self.mode == "collect" else outs

    # -- the interpreter ------------------------------------------------------------------------------
    def eval_jaxpr(self, jaxpr, consts, args, prefix: tuple, qstate: dict, stats: dict | None):
        env = {}

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env[v]

        for v, c in zip(jaxpr.constvars, consts):
            env[v] = c
        if len(args) != len(jaxpr.invars):
            raise ValueError(f"jaxpr takes {len(jaxpr.invars)} inputs, got {len(args)}")
        for v, a in zip(jaxpr.invars, args):
            env[v] = a
        traced = self.traced
        for eqn in jaxpr.eqns:
            path = prefix + (id(eqn),)
            invals = [read(v) for v in eqn.invars]
            site = traced.site_at.get(path)
            if site is not None:
                outvals = self._site(eqn, site, invals, qstate, stats)
            elif path in traced.has_sites:
                outvals = self._higher_order(eqn, path, invals, qstate, stats)
            else:
                outvals = _bind(eqn, invals)
            for v, val in zip(eqn.outvars, outvals):
                if not isinstance(v, jcore.DropVar):
                    env[v] = val
        return [read(v) for v in jaxpr.outvars]

    # -- sites ----------------------------------------------------------------------------------------
    def _site(self, eqn, site, invals, qstate, stats):
        impl = self.site_impls.get(site.name) if self.mode == "apply" else None
        if impl is not None:
            return list(impl(eqn, site, invals, qstate))
        vals = list(invals)
        if site.kind != "bmm":
            vals = self._pre_quant_scale(site, vals, qstate)
            kinds = self.site_stats.get(site.name)
            if kinds and stats is not None:
                self._site_stats(eqn, site, vals, qstate, stats, kinds)
        for op, slot in site.roles.items():
            vals[op] = self._quantize(f"{site.name}.{slot}", vals[op], site, op, qstate, stats)
        outs = _bind(eqn, vals)
        if site.kind != "bmm":
            outs[0] = self._quantize(f"{site.name}.output_quantizer", outs[0], site, None, qstate, stats)
        return outs

    def _pre_quant_scale(self, site, vals, qstate):
        pqs = qstate.get(f"{site.name}.input_quantizer", {}).get("pre_quant_scale")
        if pqs is None:
            return vals
        act, w = 1 - site.weight_operand, site.weight_operand
        vals = list(vals)
        vals[act] = (vals[act] * geometry.broadcast_to_activation(site, pqs, vals[act].shape)).astype(vals[act].dtype)
        vals[w] = geometry.scale_weight(site, vals[w], 1.0 / pqs)
        return vals

    def _site_stats(self, eqn, site, vals, qstate, stats, kinds):
        name = f"{site.name}.input_quantizer"
        x, w = vals[1 - site.weight_operand], vals[site.weight_operand]
        true = jnp.array(True)
        new = {}
        if "channel_amax" in kinds:
            new[f"{name}#channel_amax"] = (geometry.channel_reduce(site, x, "amax"), true)
        if "channel_abssum" in kinds:
            new[f"{name}#channel_abssum#sum"] = (geometry.channel_reduce(site, x, "abssum"), true)
            n = x.size // geometry.in_features(site)
            new[f"{name}#count#sum"] = (jnp.float32(n), true)
        if "awq" in kinds:
            from jq.calib.awq import awq_losses
            st = qstate.get(name, {})
            spec = self.specs.get(f"{site.name}.weight_quantizer")
            losses = awq_losses(eqn, site, x, w, st["awq_act_scale"], st["awq_w_scale"], spec, self.awq_alphas)
            new[f"{name}#awq#sum"] = (losses, true)
        stats.update(merge_stats(stats, new))

    def _quantize(self, qname, x, site, op, qstate, stats):
        spec = self.specs.get(qname)
        if spec is None:
            return x
        is_weight = op is not None and op == site.weight_operand
        view = site.view if is_weight else None
        specs = spec if isinstance(spec, tuple) else (spec,)
        state = qstate.get(qname, {})
        if self.mode == "collect":
            if stats is None or (is_weight and qname not in self.collect_weights):
                return x
            v = view.to_canonical(x) if view is not None else x
            first = next((s for s in specs if s.enable), None)
            amax = compute_amax(v, first, view.batch if view is not None else 0) if first is not None else None
            finite = jnp.all(jnp.isfinite(v))
            stats.update(merge_stats(stats, {qname: (amax, finite)}))
            return x
        for i, s in enumerate(specs):
            if not s.enable:
                continue
            key = "amax" if i == 0 else f"amax_{i}"
            amax = state.get(key)
            if amax is None and needs_amax(s):
                raise ValueError(f"quantizer {qname!r} ({s.describe()}) has no calibrated amax: run jq.calibrate "
                                 f"(or disable it with jq.disable_quantizer)")
            x = fake_quant(x, amax, spec=s, view=view)
        return x

    # -- higher-order primitives ----------------------------------------------------------------------
    def _higher_order(self, eqn, path, invals, qstate, stats):
        name = eqn.primitive.name
        if name == "scan":
            return self._scan(eqn, path, invals, qstate, stats)
        if name == "while":
            return self._while(eqn, path, invals, qstate, stats)
        if name == "cond":
            return self._cond(eqn, path, invals, qstate, stats)
        if name == "shard_map":
            return self._shard_map(eqn, path, invals, qstate, stats)
        key = call_jaxpr_param(eqn)
        if key is None:
            raise NotImplementedError(f"jq cannot quantize inside a {name!r} equation yet")
        inner, consts = jaxpr_of(eqn.params[key])
        sub = path + (0,)
        if name in _REMAT and self.mode == "apply":
            policy = eqn.params.get("policy")
            prevent_cse = eqn.params.get("prevent_cse", True)

            def body(*a):
                return self.eval_jaxpr(inner, consts, list(a), sub, qstate, None)

            return list(jax.checkpoint(body, prevent_cse=prevent_cse, policy=policy)(*invals))
        outs = self.eval_jaxpr(inner, consts, invals, sub, qstate, stats)
        return outs[: len(eqn.outvars)]

    def _scan(self, eqn, path, invals, qstate, stats):
        p = eqn.params
        nc, ncar = p["num_consts"], p["num_carry"]
        consts, init, xs = invals[:nc], invals[nc:nc + ncar], invals[nc + ncar:]
        body, body_consts = jaxpr_of(p["jaxpr"])
        sub = path + (0,)
        layer = path in self.traced.layer_scans
        names = self.traced.scan_quantizers.get(path, set())
        q_xs = {n: qstate[n] for n in names if n in qstate} if layer else {}
        kw = dict(length=p["length"], reverse=p["reverse"], unroll=p["unroll"])
        if stats is None:
            def f(carry, x):
                xs_vals, qs = x
                outs = self.eval_jaxpr(body, body_consts, [*consts, *carry, *xs_vals], sub, {**qstate, **qs}, None)
                return outs[:ncar], outs[ncar:]

            carry, ys = lax.scan(f, list(init), (list(xs), q_xs), **kw)
            return [*carry, *ys]

        def g(carry, x):
            xs_vals, qs = x
            st: dict = {}
            outs = self.eval_jaxpr(body, body_consts, [*consts, *carry, *xs_vals], sub, {**qstate, **qs}, st)
            return outs[:ncar], (outs[ncar:], st)

        carry, (ys, st) = lax.scan(g, list(init), (list(xs), q_xs), **kw)
        stats.update(merge_stats(stats, st if layer else _reduce_leading(st)))
        return [*carry, *ys]

    def _while(self, eqn, path, invals, qstate, stats):
        p = eqn.params
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cconsts, bconsts, init = invals[:cn], invals[cn:cn + bn], invals[cn + bn:]
        cond_j, cc = jaxpr_of(p["cond_jaxpr"])
        body_j, bc = jaxpr_of(p["body_jaxpr"])

        def cond_fn(c):
            return self.eval_jaxpr(cond_j, cc, [*cconsts, *c], path + (0,), qstate, None)[0]

        if stats is None:
            def body_fn(c):
                return self.eval_jaxpr(body_j, bc, [*bconsts, *c], path + (1,), qstate, None)

            return list(lax.while_loop(cond_fn, body_fn, list(init)))

        def body_stats(c):
            st: dict = {}
            outs = self.eval_jaxpr(body_j, bc, [*bconsts, *c], path + (1,), qstate, st)
            return outs, st

        st0 = _zeros_like_stats(jax.eval_shape(lambda c: body_stats(c)[1], list(init)))

        def body_fn2(carry):
            c, st = carry
            outs, new = body_stats(c)
            return outs, merge_stats(st, new)

        out, st = lax.while_loop(lambda carry: cond_fn(carry[0]), body_fn2, (list(init), st0))
        stats.update(merge_stats(stats, st))
        return list(out)

    def _cond(self, eqn, path, invals, qstate, stats):
        index, *ops = invals
        branches = eqn.params["branches"]

        def branch_fn(i, want_stats):
            inner, consts = jaxpr_of(branches[i])

            def f(*a):
                st: dict | None = {} if want_stats else None
                outs = self.eval_jaxpr(inner, consts, list(a), path + (i,), qstate, st)
                return (outs, st) if want_stats else outs

            return f

        if stats is None:
            return list(lax.switch(index, [branch_fn(i, False) for i in range(len(branches))], *ops))
        shapes = [jax.eval_shape(branch_fn(i, True), *ops)[1] for i in range(len(branches))]
        union: dict = {}
        for s in shapes:
            union.update(s)

        def padded(i):
            f = branch_fn(i, True)

            def g(*a):
                outs, st = f(*a)
                full = _zeros_like_stats(union)
                full.update(st)
                return outs, full

            return g

        outs, st = lax.switch(index, [padded(i) for i in range(len(branches))], *ops)
        stats.update(merge_stats(stats, st))
        return list(outs)

    def _shard_map(self, eqn, path, invals, qstate, stats):
        from jax.sharding import PartitionSpec as P

        p = eqn.params
        inner, consts = jaxpr_of(p["jaxpr"])
        names = self.traced.scan_quantizers.get(path, set())
        q_sub = {n: qstate[n] for n in names if n in qstate}
        q_leaves, q_def = jax.tree_util.tree_flatten(q_sub)
        n = len(invals)
        axes = tuple(p.get("newly_manual_axes", None) or p["mesh"].axis_names)
        want_stats = stats is not None

        def f(*a):
            qs = jax.tree_util.tree_unflatten(q_def, a[n:])
            st: dict | None = {} if want_stats else None
            outs = tuple(self.eval_jaxpr(inner, consts, list(a[:n]), path + (0,), {**qstate, **qs}, st))
            if not want_stats:
                return outs
            st = {k: (None if am is None else lax.pmax(am, axes), lax.pmin(fin.astype(jnp.int32), axes) > 0)
                  for k, (am, fin) in st.items()}
            return outs, st

        in_specs = tuple(p["in_specs"]) + (P(),) * len(q_leaves)
        out_specs = tuple(p["out_specs"])
        if want_stats:
            out_specs = (out_specs, P())  # statistics are pmax-reduced, hence replicated
        kwargs = {}
        for key in ("check_vma", "check_rep"):
            if key in p:
                kwargs[key] = False
        smap = jax.shard_map(f, mesh=p["mesh"], in_specs=in_specs, out_specs=out_specs, **kwargs)
        res = smap(*invals, *q_leaves)
        if want_stats:
            outs, st = res
            stats.update(merge_stats(stats, st))
            return list(outs)
        return list(res)
