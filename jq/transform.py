"""The functional transform: evaluate a traced ``apply_fn`` with a handler at every quantizable site.

:class:`Evaluator` interprets the jaxpr of a :class:`~jq.trace.TracedModel`. At each site it calls the
handler (:mod:`jq.handlers`): fake quantization, statistics collection, an algorithm's search, ONNX naming
or a real-quantized kernel. Equations without sites below them are re-bound unchanged, so jitted
sub-computations stay intact. Higher-order equations with sites inside are rebuilt (their structure comes
from :func:`jq.trace.control_flow.bodies`, shared with the tracer and the dependency analysis):

* ``jit``/``closed_call``/``custom_jvp``/``custom_vjp`` calls are inlined (their custom derivative rules
  are replaced by differentiation of the quantized body, whose quantizers carry the STE);
* ``remat`` is re-wrapped in ``jax.checkpoint`` with the same policy;
* ``scan`` is rebuilt with ``lax.scan``; in a layer scan the quantizer state is sliced per layer as ``xs``
  and statistics come back stacked per layer, otherwise they are reduced over iterations;
* ``while`` carries running statistics; ``cond`` returns the same statistics structure from every branch;
* ``shard_map`` is re-wrapped with the quantizer state replicated and statistics reduced across devices.

Example:
  >>> from jq.handlers import FakeQuant
  >>> outs = Evaluator(traced, specs, qstate, FakeQuant()).run(flat_args)
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import jax
from jax import lax

from jq.calib import stats as S
from jq.handlers.base import Handler, Scope, SiteCall, bind
from jq.trace.control_flow import JaxprVisitor, bodies, scan_counts
from jq.trace.tracer import TracedModel

__all__ = ["Evaluator"]


class Evaluator(JaxprVisitor):
    """Evaluate a traced model with a handler at its sites.

    Args:
      traced: the :class:`TracedModel`.
      specs: quantizer name -> resolved spec (a :class:`QuantizerSpec` or a tuple of them) or None (off).
      qstate: quantizer name -> ``{"amax": ..., "pre_quant_scale": ...}``.
      handler: the :class:`~jq.handlers.Handler` (e.g. :class:`~jq.handlers.FakeQuant`).
    """

    def __init__(self, traced: TracedModel, specs: Mapping, qstate: Mapping, handler: Handler):
        self.traced = traced
        self.specs = specs
        self.qstate = qstate
        self.handler = handler
        self._scopes: list[Scope] = []

    # -- entry point ---------------------------------------------------------------------------------
    def run(self, flat_args):
        """Evaluate on flat ``params + dynamic args`` leaves: the outputs, and the statistics when the handler
        collects (``(outputs, stats)``)."""
        closed = self.traced.closed_jaxpr
        scope = Scope(dict(self.qstate), {} if self.handler.collects else None)
        with self._scope(scope):
            outs = self.visit_jaxpr(closed.jaxpr, closed.consts, list(flat_args), ())
        return (outs, scope.stats) if self.handler.collects else outs

    @contextlib.contextmanager
    def _scope(self, scope: Scope):
        self._scopes.append(scope)
        try:
            yield scope
        finally:
            self._scopes.pop()

    @property
    def scope(self) -> Scope:
        return self._scopes[-1]

    def _collecting(self) -> bool:
        return self.scope.stats is not None

    def _inner(self, body, args, path, qstate=None, collect=None) -> tuple[list, dict | None]:
        """Visit ``body`` in a fresh scope; returns its outputs and the statistics it recorded."""
        collect = self._collecting() if collect is None else collect
        scope = Scope(self.scope.qstate if qstate is None else qstate, {} if collect else None)
        with self._scope(scope):
            outs = self.visit_body(body, args, path)
        return outs, scope.stats

    def _merge(self, stats) -> None:
        if stats and self.scope.stats is not None:
            self.scope.stats.update(S.merge_stats(self.scope.stats, stats))

    # -- equations ------------------------------------------------------------------------------------------
    def visit_plain(self, eqn, invals, path):
        return bind(eqn, invals)

    def visit_site(self, eqn, invals, path):
        site = self.traced.site_at.get(path)
        if site is None:
            return bind(eqn, invals)
        return list(self.handler.site(SiteCall(eqn, site, list(invals), self.scope, self)))

    def _has_sites(self, path) -> bool:
        return path in self.traced.has_sites

    def visit_call(self, eqn, invals, path):
        if not self._has_sites(path):
            return bind(eqn, invals)
        (body,) = bodies(eqn)
        outs, st = self._inner(body, [invals[i] for i in body.operands], path)
        self._merge(st)
        return outs[: len(eqn.outvars)]

    def visit_remat(self, eqn, invals, path):
        if not self._has_sites(path):
            return bind(eqn, invals)
        if self._collecting():  # statistics cannot leave a checkpointed function: evaluate it inline
            return self.visit_call(eqn, invals, path)
        (body,) = bodies(eqn)
        qstate = self.scope.qstate

        def fn(*a):
            return self._inner(body, list(a), path, qstate, collect=False)[0]

        policy, prevent_cse = eqn.params.get("policy"), eqn.params.get("prevent_cse", True)
        return list(jax.checkpoint(fn, prevent_cse=prevent_cse, policy=policy)(*invals))

    def visit_scan(self, eqn, invals, path):
        if not self._has_sites(path):
            return bind(eqn, invals)
        p = eqn.params
        (body,) = bodies(eqn)
        nc, ncar = scan_counts(p)
        consts, init, xs = invals[:nc], invals[nc:nc + ncar], invals[nc + ncar:]
        layer = path in self.traced.layer_scans
        qstate = self.scope.qstate
        names = self.traced.scan_quantizers.get(path, set())
        q_xs = {n: qstate[n] for n in names if n in qstate} if layer else {}
        collect = self._collecting()

        def step(carry, x):
            xs_vals, qs = x
            outs, st = self._inner(body, [*consts, *carry, *xs_vals], path, {**qstate, **qs}, collect)
            return outs[:ncar], (outs[ncar:], st if collect else None)

        carry, (ys, st) = lax.scan(step, list(init), (list(xs), q_xs), length=p["length"], reverse=p["reverse"],
                                   unroll=p["unroll"])
        if collect:  # a layer scan keeps per-layer statistics; any other scan reduces them over iterations
            self._merge(st if layer else S.reduce_steps(st))
        return [*carry, *ys]

    def visit_while(self, eqn, invals, path):
        if not self._has_sites(path):
            return bind(eqn, invals)
        cond, body = bodies(eqn)
        n_carry = len(eqn.outvars)
        carry0 = invals[len(invals) - n_carry:]

        def cond_fn(c):
            args = [invals[i] for i in cond.operands[: len(cond.operands) - n_carry]] + list(c)
            return self._inner(cond, args, path, collect=False)[0][0]

        def body_fn(c):
            args = [invals[i] for i in body.operands[: len(body.operands) - n_carry]] + list(c)
            return self._inner(body, args, path)

        if not self._collecting():
            return list(lax.while_loop(cond_fn, lambda c: body_fn(c)[0], list(carry0)))
        st0 = S.identity_like(jax.eval_shape(lambda c: body_fn(c)[1], list(carry0)))

        def body_stats(carry):
            c, st = carry
            outs, new = body_fn(c)
            return outs, S.merge_stats(st, new)

        out, st = lax.while_loop(lambda carry: cond_fn(carry[0]), body_stats, (list(carry0), st0))
        self._merge(st)
        return list(out)

    def visit_cond(self, eqn, invals, path):
        if not self._has_sites(path):
            return bind(eqn, invals)
        index, branches = invals[0], bodies(eqn)
        collect = self._collecting()

        def branch_fn(b):
            def f(*a):
                return self._inner(b, list(a), path, collect=collect)
            return f

        ops = invals[1:]
        if not collect:
            return list(lax.switch(index, [lambda *a, b=b: branch_fn(b)(*a)[0] for b in branches], *ops))
        union: dict = {}
        for b in branches:
            union.update(jax.eval_shape(branch_fn(b), *ops)[1])
        neutral = S.identity_like(union)

        def padded(b):
            def g(*a):
                outs, st = branch_fn(b)(*a)
                return outs, {**neutral, **st}
            return g

        outs, st = lax.switch(index, [padded(b) for b in branches], *ops)
        self._merge(st)
        return list(outs)

    def visit_shard_map(self, eqn, invals, path):
        if not self._has_sites(path):
            return bind(eqn, invals)
        from jax.sharding import PartitionSpec

        p = eqn.params
        (body,) = bodies(eqn)
        qstate = self.scope.qstate
        names = self.traced.scan_quantizers.get(path, set())
        q_leaves, q_def = jax.tree_util.tree_flatten({n: qstate[n] for n in names if n in qstate})
        n = len(invals)
        axes = tuple(p.get("newly_manual_axes", None) or p["mesh"].axis_names)
        collect = self._collecting()

        def f(*a):
            qs = jax.tree_util.tree_unflatten(q_def, a[n:])
            outs, st = self._inner(body, list(a[:n]), path, {**qstate, **qs}, collect)
            return (tuple(outs), S.all_reduce(st, axes)) if collect else tuple(outs)

        in_specs = tuple(p["in_specs"]) + (PartitionSpec(),) * len(q_leaves)
        out_specs = tuple(p["out_specs"])
        if collect:
            out_specs = (out_specs, PartitionSpec())  # statistics are reduced across devices, hence replicated
        kwargs = {key: p[key] for key in ("check_vma", "check_rep") if key in p}
        res = jax.shard_map(f, mesh=p["mesh"], in_specs=in_specs, out_specs=out_specs, **kwargs)(*invals, *q_leaves)
        if collect:
            outs, st = res
            self._merge(st)
            return list(outs)
        return list(res)
