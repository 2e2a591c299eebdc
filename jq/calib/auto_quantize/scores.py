"""Sensitivity scores of auto_quantize: how much the loss moves when one site (or group) is quantized with a format.

Gradient score (ModelOpt's default), per site ``s`` and candidate ``k``, summed over the scoring batches::

    score[s][k] = sum_b sum_elements (dL/dy_s * (y_s^k - y_s))^2

``y_s`` is the site's float output in the float model and ``y_s^k`` the output of the same site, on the same
input, quantized with candidate ``k`` alone (its calibrated state, pre_quant_scale and low-rank branch). One
backward pass per batch gives ``dL/dy_s`` at every site: the :class:`Probe` handler adds a zero "probe" (held in
the quantizer state, so it is per layer in layer scans) to each site's output and the loss is differentiated with
respect to the probes. A second pass (:class:`GradientScore`) computes the differences. This is the second-order
Taylor term of the loss with the Fisher information standing in for the Hessian (exact for log-likelihood losses).

KL score (models without labels), per group ``g`` (siblings together) and candidate ``k``::

    score[g][k] = sum_b sum_positions KL(p_float || p_(g quantized with k, all else float))

over the last axis of the logits. One forward per batch, group and candidate (:class:`OnlyGroup` switches the
group's sites to the candidate with ``lax.switch``, so one compiled function serves all).

In a loop that is not a layer scan (``while``, a scan over time) a site's probe is shared by the iterations, so
its gradient is the sum over them: the gradient score is then approximate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jq.calib.collect import as_args, pytree_handler
from jq.calib.stats import Sum
from jq.handlers.apply import FakeQuant
from jq.handlers.base import Handler, Scope, SiteCall
from jq.transform import Evaluator

__all__ = ["Probe", "GradientScore", "OnlyGroup", "candidate_output", "gradient_scores", "kl_scores", "monotone",
           "PROBE", "GRAD", "CANDS", "WEIGHT"]

PROBE, GRAD, CANDS, WEIGHT = "aq_probe", "aq_grad", "aq_cands", "aq_weight"  # keys in the scoring quantizer state
SCORE = "aq_score"


def _slot(site) -> str:
    """The quantizer-state entry the scoring values of a site live under (sliced per layer in layer scans)."""
    return f"{site.name}.weight_quantizer"


@dataclasses.dataclass(frozen=True)
class _Candidate:
    """What :class:`~jq.handlers.SiteCall` reads from its evaluator, for one candidate format."""

    specs: dict
    handler: Handler = FakeQuant()


def candidate_output(call: SiteCall, specs: dict, k: int):
    """The site's first output with candidate ``k`` (its specs ``specs``, its state from the scoring state)."""
    st = call.qstate[_slot(call.site)][CANDS][k]
    vals = list(call.invals)
    if WEIGHT in st:  # the candidate changed the weight (SVDQuant's residual, GPTQ)
        vals[call.site.weight_operand] = st[WEIGHT].astype(vals[call.site.weight_operand].dtype)
    states = {n: v for n, v in st.items() if n != WEIGHT}
    return SiteCall(call.eqn, call.site, vals, Scope(states), _Candidate(specs)).default()[0]


@pytree_handler
@dataclasses.dataclass(frozen=True)
class Probe(Handler):
    """The float model with ``qstate[site.weight_quantizer][PROBE]`` added to each searched site's output."""

    sites: frozenset = frozenset()

    def site(self, call):
        outs = call.default()
        if call.site.name in self.sites:
            outs[0] = outs[0] + call.qstate[_slot(call.site)][PROBE].astype(outs[0].dtype)
        return outs


@pytree_handler
@dataclasses.dataclass(frozen=True)
class GradientScore(Handler):
    """Records ``sum((g * (y_k - y))^2)`` per searched site and candidate (``g`` from the state's GRAD)."""

    sites: frozenset = frozenset()
    cand_specs: tuple = ()  # per candidate: ((quantizer name, spec), ...); None for the float candidate
    collects = True

    def site(self, call):
        outs = call.default()
        if call.site.name not in self.sites:
            return outs
        y = outs[0].astype(jnp.float32)
        g = call.qstate[_slot(call.site)][GRAD].astype(jnp.float32)
        for k, specs in enumerate(self.cand_specs):
            if specs is None:
                continue
            d = (candidate_output(call, dict(specs), k).astype(jnp.float32) - y) * g
            call.scope.record((call.site.name, f"{SCORE}_{k}"), Sum.of(jnp.sum(jnp.clip(d, -1e10, 1e10) ** 2)))
        return outs


