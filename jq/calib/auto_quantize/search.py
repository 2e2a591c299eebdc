"""``jq.auto_quantize``: a per-layer choice among quantization formats under an effective-bits budget (ModelOpt's
AutoQuantize).

1. Each candidate format (a config such as ``jq.NVFP4_DEFAULT_CFG``, or None for "leave in 16 bits") quantizes and
   calibrates the whole model once with its own algorithm.
2. Every linear/conv site with a weight gets a sensitivity per candidate (:mod:`.scores`: gradient or KL score);
   fused siblings (q/k/v, gate/up: :func:`jq.trace.sibling_groups`) form one group and add their scores; scores are
   made monotone in cost.
3. Cost of a group and candidate: ``sum numel(W) * bits`` with the weight format's ``bits_per_element`` (NVFP4 4.5,
   FP8 8, INT4 in blocks of 128 4.125, MXFP8 8.25, unquantized 16), all layers of a layer scan counted.
4. The exact solver (:func:`.solver.solve`) picks one candidate per group minimising the total score with
   ``sum cost <= effective_bits * sum numel``.
5. The result is a normal :class:`~jq.QuantizedModel`: the config is "everything off" followed by one entry per
   quantizer of every searched site (its candidate's spec), the state and (for weight-changing algorithms such as
   SVDQuant) the params come from the chosen candidates, so nothing is calibrated twice.

Attention ``bmm`` quantizers (KV cache) and sites whose weight is shared by several sites are not searched and
stay off. The scores can be saved to ``state_path`` and are reused by a later call with the same candidates,
sites, score method and batch count.

Example:
  >>> def loss_fn(logits, batch):
  ...     return cross_entropy(logits, batch[1])
  >>> qm, report = jq.auto_quantize(params, model.apply, formats=[jq.NVFP4_DEFAULT_CFG, jq.FP8_DEFAULT_CFG],
  ...                               effective_bits=6.0, data=[(x, y), ...], loss_fn=loss_fn,
  ...                               inputs_fn=lambda b: (b[0],))
  >>> print(report); report.plot("auto_quantize.png")
"""

from __future__ import annotations

import glob
import hashlib
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import jax
import numpy as np

from jq.calib.auto_quantize import scores as S
from jq.calib.auto_quantize.report import AutoQuantizeReport, GroupChoice, load_scores, save_scores
from jq.calib.auto_quantize.solver import cost_range, solve
from jq.calib.collect import as_args
from jq.calib.weights import replay_weight
from jq.config import Algorithm, QuantConfig, as_config
from jq.model import QuantizedModel
from jq.progress import progress as progress_bar
from jq.trace.sites import ParamOrigin
from jq.trace.symbols import sibling_partition

__all__ = ["auto_quantize", "FLOAT_BITS"]

FLOAT_BITS = 16.0  # an unquantized weight counts as BF16
_FLOAT = QuantConfig((("*", False),), Algorithm(None))


def _stages(spec) -> tuple:
    return tuple(s for s in (spec if isinstance(spec, tuple) else (spec,)) if s.enable)


def _bits(cfg, site) -> float:
    """Effective bits of the site's weight under ``cfg`` (the narrowest enabled stage; 16 when off)."""
    if cfg is None:
        return FLOAT_BITS
    stages = _stages(cfg.resolve(f"{site.name}.weight_quantizer"))
    return min(s.bits_per_element for s in stages) if stages else FLOAT_BITS


def _candidates(formats) -> tuple[list, list]:
    """``(names or None, configs or None)`` of the candidates (a sequence, or a dict name -> config)."""
    items = list(formats.items()) if isinstance(formats, Mapping) else [(None, f) for f in formats]
    if not items:
        raise ValueError("auto_quantize needs at least one candidate format")
    return [n for n, _ in items], [None if f is None else as_config(f) for _, f in items]


def _name(cfg, sites) -> str:
    if cfg is None:
        return "float"
    for site in sites:
        w = _stages(cfg.resolve(f"{site.name}.weight_quantizer"))
        if w:
            a = _stages(cfg.resolve(f"{site.name}.input_quantizer"))
            name = "+".join(s.describe() for s in w) + (" W/A" if a else " W")
            method = cfg.algorithm.method
            return name + ("" if method in ("max", None) else f" {method}")
    return "off"


def _searched(traced, cfgs) -> list:
    """Sites with a weight quantizer some candidate enables (weights shared by several sites excluded)."""
    out, shared = [], []
    for s in traced.sites:
        if s.kind == "bmm" or s.weight_operand is None:
            continue
        wq = f"{s.name}.weight_quantizer"
        if not any(cfg is not None and _stages(cfg.resolve(wq, traced.roles(wq))) for cfg in cfgs):
            continue  # no candidate quantizes it (the presets' "@output_head" included)
        if len(traced.quantizers[f"{s.name}.weight_quantizer"].sites) > 1:
            shared.append(s.name)
            continue
        out.append(s)
    if shared:
        warnings.warn(f"jq auto_quantize: weights used by several sites are not searched (left off): {shared}",
                      stacklevel=3)
    return out


