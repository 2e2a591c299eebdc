"""SmoothQuant: migrate activation outliers into the weights with a per-input-channel scale.

For each linear site (and each group of siblings that read the same input, e.g. q/k/v), with
``a_j = max|x_j|`` over the calibration data and ``w_j = max_i |W[i, j]|`` over the weights of the group::

    pre_quant_scale_j = clamp(w_j^(1 - alpha) / a_j^alpha, 1e-4, 1e4)     (1 where a_j ~ 0)
    x @ W == (x * pre_quant_scale) @ (W / pre_quant_scale)

so the smoothed activation has flatter channels and the weight absorbs the difference. The activation
and weight amaxes are then re-calibrated (max) on the smoothed tensors. Applies where both the input and
the weight quantizer are enabled single-stage quantizers of the formats in ``formats`` (ModelOpt: INT8).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jq.calib.base import Algorithm
from jq.calib.collect import pytree_handler
from jq.calib.max import max_calibrate
from jq.calib.stats import Amax
from jq.calib.weights import replay_weight
from jq.handlers.base import Handler
from jq.trace import geometry
from jq.trace.sites import ParamOrigin, ScanSlice
from jq.trace.symbols import sibling_partition

__all__ = ["SmoothQuant", "ChannelAmax", "smoothing_targets", "smoothquant_scales", "weight_channel_reduce"]

MIN_SCALE, MAX_SCALE = 1e-4, 1e4
CHANNEL_AMAX = "channel_amax"


def smoothing_targets(qm, traced, formats) -> list:
    """Linear sites on a params weight whose input and weight quantizers are single-stage ``formats``."""
    out = []
    for s in traced.sites:
        if s.kind == "bmm" or not isinstance(s.weight, ParamOrigin):
            continue
        i, w = qm.spec(f"{s.name}.input_quantizer"), qm.spec(f"{s.name}.weight_quantizer")
        if i is None or w is None or isinstance(i, tuple) or isinstance(w, tuple):
            continue
        if i.format.name in formats and w.format.name in formats:
            out.append(s)
    return out


@pytree_handler
@dataclasses.dataclass(frozen=True)
class ChannelAmax(Handler):
    """Records ``max|x_j|`` per input channel of the target sites (after any earlier pre_quant_scale)."""

    sites: frozenset = frozenset()
    collects = True

    def site(self, call):
        if call.site.name in self.sites:
            x = call.pre_scaled()[1 - call.site.weight_operand]
            call.scope.record((call.site.name, CHANNEL_AMAX), Amax.of(x, geometry.channel_reduce(call.site, x, "amax")))
        return call.default()


def weight_channel_reduce(site, params_leaves, op) -> jax.Array:
    """Per-input-channel reduction of ``|W|`` over the output rows, from the params, per layer.

    ``op``: ``"amax"`` (max over rows) or a callable ``f(canonical [rows, in]) -> [in]``.
    Returns shape ``(*layer_axes, in)``.
    """
    origin = site.weight
    w = replay_weight(params_leaves[origin.leaf], origin.chain)
    n_layers = sum(isinstance(c, ScanSlice) for c in origin.chain)
    view = site.view

    def one(v):
        c = jnp.abs(view.to_canonical(v).astype(jnp.float32))
        c = jnp.moveaxis(c, view.batch + 1, -1).reshape(-1, c.shape[view.batch + 1])  # rows x in
        return jnp.max(c, axis=0) if op == "amax" else op(c)

    fn = one
    for _ in range(n_layers):
        fn = jax.vmap(fn)
    r = fn(w)
    if n_layers < len(site.layer_axes):
        raise NotImplementedError(f"{site.name}: a weight shared across layer scans cannot be smoothed per layer")
    return r


def smoothquant_scales(targets: dict, groups, stats: dict, params_leaves, alpha: float) -> dict:
    """``{input quantizer name: pre_quant_scale}`` from per-channel activation amaxes in ``stats``."""
    out = {}
    for group in groups:
        act = stats.get((group[0], CHANNEL_AMAX))
        if act is None:
            continue  # no calibration data reached this site
        act = act.value
        w = None
        for n in group:
            wn = weight_channel_reduce(targets[n], params_leaves, "amax")
            w = wn if w is None else jnp.maximum(w, wn)
        scale = jnp.power(jnp.maximum(w, 1e-12), 1.0 - alpha) / jnp.power(jnp.maximum(act, 1e-12), alpha)
        scale = jnp.where(act <= 1e-8, 1.0, jnp.clip(scale, MIN_SCALE, MAX_SCALE)).astype(jnp.float32)
        for n in group:
            out[f"{n}.input_quantizer"] = scale
    return out


@dataclasses.dataclass(frozen=True)
class SmoothQuant(Algorithm):
    """SmoothQuant (Xiao et al. 2023) with migration strength ``alpha`` (ModelOpt's default 1.0)."""

    alpha: float = 1.0
    formats: tuple = ("int",)
    name = "smoothquant"
    needs_data = True

    def calibrate(self, qm, data):
        data.trace(qm)
        traced = qm.traced
        targets = {s.name: s for s in smoothing_targets(qm, traced, self.formats)}
        groups = sibling_partition(traced, list(targets))
        # siblings read the same input: observing the first member of each group is enough
        stats = data.collect(qm, ChannelAmax(frozenset(g[0] for g in groups)), desc="smoothquant")
        leaves = jax.tree_util.tree_leaves(qm.params)
        qstate = {k: dict(v) for k, v in qm.qstate.items()}
        for name, scale in smoothquant_scales(targets, groups, stats, leaves, self.alpha).items():
            qstate.setdefault(name, {})["pre_quant_scale"] = scale
        return qm.replace(qstate=max_calibrate(qm, data, qstate))
