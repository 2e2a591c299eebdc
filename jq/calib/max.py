"""Max calibration: ``amax = max|x|`` with the granularity the quantizer's spec asks for.

Weights are calibrated straight from the params, so every layer gets an amax even if calibration data
never reaches it: the chain of equations that turns a params leaf into the site's operand is replayed on
the leaf (vmapped over layer-scan slices), the canonical ``[out, in]`` view is taken, and the amax is
computed per layer. Activations are calibrated from data by the transform's collect mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jq.quantizer import compute_amax
from jq.trace.sites import ParamOrigin, ScanSlice

__all__ = ["replay_weight", "weight_operand", "calibrate_weights", "apply_stage"]


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


def _per_layer(fn, value, n_axes):
    for _ in range(n_axes):
        fn = jax.vmap(fn)
    return fn(value)


def _to_layer_axes(x, depths, layer_axes):
    """Broadcast an array whose leading axes are the layer scans ``depths`` to all ``layer_axes``."""
    for d in range(len(layer_axes)):
        if d not in depths:
            x = jnp.expand_dims(x, d)
    return jnp.broadcast_to(x, tuple(layer_axes) + x.shape[len(layer_axes):])


def calibrate_weights(traced, specs, params_leaves, qstate=None) -> dict:
    """``{quantizer name: {"amax": ...}}`` for every enabled weight quantizer whose weight is replayable.

    Sequential specs get ``amax``, ``amax_1``, ...: stage ``i`` is calibrated on the output of the stages
    before it (ModelOpt's SequentialQuantizer order). A site's ``pre_quant_scale`` (in ``qstate``) divides
    the weight's input channels first, as it does when the model runs.
    """
    qstate = qstate or {}
    state = {}
    for name, slot in traced.quantizers.items():
        spec = specs.get(name)
        if spec is None or not slot.is_weight:
            continue
        site = slot.sites[0]
        if not isinstance(site.weight, ParamOrigin):
            continue  # derived weights are calibrated from data
        w, depths = weight_operand(site.weight, params_leaves)
        view = site.view
        stages = spec if isinstance(spec, tuple) else (spec,)
        entry = {}

        def canon(v):
            return view.to_canonical(v)

        c = _per_layer(canon, w, len(depths))
        pqs = qstate.get(f"{site.name}.input_quantizer", {}).get("pre_quant_scale")
        if pqs is not None:
            if len(depths) != len(slot.layer_axes):
                raise NotImplementedError(f"{name}: pre_quant_scale on a weight shared across layer scans")
            axis = view.batch + 1

            def divide(v, p, axis=axis):
                shape = [1] * v.ndim
                shape[axis] = v.shape[axis]
                return v / jnp.reshape(p, shape)

            fn = divide
            for _ in range(len(depths)):
                fn = jax.vmap(fn)
            c = fn(c, pqs)
        for i, s in enumerate(stages):
            if not s.enable:
                continue
            amax = _per_layer(lambda v, s=s: compute_amax(v, s, view.batch), c, len(depths))
            if amax is None:
                continue
            key = "amax" if i == 0 else f"amax_{i}"
            entry[key] = _to_layer_axes(amax, depths, slot.layer_axes)
            if i + 1 < len(stages):
                c = apply_stage(c, amax, s, view.batch, len(depths))
        if entry:
            state[name] = entry
    return state


def apply_stage(c, amax, spec, batch: int, n_layers: int):
    """Fake-quantize canonical weights ``c`` whose first ``n_layers`` axes are layer-scan slices (vmapped);
    ``amax`` carries the same leading axes, or is None for dynamic specs."""
    from jq.fake_quant import fake_quant
    from jq.quantizer import CanonicalView

    def one(v, a):
        return fake_quant(v, a, spec=spec, view=CanonicalView(tuple(range(v.ndim)), v.shape, batch))

    fn = one
    for _ in range(n_layers):
        fn = jax.vmap(fn)
    return fn(c, amax)
