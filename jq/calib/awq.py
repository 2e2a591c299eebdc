"""AWQ-lite: activation-aware per-input-channel scaling for block-quantized weights.

Two passes over the calibration data. Pass 1 collects ``act_j = mean|x_j|`` per input channel; from the
params, ``w_j = mean_i |W[i, j]| / blockmax|W[i, block(j)]|`` (the weight's magnitude relative to its
quantization block). Pass 2 tries ``alpha`` in ``{0, step, ..., 1}``::

    s = act^alpha / w^(1 - alpha);   s = s / sqrt(max(s) * min(s));   s = clamp(s, 1e-4, 1e4)
    loss(alpha) = mean((x / s) @ fq(W * s) - x @ W)^2        (summed over batches)

and keeps the best ``alpha``. The input is then multiplied by ``pre_quant_scale = 1 / s`` and the weight's
input channels by ``s``, and the quantizers are re-calibrated (max). Siblings that read the same input
(q/k/v, gate/up) share one alpha and one scale, as fused serving kernels need. Applies to sites with an
enabled per-block weight quantizer of the formats in ``formats`` (the first stage of a sequential one).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jq.calib.base import Algorithm
from jq.calib.collect import pytree_handler
from jq.calib.max import max_calibrate
from jq.calib.smoothquant import weight_channel_reduce
from jq.calib.stats import Sum
from jq.fake_quant import fake_quant
from jq.handlers.base import Handler
from jq.trace import geometry
from jq.trace.primitives import bind_eqn
from jq.trace.sites import ParamOrigin
from jq.trace.symbols import sibling_partition

__all__ = ["AWQLite", "awq_targets", "awq_alphas", "awq_weight_scale", "awq_losses", "awq_scale", "AWQ_FORMATS"]

MIN_SCALE, MAX_SCALE = 1e-4, 1e4
AWQ_FORMATS = ("int", "nvfp4")
ACT_ABSSUM, TOKENS, LOSSES = "act_abssum", "tokens", "awq_losses"
ACT_SCALE, W_SCALE = "awq.act_scale", "awq.w_scale"  # search inputs handed to pass 2 in the quantizer state


def _first_stage(spec):
    return spec[0] if isinstance(spec, tuple) else spec


def awq_targets(qm, traced, formats=AWQ_FORMATS) -> list:
    """Sites AWQ applies to: an enabled per-block weight quantizer of ``formats`` on a params weight."""
    out = []
    for s in traced.sites:
        if s.kind == "bmm" or not isinstance(s.weight, ParamOrigin):
            continue
        w = qm.spec(f"{s.name}.weight_quantizer")
        if w is None:
            continue
        w = _first_stage(w)
        if w.format.name in formats and w.format.blocks(w, s.view.shape, s.view.batch) is not None:
            out.append(s)
    return out


def awq_alphas(step: float = 0.1) -> np.ndarray:
    """The grid ``0, step, ..., 1``."""
    n = int(round(1.0 / step))
    return np.linspace(0.0, 1.0, n + 1).astype(np.float32)


def awq_weight_scale(site, spec, params_leaves) -> jax.Array:
    """``mean_i |W[i, j]| / blockmax`` per input channel, per layer."""
    spec = _first_stage(spec)

    def rel(c):  # c: rows x in (absolute values), blocks along in
        layout = spec.format.blocks(spec, c.shape)
        bmax = layout.merge(jnp.broadcast_to(layout.block_amax(c), layout.blocked_shape))
        return jnp.mean(c / jnp.maximum(bmax, 1e-12), axis=0)

    return weight_channel_reduce(site, params_leaves, rel)


def awq_scale(act_scale, w_scale, alpha):
    """``s = act^alpha / w^(1-alpha)``, normalised by ``sqrt(max * min)`` and clamped."""
    s = jnp.power(jnp.maximum(act_scale, 1e-8), alpha) / jnp.power(jnp.maximum(w_scale, 1e-8), 1.0 - alpha)
    s = s / jnp.sqrt(jnp.max(s) * jnp.min(s))
    return jnp.clip(s, MIN_SCALE, MAX_SCALE)


def awq_losses(eqn, site, x, w, act_scale, w_scale, spec, alphas) -> jax.Array:
    """Output MSE of the site for each alpha (weights fake-quantized with their amax recomputed)."""
    spec = _first_stage(spec)
    act, wo = 1 - site.weight_operand, site.weight_operand
    base = [None] * len(eqn.invars)
    base[act], base[wo] = x, w

    def out(xv, wv):
        vals = list(base)
        vals[act], vals[wo] = xv, wv
        return bind_eqn(eqn, vals).astype(jnp.float32)

    y_ref = out(x, w)

    def one(alpha):
        s = awq_scale(act_scale, w_scale, alpha)
        xs = (x / geometry.broadcast_to_activation(site, s, x.shape)).astype(x.dtype)
        ws = geometry.scale_weight(site, w, s)
        amax = spec.format.compute_amax(site.view.to_canonical(ws), spec, site.view.batch)
        wq = fake_quant(ws, amax, spec=spec, view=site.view)
        return jnp.mean((out(xs, wq) - y_ref) ** 2)

    return jax.lax.map(one, jnp.asarray(alphas))


@pytree_handler
@dataclasses.dataclass(frozen=True)
class ActAbsSum(Handler):
    """Pass 1: ``sum|x_j|`` per input channel and the token count at the target sites."""

    sites: frozenset = frozenset()
    collects = True

    def site(self, call):
        if call.site.name in self.sites:
            x = call.pre_scaled()[1 - call.site.weight_operand]
            n = x.size // geometry.in_features(call.site)
            call.scope.record((call.site.name, ACT_ABSSUM), Sum.of(geometry.channel_reduce(call.site, x, "abssum")))
            call.scope.record((call.site.name, TOKENS), Sum.of(jnp.float32(n)))
        return call.default()


@pytree_handler
@dataclasses.dataclass(frozen=True)
class LossSearch(Handler):
    """Pass 2: the output MSE of each target site for every alpha (summed over batches)."""

    sites: frozenset = frozenset()
    alphas: tuple = ()
    collects = True

    def site(self, call):
        name = call.site.name
        if name in self.sites:
            vals = call.pre_scaled()
            x, w = vals[1 - call.site.weight_operand], vals[call.site.weight_operand]
            st = call.qstate[f"{name}.input_quantizer"]
            losses = awq_losses(call.eqn, call.site, x, w, st[ACT_SCALE], st[W_SCALE],
                                call.spec("weight_quantizer"), self.alphas)
            call.scope.record((name, LOSSES), Sum.of(losses))
        return call.default()


@dataclasses.dataclass(frozen=True)
class AWQLite(Algorithm):
    """ModelOpt's ``awq_lite``: the per-channel scale of the best ``alpha`` on a grid of step ``alpha_step``."""

    alpha_step: float = 0.1
    formats: tuple = AWQ_FORMATS
    name = "awq_lite"
    passes = 3
    needs_data = True

    def calibrate(self, qm, data):
        data.trace(qm)
        traced = qm.traced
        leaves = jax.tree_util.tree_leaves(qm.params)
        targets = {s.name: s for s in awq_targets(qm, traced, self.formats)}
        groups = sibling_partition(traced, list(targets))
        stats = data.collect(qm, ActAbsSum(frozenset(g[0] for g in groups)), desc="awq pass 1")
        search_state = {k: dict(v) for k, v in qm.qstate.items()}
        scales = {}
        for group in groups:
            if (group[0], ACT_ABSSUM) not in stats:
                continue  # no data reached the group
            act = stats[(group[0], ACT_ABSSUM)].value / stats[(group[0], TOKENS)].value[..., None]
            ws = [awq_weight_scale(targets[n], qm.spec(f"{n}.weight_quantizer"), leaves) for n in group]
            rows = [targets[n].view.shape[targets[n].view.batch] for n in group]
            w = sum(r * x for r, x in zip(rows, ws)) / sum(rows)
            scales[tuple(group)] = (act, w)
            for n in group:
                search_state.setdefault(f"{n}.input_quantizer", {}).update({ACT_SCALE: act, W_SCALE: w})
        alphas = tuple(float(a) for a in awq_alphas(self.alpha_step))
        searched = frozenset(n for g in scales for n in g)
        stats = data.collect(qm, LossSearch(searched, alphas), qstate=search_state, desc="awq pass 2")
        qstate = {k: dict(v) for k, v in qm.qstate.items()}
        for group, (act, w) in scales.items():
            if any((n, LOSSES) not in stats for n in group):
                continue
            loss = sum(stats[(n, LOSSES)].value for n in group)  # (*layers, n_alpha)
            alpha = jnp.asarray(alphas)[jnp.argmin(loss, axis=-1)]
            fn = awq_scale
            for _ in range(alpha.ndim):
                fn = jax.vmap(fn)
            pqs = (1.0 / fn(act, w, alpha)).astype(jnp.float32)
            for n in group:
                qstate.setdefault(f"{n}.input_quantizer", {})["pre_quant_scale"] = pqs
        return qm.replace(qstate=max_calibrate(qm, data, qstate))
