"""AWQ-clip: per-block clip ratio search on the layer output (ModelOpt's ``awq_clip``).

For every weight block ``b`` (row ``i``, ``block_size`` input channels ``j``) and ratio ``r`` in
``{min_clip_ratio, min_clip_ratio + shrink_step, ..., 1}``, with ``W_r`` the weight fake-quantized with the
block amaxes ``amax_b * r``::

    loss_b(r) = sum over batches of  mean over tokens t of  (sum_{j in b} x_tj (W_r[i, j] - W[i, j]))^2

(the block's share of the output error; blocks are independent, so every block picks its own ratio), and
the block keeps ``amax_b * argmin_r loss_b(r)`` as a static per-block amax. As in ModelOpt, ``x`` is the
site's input after its input quantizer (as the model runs), and each batch contributes every
``max(1, tokens // max_tokens_per_batch)``-th token; output rows are searched ``max_co_batch_size`` at a
time. Weights whose blocks are dynamic (NVFP4's presets) are switched to their static per-block variant
(:mod:`jq.calib.static_amax`), whose amaxes the search writes; the block holding a weight's largest amax
keeps it (:func:`~jq.calib.static_amax.pin_mask`), so NVFP4's global scale is the one searched against.
ModelOpt instead clips only the global amax of dynamic-block NVFP4 weights.

Passes over the data: one max calibration, one search. Applies to linear sites on a params weight whose
(first-stage) weight quantizer has 1-D blocks along the input channels (INT, NVFP4); sites whose format has
no static per-block variant (MX) are left at max calibration, with a warning.

Example:
  >>> qm = jq.quantize(params, apply_fn, jq.NVFP4_AWQ_CLIP_CFG, calib_data=batches)
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jq.calib import calibrators
from jq.calib.base import Algorithm
from jq.calib.collect import pytree_handler
from jq.calib.max import max_calibrate
from jq.calib.static_amax import first_stage, pin_mask, static_block_variant, tokens_by_channel, with_static_blocks
from jq.calib.stats import Sum
from jq.calib.weights import apply_stage, canonical_weights, per_layer
from jq.fake_quant import fake_quant
from jq.handlers.apply import FakeQuant, stage_amax_key
from jq.handlers.base import Handler
from jq.trace.sites import ParamOrigin

__all__ = ["AWQClip", "clip_ratios", "clip_targets", "clip_losses", "clip_search"]

LOSSES = "awq_clip_losses"


def clip_ratios(min_clip_ratio: float = 0.5, shrink_step: float = 0.05) -> tuple[float, ...]:
    """``min_clip_ratio, min_clip_ratio + shrink_step, ... (< 1), 1.0`` rounded to 2 decimals (ModelOpt's grid).

    Example:
      >>> clip_ratios(0.8, 0.1)
      (0.8, 0.9, 1.0)
    """
    n = int(np.ceil((1.0 - min_clip_ratio) / shrink_step - 1e-9))
    grid = [round(min_clip_ratio + k * shrink_step, 2) for k in range(n)]
    return tuple(r for r in grid if r < 1.0) + (1.0,)


def _one_d_blocks(spec, shape) -> bool:
    layout = spec.format.blocks(spec, shape)
    return layout is not None and [a for a, _ in layout.sizes] == [len(shape) - 1]


def clip_targets(qm, traced) -> tuple[list, list[tuple[str, str]]]:
    """Sites the clip search applies to, and ``(site, reason)`` for block-quantized sites it must skip."""
    targets, skipped = [], []
    for s in traced.sites:
        wq = s.weight_quantizer
        spec = qm.spec(wq) if wq else None
        if spec is None or s.kind == "bmm" or first_stage(spec).block_sizes is None:
            continue
        spec = first_stage(spec)
        if s.kind != "linear" or s.view.batch or len(s.view.shape) != 2:
            skipped.append((s.name, f"{s.kind} site with canonical weight {s.view.shape}"))
        elif not isinstance(s.weight, ParamOrigin):
            skipped.append((s.name, "weight computed from several params"))
        elif static_block_variant(spec) is None:
            skipped.append((s.name, f"{spec.describe()} has no calibrated per-block amax"))
        elif not _one_d_blocks(static_block_variant(spec), s.view.shape):
            skipped.append((s.name, f"{spec.describe()}: blocks are not 1-D along the input channels"))
        else:
            targets.append(s)
    return targets, skipped


def clip_losses(x, w, amax, spec, ratios, max_rows: int = 1024) -> jax.Array:
    """``loss[r, *block]`` of :mod:`jq.calib.awq_clip`'s search for one site and batch.

    Args:
      x: the (quantized, subsampled) input ``[tokens, in]``.
      w: the canonical weight ``[out, in]`` (float32).
      amax: its static per-block amaxes (the format's block-statistics shape).
      spec: the static per-block spec.
      ratios: the clip ratios.
      max_rows: output rows evaluated at once (memory ``tokens * max_rows * blocks`` per ratio).
    """
    layout = spec.format.blocks(spec, w.shape)
    xb = spec.format.blocks(spec, x.shape).split(x.astype(jnp.float32))  # [t, nb, bs]
    pin = pin_mask(amax)

    def one(r):
        a = jnp.where(pin, amax, amax * r)
        d = layout.split(fake_quant(w, a, spec=spec).astype(jnp.float32) - w)  # [out, nb, bs]
        parts = []
        for r0 in range(0, w.shape[0], max_rows):
            y = jnp.einsum("tnb,onb->ton", xb, d[r0:r0 + max_rows], precision=jax.lax.Precision.HIGHEST)
            parts.append(jnp.mean(y * y, axis=0))
        return jnp.concatenate(parts, axis=0).reshape(amax.shape)

    return jax.lax.map(one, jnp.asarray(ratios, jnp.float32))


@pytree_handler
@dataclasses.dataclass(frozen=True)
class ClipSearch(Handler):
    """The search pass: per target site, the block losses of every ratio (summed over batches); the model
    runs unquantized, as in ModelOpt's calibration forward."""

    sites: frozenset = frozenset()
    ratios: tuple = ()
    max_tokens: int = 64
    max_rows: int = 1024
    collects = True

    def site(self, call):
        name = call.site.name
        if name in self.sites:
            site = call.site
            act, wo = 1 - site.weight_operand, site.weight_operand
            vals = call.pre_scaled()
            iq = call.quantizer("input_quantizer", act)
            x = vals[act] if iq is None else FakeQuant().quantizer(iq, vals[act])
            x = tokens_by_channel(site, x)
            x = x[:: max(1, x.shape[0] // self.max_tokens)]
            w = site.view.to_canonical(vals[wo]).astype(jnp.float32)
            spec = first_stage(call.spec("weight_quantizer"))
            amax = call.qstate[f"{name}.weight_quantizer"]["amax"]
            call.scope.record((name, LOSSES), Sum.of(clip_losses(x, w, amax, spec, self.ratios, self.max_rows)))
        return call.default()


def _later_stages(site, spec, entry: dict, leaves, qstate) -> dict:
    """Re-calibrate stages 1.. of a sequential weight quantizer on the output of the stages before them."""
    c, n_layers = canonical_weights(site, leaves, qstate)
    batch = site.view.batch
    for i in range(1, len(spec)):
        prev, s = spec[i - 1], spec[i]
        if prev.enable:
            c = apply_stage(c, entry.get(stage_amax_key(i - 1)), prev, batch, n_layers)
        if s.enable and s.format.needs_amax(s):
            cal = calibrators.get(s.calibrator)
            entry[stage_amax_key(i)] = per_layer(lambda v, s=s, cal=cal: cal.weight_amax(v, s, batch), c, n_layers)
    return entry


def clip_search(qm, data, targets, *, ratios, max_tokens: int, max_rows: int):
    """The search pass on a max-calibrated ``qm`` whose targets have static per-block amaxes; returns ``qm``
    with the clipped amaxes (later stages of sequential quantizers re-calibrated on them)."""
    names = frozenset(s.name for s in targets)
    stats = data.collect(qm, ClipSearch(names, tuple(ratios), max_tokens, max_rows), desc="awq_clip search")
    qstate = {k: dict(v) for k, v in qm.qstate.items()}
    leaves = jax.tree_util.tree_leaves(qm.params)
    r = jnp.asarray(ratios, jnp.float32)
    for site in targets:
        wq = site.weight_quantizer
        if (site.name, LOSSES) not in stats:
            continue  # no data reached the site: it keeps its max calibration
        loss = stats[(site.name, LOSSES)].value  # (*layers, n_ratio, *blocks)
        n_layers = len(site.layer_axes)
        best = r[jnp.argmin(loss, axis=n_layers)]  # the first (smallest) ratio among equal losses, as ModelOpt
        amax = qstate[wq]["amax"]
        qstate[wq]["amax"] = jnp.where(pin_mask(amax, n_layers), amax, amax * best).astype(jnp.float32)
        spec = qm.spec(wq)
        if isinstance(spec, tuple) and len(spec) > 1:
            qstate[wq] = _later_stages(site, spec, qstate[wq], leaves, qstate)
    return qm.replace(qstate=qstate)


def prepare_clip(qm, data) -> tuple[object, list]:
    """Trace, find the targets (warning about skipped sites) and switch them to static per-block amaxes."""
    data.trace(qm)
    targets, skipped = clip_targets(qm, qm.traced)
    if skipped:
        warnings.warn(f"jq awq_clip: {len(skipped)} block-quantized site(s) keep max calibration: "
                      f"{skipped[:4]}{' ...' if len(skipped) > 4 else ''}", stacklevel=3)
    return with_static_blocks(qm, [s.weight_quantizer for s in targets]), targets


@dataclasses.dataclass(frozen=True)
class AWQClip(Algorithm):
    """ModelOpt's ``awq_clip`` (options and defaults as ModelOpt's ``AWQClipCalibConfig``)."""

    max_co_batch_size: int = 1024
    max_tokens_per_batch: int = 64
    min_clip_ratio: float = 0.5
    shrink_step: float = 0.05
    name = "awq_clip"
    passes = 2
    needs_data = True

    def __post_init__(self):
        check_clip_options(self)

    def calibrate(self, qm, data):
        qm, targets = prepare_clip(qm, data)
        qm = qm.replace(qstate=max_calibrate(qm, data))
        return clip_search(qm, data, targets, ratios=clip_ratios(self.min_clip_ratio, self.shrink_step),
                           max_tokens=self.max_tokens_per_batch, max_rows=self.max_co_batch_size)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_clip_options(opts) -> None:
    """``ValueError`` naming the option for a wrong type or range (ModelOpt's bounds)."""
    name = opts.name
    for k in ("max_co_batch_size", "max_tokens_per_batch"):
        v = getattr(opts, k)
        if not _is_int(v) or v < 1:
            raise ValueError(f"algorithm {name!r}: {k} must be a positive int, got {v!r}")
    if not _is_number(opts.min_clip_ratio) or not 0 < opts.min_clip_ratio < 1:
        raise ValueError(f"algorithm {name!r}: min_clip_ratio must be a number in (0, 1), got {opts.min_clip_ratio!r}")
    if not _is_number(opts.shrink_step) or not 0 < opts.shrink_step <= 1:
        raise ValueError(f"algorithm {name!r}: shrink_step must be a number in (0, 1], got {opts.shrink_step!r}")