@pytree_handler
@dataclasses.dataclass(frozen=True)
class OnlyGroup(Handler):
    """Float model except at the sites with ``choice[site] >= 0``, evaluated with that candidate."""

    choice: dict = dataclasses.field(default_factory=dict)  # site name -> int32 candidate index or -1 (traced)
    cand_specs: tuple = ()
    array_fields = ("choice",)

    def site(self, call):
        idx = self.choice.get(call.site.name)
        if idx is None:
            return call.default()
        outs = call.default()

        def branch(k):
            specs = self.cand_specs[k]
            if specs is None:
                return lambda: outs[0]
            return lambda: candidate_output(call, dict(specs), k).astype(outs[0].dtype)

        branches = [lambda: outs[0]] + [branch(k) for k in range(len(self.cand_specs))]
        return [lax.switch(idx + 1, branches)] + outs[1:]


def _probes(traced, sites) -> dict:
    out = {}
    for s in traced.sites:
        if s.name in sites:
            aval = s.eqn.outvars[0].aval
            out[s.name] = jnp.zeros(tuple(s.layer_axes) + tuple(aval.shape), aval.dtype)
    return out


def _with(state: dict, traced, sites, key: str, values: dict) -> dict:
    """``state`` with ``values[site]`` under each site's scoring entry."""
    out = dict(state)
    for s in traced.sites:
        if s.name in sites:
            out[_slot(s)] = {**out.get(_slot(s), {}), key: values[s.name]}
    return out


def gradient_scores(qm, batches, sites: frozenset, cand_specs: tuple, state: dict, loss_fn: Callable,
                    inputs_fn: Callable, progress) -> dict:
    """``{site: np.ndarray[K]}`` gradient scores over ``batches`` (``qm``: the float model; ``state``: the scoring
    state with the candidates' states; ``progress``: an iterable wrapper)."""
    from jq.calib.collect import collection_pass

    grad_fns: dict = {}
    totals: dict = {}
    for batch in progress(batches):
        args, kwargs = as_args(inputs_fn(batch))
        key, traced, flat = qm.cache.get(qm.params, args, kwargs)
        if key not in grad_fns:
            specs = qm.specs(traced)

            def loss_of(probes, flat, batch, traced=traced, specs=specs):
                outs = Evaluator(traced, specs, _with(state, traced, sites, PROBE, probes), Probe(sites)).run(flat)
                loss = loss_fn(jax.tree_util.tree_unflatten(traced.out_tree, outs), batch)
                if jnp.ndim(loss) != 0:
                    raise ValueError(f"loss_fn must return a scalar, got shape {jnp.shape(loss)}")
                return loss

            grad_fns[key] = jax.jit(jax.grad(loss_of))
        grads = grad_fns[key](_probes(traced, sites), flat, batch)
        stats = collection_pass(qm, [inputs_fn(batch)], None, GradientScore(sites, cand_specs),
                                qstate=_with(state, traced, sites, GRAD, grads), progress=False, desc="auto_quantize")
        for (name, kind), st in stats.items():
            k = int(kind.rsplit("_", 1)[1])
            totals.setdefault(name, {})[k] = totals.get(name, {}).get(k, 0.0) + float(jnp.sum(st.value))
    return {n: np.array([totals.get(n, {}).get(k, 0.0) for k in range(len(cand_specs))]) for n in sites}


def _kl(logits_ref, logits):
    lp, lq = jax.nn.log_softmax(logits_ref.astype(jnp.float32), -1), jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    return jnp.sum(jnp.exp(lp) * (lp - lq))


def kl_scores(qm, batches, groups: list, cand_specs: tuple, state: dict, logits_fn: Callable, inputs_fn: Callable,
              progress) -> list:
    """One ``np.ndarray[K]`` per group: KL of the output distribution with only that group quantized, per candidate."""
    fns: dict = {}
    names = [n for g in groups for n in g]
    totals = np.zeros((len(groups), len(cand_specs)))
    for batch in progress(batches):
        args, kwargs = as_args(inputs_fn(batch))
        key, traced, flat = qm.cache.get(qm.params, args, kwargs)
        if key not in fns:
            specs = qm.specs(traced)

            def run(flat, handler, traced=traced, specs=specs):
                outs = Evaluator(traced, specs, state, handler).run(flat)
                return logits_fn(jax.tree_util.tree_unflatten(traced.out_tree, outs))

            def kl(flat, handler, ref):
                return _kl(ref, run(flat, handler))

            fns[key] = (jax.jit(run), jax.jit(kl))
        run, kl = fns[key]
        off = {n: jnp.int32(-1) for n in names}
        ref = run(flat, OnlyGroup(off, cand_specs))
        for gi, group in enumerate(groups):
            for k, specs in enumerate(cand_specs):
                if specs is None:
                    continue
                choice = {**off, **{n: jnp.int32(k) for n in group}}
                totals[gi, k] += float(kl(flat, OnlyGroup(choice, cand_specs), ref))
    return [totals[i] for i in range(len(groups))]


def monotone(costs: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Scores made non-increasing in cost: an option never scores worse than a strictly cheaper one (ModelOpt)."""
    costs, scores = np.asarray(costs, np.float64), np.asarray(scores, np.float64)
    out = scores.copy()
    for i in range(len(costs)):
        cheaper = costs < costs[i]
        if cheaper.any():
            out[i] = min(out[i], scores[cheaper].min())
    return out
