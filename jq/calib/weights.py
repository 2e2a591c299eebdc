"""Weights calibrated straight from the params: every layer gets an amax even if no data reaches it.

The chain of equations that turns a params leaf into the site's weight operand (recorded by the tracer) is
replayed on the leaf, vmapped over layer-scan slices; the canonical ``[out, in]`` view is taken; the
quantizer's calibrator computes the amax per layer. Sequential specs get ``amax``, ``amax_1``, ...: stage
``i`` is calibrated on the output of the stages before it (ModelOpt's SequentialQuantizer order). A site's
``pre_quant_scale`` divides the weight's input channels first, as it does when the model runs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jq.calib import calibrators
from jq.fake_quant import fake_quant
from jq.handlers.apply import stage_amax_key
from jq.quantizer import CanonicalView
from jq.trace.sites import ParamOrigin, ScanSlice

__all__ = ["replay_weight", "weight_operand", "canonical_weights", "calibrate_weights", "apply_stage", "per_layer"]


def replay_weight(value, chain):
    """Apply a :class:`ParamOrigin` chain to a params leaf; a ``ScanSlice`` maps the rest over axis 0."""
    for k, step in enumerate(chain):
        if isinstance(step, ScanSlice):
            rest = chain[k + 1:]
            return jax.vmap(lambda v: replay_weight(v, rest))(value)
        value = step.apply(value)
    return value


def _slice_depths(chain) -> list[int]:
    return [s.depth for s in chain if isinstance(s, ScanSlice)]


def weight_operand(origin: ParamOrigin, leaves) -> tuple[jax.Array, list[int]]:
    """The site's weight operand rebuilt from the params, and the layer depths of its leading axes."""
    return replay_weight(leaves[origin.leaf], origin.chain), _slice_depths(origin.chain)


def per_layer(fn, value, n_axes: int, *more):
    """``fn`` vmapped over the first ``n_axes`` (layer-scan) axes of ``value`` (and of ``more``)."""
    for _ in range(n_axes):
        fn = jax.vmap(fn)
    return fn(value, *more)


def _to_layer_axes(x, depths, layer_axes):
    """Broadcast an array whose leading axes are the layer scans ``depths`` to all ``layer_axes``."""
    for d in range(len(layer_axes)):
        if d not in depths:
            x = jnp.expand_dims(x, d)
    return jnp.broadcast_to(x, tuple(layer_axes) + x.shape[len(layer_axes):])


def canonical_weights(site, params_leaves, qstate=None) -> tuple[jax.Array, int]:
    """The site's canonical weights (leading layer axes first) with ``pre_quant_scale`` applied, and the
    number of layer axes."""
    w, depths = weight_operand(site.weight, params_leaves)
    view = site.view
    c = per_layer(view.to_canonical, w, len(depths))
    pqs = (qstate or {}).get(f"{site.name}.input_quantizer", {}).get("pre_quant_scale")
    if pqs is not None:
        if len(depths) != len(site.layer_axes):
            raise NotImplementedError(f"{site.name}: pre_quant_scale on a weight shared across layer scans")
        axis = view.batch + 1

        def divide(v, p):
            shape = [1] * v.ndim
            shape[axis] = v.shape[axis]
            return v / jnp.reshape(p, shape)

        c = per_layer(divide, c, len(depths), pqs)
    return c, len(depths)


def calibrate_weights(traced, specs, params_leaves, qstate=None, select=None) -> dict:
    """``{quantizer name: {"amax": ...}}`` for every enabled weight quantizer whose weight is replayable;
    ``select`` picks each stage's calibrator (default: the spec's, :class:`~jq.calib.calibrators.Selection`)."""
    qstate = qstate or {}
    select = select or calibrators.Selection()
    state = {}
    for name, slot in traced.quantizers.items():
        spec = specs.get(name)
        if spec is None or not slot.is_weight:
            continue
        site = slot.sites[0]
        if not isinstance(site.weight, ParamOrigin):
            continue  # derived weights are calibrated from data
        _, depths = weight_operand(site.weight, params_leaves)
        c, n_layers = canonical_weights(site, params_leaves, qstate)
        stages = spec if isinstance(spec, tuple) else (spec,)
        entry = {}
        for i, s in enumerate(stages):
            if not s.enable or not s.format.needs_amax(s):
                if s.enable and i + 1 < len(stages):
                    c = apply_stage(c, None, s, site.view.batch, n_layers)
                continue
            cal = select(s, True)
            amax = per_layer(lambda v, s=s, cal=cal: cal.weight_amax(v, s, site.view.batch), c, n_layers)
            entry[stage_amax_key(i)] = _to_layer_axes(amax, depths, slot.layer_axes)
            if i + 1 < len(stages):
                c = apply_stage(c, amax, s, site.view.batch, n_layers)
        if entry:
            state[name] = entry
    return state


def apply_stage(c, amax, spec, batch: int, n_layers: int):
    """Fake-quantize canonical weights ``c`` whose first ``n_layers`` axes are layer-scan slices (vmapped);
    ``amax`` carries the same leading axes, or is None for dynamic specs."""
    def one(v, a):
        return fake_quant(v, a, spec=spec, view=CanonicalView(tuple(range(v.ndim)), v.shape, batch))

    if amax is None:
        return per_layer(lambda v: one(v, None), c, n_layers)
    return per_layer(one, c, n_layers, amax)
