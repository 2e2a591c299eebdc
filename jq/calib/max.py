"""Max calibration: every quantizer's calibrator on the params (weights) and on the data (activations).

Weights are calibrated from the params (:mod:`jq.calib.weights`); activations by one collection pass
(:class:`~jq.calib.collect.Collect`). Sibling layers that read the same input (q/k/v, gate/up; see
:func:`jq.trace.sibling_groups`) share one input amax (the group's max), and with
``share_sibling_weight_amax`` their per-tensor weight amaxes too, as fused serving kernels need. Every other
algorithm ends with :func:`max_calibrate` on the state it prepared.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp

from jq.calib import calibrators
from jq.calib.base import Algorithm, CalibData
from jq.calib.collect import Collect, weights_from_data
from jq.calib.weights import calibrate_weights
from jq.trace.symbols import sibling_groups

__all__ = ["MaxCalibration", "NoCalibration", "max_calibrate", "share_siblings", "needs_calibration"]


def needs_calibration(spec) -> bool:
    """True when an enabled stage of ``spec`` needs a calibrated amax."""
    stages = spec if isinstance(spec, tuple) else (spec,)
    return any(s.enable and s.format.needs_amax(s) for s in stages)


def share_siblings(traced, qstate: dict, weights: bool) -> None:
    """Give siblings the group's max input amax (and per-tensor weight amax when ``weights``), in place."""
    slots = ["input_quantizer"] + (["weight_quantizer"] if weights else [])
    for group in sibling_groups(traced):
        for slot in slots:
            names = [f"{g}.{slot}" for g in group if "amax" in qstate.get(f"{g}.{slot}", {})]
            amaxes = [qstate[n]["amax"] for n in names]
            if len(names) < 2 or any(a.shape != amaxes[0].shape for a in amaxes):
                continue
            if slot == "weight_quantizer" and any(a.size != 1 for a in amaxes):
                continue  # only per-tensor weight amaxes are shared
            shared = amaxes[0]
            for a in amaxes[1:]:
                shared = jnp.maximum(shared, a)
            for n in names:
                qstate[n] = {**qstate[n], "amax": shared}


def max_calibrate(qm, data: CalibData, qstate: dict | None = None, select=None) -> dict:
    """Weights from the params and activations from one pass over ``data`` (two for two-pass calibrators);
    returns the new quantizer state. ``select`` picks each quantizer's calibrator (default: its spec's)."""
    qstate = {k: dict(v) for k, v in (qm.qstate if qstate is None else qstate).items()}
    select = select or calibrators.Selection()
    if not data.empty:  # the pass traces the model on its first batch; it must know the traced weights first
        data.trace(qm)
    data_weights = weights_from_data(qm.traced) if qm.is_traced else frozenset()
    if data.batches is not None and not hasattr(data.batches, "__len__") and qm.is_traced:
        twice = [n for n, s in qm.specs().items() if s is not None and select(
            next(st for st in (s if isinstance(s, tuple) else (s,)) if st.enable), qm.traced.quantizers[n].is_weight
        ).passes > 1 and (n in data_weights or not qm.traced.quantizers[n].is_weight)]
        if twice:
            raise ValueError(f"the calibrators of {twice[:3]} read the data twice: pass a list of batches or a "
                             f"forward_loop, not a one-shot iterator")
    stats = {} if data.empty else data.collect(qm, Collect(data_weights, select), qstate=qstate)
    if not qm.is_traced:
        raise ValueError("no calibration batch was seen and nothing was traced: give calib_data or example_args")
    traced = qm.traced
    specs = qm.specs(traced)
    leaves = jax.tree_util.tree_leaves(qm.params)
    for name, entry in calibrate_weights(traced, specs, leaves, qstate, select).items():
        qstate.setdefault(name, {}).update(entry)
    step, again = 0, set()
    while stats:
        for (name, kind), stat in stats.items():
            spec = specs.get(name)
            if spec is None or kind == "finite":
                continue
            first = next(s for s in (spec if isinstance(spec, tuple) else (spec,)) if s.enable)
            cal = select(first, traced.quantizers[name].is_weight)
            entry = qstate.setdefault(name, {})
            entry["amax"] = cal.amax(stat, first, step=step, state=entry)
            if cal.passes > step + 1:
                again.add(name)
        step, stats = step + 1, {}
        if again:  # the next pass of multi-pass calibrators, with this pass's amax in the state
            only, again = frozenset(again), set()
            stats = data.collect(qm, Collect(data_weights, select, step, only), qstate=qstate,
                                 desc=f"calibrate pass {step + 1}")
    share_siblings(traced, qstate, data.share_sibling_weight_amax)
    missing = [n for n, s in traced.quantizers.items() if specs.get(n) is not None and not s.is_weight
               and needs_calibration(specs[n]) and "amax" not in qstate.get(n, {})]
    if missing:
        warnings.warn(f"jq: {len(missing)} activation quantizer(s) got no calibration data and stay "
                      f"uncalibrated: {missing[:5]}{' ...' if len(missing) > 5 else ''}", stacklevel=3)
    return qstate


@dataclasses.dataclass(frozen=True)
class MaxCalibration(Algorithm):
    """ModelOpt's ``max``: ``amax = max|x|`` per quantizer, with its granularity."""

    name = "max"

    def calibrate(self, qm, data):
        return qm.replace(qstate=max_calibrate(qm, data))


@dataclasses.dataclass(frozen=True)
class NoCalibration(Algorithm):
    """``algorithm=None``: nothing is calibrated (for formats with dynamic scales only, e.g. MX)."""

    name = None

    def calibrate(self, qm, data):
        data.trace(qm)
        return qm
