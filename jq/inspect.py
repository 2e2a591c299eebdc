"""Inspecting and editing a quantized model: the summary table, enabling/disabling quantizers, folding weights.

Example:
  >>> jq.print_quant_summary(qm)
  >>> qm = jq.disable_quantizer(qm, "*lm_head*")
  >>> qm = jq.fold_weights(qm)
"""

from __future__ import annotations

import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jq.calib.max import needs_calibration
from jq.calib.weights import apply_stage, per_layer, replay_weight
from jq.config_check import enabled_by_default
from jq.handlers.apply import stage_amax_key
from jq.model import QuantizedModel
from jq.trace.sites import ChainStep, ParamOrigin, ScanSlice

__all__ = ["quant_summary", "print_quant_summary", "enable_quantizer", "disable_quantizer", "fold_weights"]


def _fmt_amax(a) -> str:
    if a is None:
        return "-"
    a = np.asarray(a)
    if a.size == 1:
        return f"{float(a.reshape(())):.4g}"
    return f"[{a.min():.3g}, {a.max():.3g}] {tuple(a.shape)}"


def _padding(spec, slot) -> str:
    """`` padded (axis 1: 40 -> 48)`` when the quantized tensor's length along a blocked axis is not a multiple of
    the block size (the last block is zero-padded), else ``""``."""
    if not slot.shape:
        return ""
    parts = [f"axis {a}: {n} -> {-(-n // b) * b}" for a, n, b in spec.format.padding(spec, slot.shape, slot.batch)]
    return f" padded ({', '.join(parts)})" if parts else ""


def quant_summary(qm: QuantizedModel) -> str:
    """The per-quantizer table :func:`print_quant_summary` prints."""
    traced = qm.traced
    rows = []
    for name, slot in traced.quantizers.items():
        spec = qm.spec(name)
        if spec is None:
            fmt, status, amax = "-", "off", "-"
        else:
            stages = spec if isinstance(spec, tuple) else (spec,)
            fmt = " -> ".join(s.describe() + _padding(s, slot) for s in stages if s.enable)
            st = qm.qstate.get(name, {})
            amax = _fmt_amax(st.get("amax"))
            status = "on" if (not needs_calibration(spec) or "amax" in st) else "uncalibrated"
        rows.append((name, fmt, amax, status))
    w = [max(len(r[i]) for r in rows + [("quantizer", "format", "amax", "status")]) for i in range(4)]
    line = "  ".join(f"{{:<{x}}}" for x in w)
    out = [line.format("quantizer", "format", "amax", "status"), line.format(*("-" * x for x in w))]
    out += [line.format(*r) for r in rows]
    n_on = sum(r[3] == "on" for r in rows)
    out.append(f"{len(rows)} quantizers, {n_on} enabled, {len(traced.sites)} sites"
               + (f", {len(traced.skipped)} matmuls/convs skipped" if traced.skipped else ""))
    if traced.output_heads and any(p == "@output_head" for p, _ in qm.config.entries):
        out.append(f"output head (the '@output_head' entry applies to it): {', '.join(traced.output_heads)}")
    by_default = enabled_by_default(qm.config, traced.quantizers, traced.roles)
    if by_default:
        out.append(f"{len(by_default)} quantizers enabled by the default entry (no other config pattern matched them)")
    unused = qm.config.unused_patterns(traced.quantizers)
    if unused:
        out.append(f"config patterns that matched no quantizer: {unused}")
    return "\n".join(out)


def print_quant_summary(qm: QuantizedModel, file=None) -> None:
    """Print one line per quantizer: name, format, amax, status (on / off / uncalibrated)."""
    print(quant_summary(qm), file=file or sys.stdout)


def _toggle(qm: QuantizedModel, pattern: str, enable: bool) -> QuantizedModel:
    names = qm.quantizer_names
    if not qm.config.matches(pattern, names):
        raise ValueError(f"pattern {pattern!r} matches no quantizer; some names: {names[:6]}")
    return qm.replace(config=qm.config.with_entries((pattern, {"enable": enable})))


def enable_quantizer(qm: QuantizedModel, pattern: str) -> QuantizedModel:
    """Enable the quantizers matching the glob ``pattern`` (their spec from the config is kept)."""
    return _toggle(qm, pattern, True)