def _numel(site) -> int:
    return int(np.prod(site.view.shape, dtype=np.int64) * np.prod(site.layer_axes, dtype=np.int64))


def _signature(names, cfgs, sites, method, n_batches) -> dict:
    def digest(cfg):
        return None if cfg is None else hashlib.sha256(repr(cfg).encode()).hexdigest()[:16]  # frozen: stable repr

    return {"score": method, "formats": [[n, digest(c)] for n, c in zip(names, cfgs)],
            "sites": [s.name for s in sites], "num_batches": n_batches}


def _scoring_state(sites, candidates, leaves0) -> dict:
    """``{site weight quantizer: {CANDS: (state per candidate)}}``: each candidate's states of the site's
    quantizers, and its weight operand where the candidate changed the params."""
    state = {}
    for site in sites:
        per = []
        for qm in candidates:
            if qm is None:
                per.append({})
                continue
            st = {n: qm.qstate[n] for n in site.quantizer_names if n in qm.qstate}
            if isinstance(site.weight, ParamOrigin):
                leaf = jax.tree_util.tree_leaves(qm.params)[site.weight.leaf]
                base = leaves0[site.weight.leaf]
                if leaf is not base and not np.array_equal(np.asarray(leaf), np.asarray(base)):
                    st[S.WEIGHT] = replay_weight(leaf, site.weight.chain)
            per.append(st)
        state[f"{site.name}.weight_quantizer"] = {S.CANDS: tuple(per)}
    return state


def _final_model(params, apply_fn, sites_by_name, groups, picks, cfgs, candidates) -> QuantizedModel:
    entries: list = [("*", False)]
    qstate: dict = {}
    leaves = list(jax.tree_util.tree_leaves(params))
    treedef = jax.tree_util.tree_structure(params)
    for group, k in zip(groups, picks):
        cfg, qm = cfgs[k], candidates[k]
        for name in group:
            site = sites_by_name[name]
            for q in site.quantizer_names:
                entries.append((glob.escape(q), False if cfg is None else cfg.resolve(q)))
                if qm is not None and q in qm.qstate:
                    qstate[q] = qm.qstate[q]
            if qm is not None and isinstance(site.weight, ParamOrigin):
                leaves[site.weight.leaf] = jax.tree_util.tree_leaves(qm.params)[site.weight.leaf]
    methods = {c.algorithm for c in cfgs if c is not None}
    config = QuantConfig(tuple(entries), methods.pop() if len(methods) == 1 else Algorithm("max"))
    return QuantizedModel.create(jax.tree_util.tree_unflatten(treedef, leaves), apply_fn, config, qstate)