def disable_quantizer(qm: QuantizedModel, pattern: str) -> QuantizedModel:
    """Disable the quantizers matching the glob ``pattern``."""
    return _toggle(qm, pattern, False)


_FOLDABLE = frozenset({"transpose", "reshape", "squeeze", "expand_dims", "convert_element_type", "copy", "copy_p"})


def _foldable(origin) -> bool:
    if not isinstance(origin, ParamOrigin):
        return False
    return all(isinstance(s, ScanSlice) or (isinstance(s, ChainStep) and s.eqn.primitive.name in _FOLDABLE)
               for s in origin.chain)


def _scale_in(c, p, batch: int, divide: bool):
    """Canonical weights ``c`` divided (or multiplied) by ``p`` along their input channels."""
    shape = [1] * c.ndim
    shape[batch + 1] = c.shape[batch + 1]
    p = jax.numpy.reshape(p, shape)
    return c / p if divide else c * p


def fold_weights(qm: QuantizedModel) -> QuantizedModel:
    """Replace weights by their fake-quantized values and disable their weight quantizers (ModelOpt's
    ``fold_weight``): inference then skips weight quantization. A weight is folded when it reaches its
    sites through layout-only ops (a permutation of the params leaf) and is used nowhere else; others are
    left as they are (with a warning). Exact when the leaf dtype equals the operand dtype (to the last float
    bit with a ``pre_quant_scale``, where the folded weight is ``fq(W / s) * s``). SVDQuant's low-rank factors stay in the
    state: the params hold the quantized residual and ``op(x, L R)`` still adds the branch on the unquantized
    input, so folding does not change the output.
    """
    traced = qm.traced
    leaves, treedef = jax.tree_util.tree_flatten(qm.params)
    leaves = list(leaves)
    folded, skipped = [], []
    by_leaf: dict = {}
    for name, slot in traced.quantizers.items():
        if slot.is_weight and qm.spec(name) is not None and isinstance(slot.sites[0].weight, ParamOrigin):
            by_leaf.setdefault(slot.sites[0].weight.leaf, []).append(name)
    for leaf, names in by_leaf.items():
        name = names[0]
        slot = traced.quantizers[name]
        origin, view = slot.sites[0].weight, slot.sites[0].view
        if len(names) > 1 or leaf in traced.other_uses or not _foldable(origin):
            skipped.append(name)
            continue
        n_layers = sum(isinstance(s, ScanSlice) for s in origin.chain)
        spec = qm.spec(name)
        stages = spec if isinstance(spec, tuple) else (spec,)
        state = qm.qstate.get(name, {})

        def forward(w, origin=origin, view=view, n_layers=n_layers):
            return per_layer(view.to_canonical, replay_weight(w, origin.chain), n_layers)

        c = forward(leaves[leaf])
        pqs = qm.qstate.get(f"{slot.sites[0].name}.input_quantizer", {}).get("pre_quant_scale")
        if pqs is not None:  # the model quantizes W / pre_quant_scale (AWQ, SmoothQuant): fold fq(W / s) * s
            c = per_layer(lambda v, p, b=view.batch: _scale_in(v, p, b, divide=True), c, n_layers, pqs)
        for i, s in enumerate(stages):
            if not s.enable:
                continue
            c = apply_stage(c, state.get(stage_amax_key(i)), s, view.batch, n_layers)
        if pqs is not None:
            c = per_layer(lambda v, p, b=view.batch: _scale_in(v, p, b, divide=False), c, n_layers, pqs)
        (new_leaf,) = jax.linear_transpose(forward, leaves[leaf])(c.astype(forward(leaves[leaf]).dtype))
        leaves[leaf] = new_leaf.astype(leaves[leaf].dtype)
        folded.extend(names)
    if skipped:
        warnings.warn(f"jq.fold_weights: not folded (weight shared, used elsewhere or not a pure layout chain): "
                      f"{skipped}", stacklevel=2)
    cfg = qm.config
    for name in folded:
        cfg = cfg.with_entries((name, {"enable": False}))
    return qm.replace(params=jax.tree_util.tree_unflatten(treedef, leaves), config=cfg)