def auto_quantize(params, apply_fn: Callable, formats: Sequence | Mapping, effective_bits: float, data: Iterable,
                  loss_fn: Callable | None = None, *, score: str = "gradient", inputs_fn: Callable | None = None,
                  logits_fn: Callable | None = None, calib_data: Iterable | None = None,
                  num_score_steps: int | None = None, state_path=None,
                  progress: bool = True) -> tuple[QuantizedModel, AutoQuantizeReport]:
    """Choose a format per layer group under an effective-bits budget (module docstring: the method).

    Args:
      params, apply_fn: the model, as for :func:`jq.quantize`.
      formats: candidate configs (presets, ModelOpt dicts, QuantConfigs; None = leave unquantized, 16 bits), a
        list or a dict ``{name: config}`` (names in the report).
      effective_bits: the budget, ``sum(numel * bits) / sum(numel)`` over the searched weights; it must lie between
        the cheapest and the most expensive choice.
      data: scoring batches (a list; each is what ``inputs_fn`` and ``loss_fn`` read).
      loss_fn: ``loss_fn(outputs, batch) -> scalar`` (``score="gradient"``).
      score: ``"gradient"`` (ModelOpt's default) or ``"kl"`` (no labels: KL of the output distribution).
      inputs_fn: ``batch -> model arguments`` (a tuple, ``{"args", "kwargs"}`` or an array; default: the batch).
      logits_fn: ``outputs -> logits`` for the KL score (default: the outputs).
      calib_data: calibration batches of the candidates (default: ``inputs_fn`` of ``data``).
      num_score_steps: score on the first this many batches (default: all).
      state_path: a JSON file: scores are read from it when it matches this search, and written to it.
      progress: progress bars.

    Returns:
      ``(qm, report)``: the quantized model and the :class:`AutoQuantizeReport`.

    Raises:
      ValueError: an unknown score method, a gradient score without ``loss_fn``, no searchable site, or an
        ``effective_bits`` outside the range the candidates reach (naming the range).
    """
    if score not in ("gradient", "kl"):
        raise ValueError(f"score must be 'gradient' or 'kl', got {score!r}")
    if score == "gradient" and loss_fn is None:
        raise ValueError("the gradient score needs loss_fn(outputs, batch); pass score='kl' for a model without labels")
    inputs_fn = inputs_fn or (lambda b: b)
    logits_fn = logits_fn or (lambda out: out)
    data = list(data)
    batches = data[:num_score_steps] if num_score_steps else data
    if not batches:
        raise ValueError("auto_quantize needs at least one scoring batch in data")
    calib = list(calib_data) if calib_data is not None else [inputs_fn(b) for b in data]
    names, cfgs = _candidates(formats)

    float_qm = QuantizedModel.create(params, apply_fn, _FLOAT)
    args, kwargs = as_args(calib[0])
    float_qm.cache.get(params, args, kwargs)
    traced = float_qm.traced
    sites = _searched(traced, cfgs)
    if not sites:
        raise ValueError("no site has a weight quantizer enabled by the candidate formats: nothing to search")
    names = [n if n is not None else _name(c, sites) for n, c in zip(names, cfgs)]
    by_name = {s.name: s for s in sites}
    groups = sibling_partition(traced, [s.name for s in sites])
    numel = np.array([sum(_numel(by_name[n]) for n in g) for g in groups], np.float64)
    bits = [np.array([sum(_numel(by_name[n]) * _bits(c, by_name[n]) for n in g) / numel[i] for c in cfgs])
            for i, g in enumerate(groups)]
    costs = [numel[i] * bits[i] for i in range(len(groups))]
    lo, hi = (c / numel.sum() for c in cost_range(costs))
    tol = 1e-9 * max(hi, 1.0)
    if not lo - tol <= effective_bits <= hi + tol:
        raise ValueError(f"effective_bits={effective_bits} is outside what the candidate formats reach on these "
                         f"{len(sites)} sites: [{lo:.4f}, {hi:.4f}] (cheapest: {lo:.4f} bits, most expensive: "
                         f"{hi:.4f} bits; candidates {names})")

    candidates = [None if c is None else _quantize(params, apply_fn, c, calib, progress) for c in cfgs]
    cand_specs = tuple(None if qm is None else tuple((q, qm.spec(q)) for s in sites for q in s.quantizer_names)
                       for qm in candidates)
    state = _scoring_state(sites, candidates, jax.tree_util.tree_leaves(params))
    signature = _signature(names, cfgs, sites, score, len(batches))
    saved = load_scores(state_path, signature) if state_path is not None else None

    def bar(it):
        return progress_bar(it, desc=f"jq auto_quantize ({score} score)", enabled=progress)

    if saved is None:
        if score == "gradient":
            per_site = S.gradient_scores(float_qm, batches, frozenset(by_name), cand_specs, state, loss_fn,
                                         inputs_fn, bar)
            saved = {f"site:{n}": v for n, v in per_site.items()}
        else:
            per_group = S.kl_scores(float_qm, batches, groups, cand_specs, state, logits_fn, inputs_fn, bar)
            saved = {f"group:{'|'.join(g)}": v for g, v in zip(groups, per_group)}
        if state_path is not None:
            save_scores(state_path, signature, saved)
    if score == "gradient":
        raw = [sum(saved[f"site:{n}"] for n in g) for g in groups]
    else:
        raw = [saved[f"group:{'|'.join(g)}"] for g in groups]
    mono = [S.monotone(c, r) for c, r in zip(costs, raw)]
    picks = solve(costs, mono, effective_bits * numel.sum())
    qm = _final_model(params, apply_fn, by_name, groups, picks, cfgs, candidates)
    qm.cache.get(qm.params, args, kwargs)
    achieved = float(sum(c[k] for c, k in zip(costs, picks)) / numel.sum())
    report = AutoQuantizeReport(
        tuple(names),
        tuple(GroupChoice(tuple(g), int(numel[i]), tuple(float(b) for b in bits[i]), tuple(float(v) for v in mono[i]),
                          tuple(float(v) for v in raw[i]), int(k)) for i, (g, k) in enumerate(zip(groups, picks))),
        achieved, float(effective_bits), score, len(batches))
    return qm, report


def _quantize(params, apply_fn, cfg, calib, progress):
    from jq.quantize import quantize  # jq.quantize imports the algorithm registry

    return quantize(params, apply_fn, cfg, calib_data=calib, progress=progress)
