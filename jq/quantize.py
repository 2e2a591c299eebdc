"""The user-facing API: ``quantize``, ``calibrate``, :class:`QuantizedModel` and its tools.

Example:
  >>> import flax.linen as nn, jq
  >>> model = nn.Dense(8); x = jnp.ones((4, 16)); params = model.init(jax.random.key(0), x)
  >>> qm = jq.quantize(params, model.apply, jq.INT8_DEFAULT_CFG, calib_data=[(x,)])
  >>> y = jax.jit(qm.apply)(qm.params, x)            # same signature as model.apply
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jq.calib.max import apply_stage, calibrate_weights, replay_weight
from jq.config import Algorithm, QuantConfig, as_config
from jq.quantizer import needs_amax
from jq.trace.sites import ChainStep, ParamOrigin, ScanSlice
from jq.trace.symbols import sibling_partition
from jq.trace.tracer import TracedModel, signature_of, split_dynamic, trace
from jq.transform import Evaluator, merge_stats

__all__ = [
    "QuantizedModel",
    "quantize",
    "calibrate",
    "print_quant_summary",
    "quant_summary",
    "enable_quantizer",
    "disable_quantizer",
    "fold_weights",
    "IMPLEMENTED_ALGORITHMS",
]

IMPLEMENTED_ALGORITHMS = ("max", None, "smoothquant", "awq_lite")


class _TraceCache:
    """Traced jaxprs of ``apply_fn`` keyed by the input signature (shapes, dtypes, static arguments)."""

    def __init__(self, apply_fn):
        self.apply_fn = apply_fn
        self.entries: dict = {}
        self.first: TracedModel | None = None
        self.collectors: dict = {}

    def get(self, params, args, kwargs):
        p_leaves, p_def = jax.tree_util.tree_flatten(params)
        dyn, _, static_key = split_dynamic((args, kwargs))
        key = (p_def, signature_of(p_leaves), static_key, signature_of(dyn))
        traced = self.entries.get(key)
        if traced is None:
            traced = trace(self.apply_fn, params, *args, **kwargs)
            self.entries[key] = traced
            if self.first is None:
                self.first = traced
        return key, traced, list(p_leaves) + list(dyn)


@dataclasses.dataclass(frozen=True)
class _Meta:
    apply_fn: Callable
    config: QuantConfig
    cache: _TraceCache = dataclasses.field(compare=False, hash=False, repr=False)


@jax.tree_util.register_pytree_node_class
class QuantizedModel:
    """A quantized model: float ``params``, quantizer state ``qstate`` and static metadata.

    ``qm.apply(params, *args, **kwargs)`` has ``apply_fn``'s signature and runs it with fake quantization
    at every enabled site; it works under ``jax.jit``, ``jax.grad`` (QAT, straight-through estimator),
    ``jax.vmap`` and for new input shapes (re-traced and cached per signature). The model is a pytree whose
    children are ``(params, qstate)``.

    Attributes:
      params: the (float or folded) params, same structure as given to :func:`quantize`.
      qstate: ``{quantizer name: {"amax": array, ...}}`` for calibrated quantizers.
      config: the :class:`~jq.config.QuantConfig` (with enable/disable edits appended).
      apply_fn: the original function.
    """

    def __init__(self, params, qstate, meta: _Meta):
        self.params = params
        self.qstate = qstate
        self._meta = meta

    @classmethod
    def create(cls, params, apply_fn: Callable, config, qstate=None) -> QuantizedModel:
        """A model from its parts (e.g. restored from a checkpoint); it is traced on its first call.

        ``config`` is a :class:`QuantConfig` or a ModelOpt-style dict; ``qstate`` maps quantizer names to
        ``{"amax": ...}`` dicts.
        """
        return cls(params, dict(qstate or {}), _Meta(apply_fn, as_config(config), _TraceCache(apply_fn)))

    def trace(self, *args, params=None, **kwargs) -> tuple[TracedModel, list]:
        """The traced jaxpr for these inputs (cached per signature) and the flat ``params + args`` leaves
        the :class:`~jq.transform.Evaluator` takes."""
        _, traced, flat = self._meta.cache.get(self.params if params is None else params, args, kwargs)
        return traced, flat

    # -- pytree ------------------------------------------------------------------------------------------
    def tree_flatten(self):
        return (self.params, self.qstate), self._meta

    @classmethod
    def tree_unflatten(cls, meta, children):
        return cls(children[0], children[1], meta)

    # -- properties ----------------------------------------------------------------------------------
    @property
    def config(self) -> QuantConfig:
        return self._meta.config

    @property
    def apply_fn(self) -> Callable:
        return self._meta.apply_fn

    @property
    def traced(self) -> TracedModel:
        """The first trace (sites and quantizers as found at quantization time)."""
        if self._meta.cache.first is None:
            raise ValueError("this QuantizedModel has not been traced yet: call apply or calibrate first")
        return self._meta.cache.first

    def spec(self, name: str):
        """Resolved spec of quantizer ``name`` (a QuantizerSpec, a tuple for sequential, None when off)."""
        spec = self.config.resolve(name)
        if isinstance(spec, tuple):
            return spec if any(s.enable for s in spec) else None
        return spec if spec.enable else None

    def specs(self, traced: TracedModel | None = None) -> dict:
        traced = traced or self.traced
        return {n: self.spec(n) for n in traced.quantizers}

    @property
    def quantizer_names(self) -> list[str]:
        return list(self.traced.quantizers)

    def replace(self, **changes) -> QuantizedModel:
        """A copy with ``params``, ``qstate`` or ``config`` replaced."""
        params = changes.pop("params", self.params)
        qstate = changes.pop("qstate", self.qstate)
        config = changes.pop("config", self.config)
        if changes:
            raise TypeError(f"unknown fields {sorted(changes)}")
        return QuantizedModel(params, qstate, dataclasses.replace(self._meta, config=config))

    # -- running -----------------------------------------------------------------------------------------
    def apply(self, params, *args, **kwargs):
        """Run ``apply_fn(params, *args, **kwargs)`` with fake quantization."""
        _, traced, flat = self._meta.cache.get(params, args, kwargs)
        outs = Evaluator(traced, self.specs(traced), self.qstate, "apply").run(flat)
        return jax.tree_util.tree_unflatten(traced.out_tree, outs)

    def __call__(self, *args, **kwargs):
        """``apply`` with the model's own params."""
        return self.apply(self.params, *args, **kwargs)

    def __repr__(self):
        n = len(self._meta.cache.first.quantizers) if self._meta.cache.first else "?"
        return f"QuantizedModel(apply_fn={getattr(self.apply_fn, '__qualname__', self.apply_fn)}, quantizers={n})"


# ----------------------------------------------------------------------------------------------------
# quantize / calibrate


def _as_args(batch):
    """A calibration batch: a tuple of positional args, ``{"args": ..., "kwargs": ...}``, or a single array."""
    if isinstance(batch, tuple):
        return batch, {}
    if isinstance(batch, dict) and set(batch) <= {"args", "kwargs"}:
        return tuple(batch.get("args", ())), dict(batch.get("kwargs", {}))
    return (batch,), {}


def _check_algorithm(algorithm: Algorithm):
    if algorithm.method not in IMPLEMENTED_ALGORITHMS:
        raise NotImplementedError(
            f"calibration algorithm {algorithm.method!r} is not implemented in jq yet; implemented: "
            f"{[m for m in IMPLEMENTED_ALGORITHMS if m]} and None (pass algorithm='max' to calibrate)")


def quantize(params, apply_fn: Callable, cfg, calib_data: Iterable | None = None,
             forward_loop: Callable | None = None, *, example_args: tuple | None = None,
             example_kwargs: dict | None = None, progress: bool = True) -> QuantizedModel:
    """Quantize ``apply_fn`` with the config ``cfg`` and calibrate it.

    Args:
      params: the model's params pytree (Flax linen variables, an nnx State, or any pytree of arrays).
      apply_fn: ``apply_fn(params, *args, **kwargs)``, any JAX function.
      cfg: a preset (``jq.INT8_DEFAULT_CFG`` ...), a ModelOpt-style dict or a :class:`QuantConfig`.
      calib_data: iterable of batches, each a tuple of positional args (or a single array).
      forward_loop: alternatively ``forward_loop(run)``, calling ``run(*args, **kwargs)`` on each batch.
      example_args, example_kwargs: inputs to trace with when no calibration data is given.
      progress: show a progress bar over calibration batches.

    Returns:
      A calibrated :class:`QuantizedModel`. Weights are calibrated from ``params``; activations from data.

    Raises:
      ValueError: bad config, NaN/inf in calibration data (naming the quantizer), nothing to trace with.
      NotImplementedError: the config's algorithm is not available in jq.
    """
    config = as_config(cfg)
    _check_algorithm(config.algorithm)
    qm = QuantizedModel(params, {}, _Meta(apply_fn, config, _TraceCache(apply_fn)))
    if calib_data is None and forward_loop is None:
        if example_args is None and example_kwargs is None:
            raise ValueError("quantize needs calib_data, forward_loop or example_args to trace apply_fn")
        qm._meta.cache.get(params, tuple(example_args or ()), dict(example_kwargs or {}))
    elif example_args is not None or example_kwargs is not None:
        qm._meta.cache.get(params, tuple(example_args or ()), dict(example_kwargs or {}))
    return calibrate(qm, calib_data, forward_loop, progress=progress, _warn_unused=True)


def _collector(qm: QuantizedModel, key, traced: TracedModel, collect_weights, qstate, site_stats, alphas):
    cache = qm._meta.cache
    stat_key = tuple(sorted((k, tuple(sorted(v))) for k, v in (site_stats or {}).items()))
    ckey = (key, qm.config, frozenset(collect_weights), stat_key, None if alphas is None else tuple(alphas))
    fn = cache.collectors.get(ckey)
    if fn is None:
        specs = qm.specs(traced)

        def run(flat, qstate):
            return Evaluator(traced, specs, qstate, "collect", collect_weights, site_stats=site_stats,
                             awq_alphas=alphas).run(flat)

        fn = cache.collectors[ckey] = jax.jit(run)
    return lambda flat: fn(flat, qstate)


def _collect(qm, calib_data, forward_loop, progress, qstate=None, site_stats=None, alphas=None, desc="calibrate"):
    """One pass over the data in collect mode; returns the merged statistics."""
    cache = qm._meta.cache
    stats: dict = {}
    n_batches = [0]

    def run(*args, **kwargs):
        key, traced, flat = cache.get(qm.params, args, kwargs)
        collect_weights = {n for n, s in traced.quantizers.items()
                           if s.is_weight and not isinstance(s.sites[0].weight, ParamOrigin)}
        outs, st = _collector(qm, key, traced, collect_weights, qstate or {}, site_stats, alphas)(flat)
        bad = sorted(k for k, (_, fin) in st.items() if not bool(jnp.all(fin)))
        if bad:
            raise ValueError(f"calibration batch {n_batches[0]} has NaN or inf values reaching quantizer(s) "
                             f"{bad}; clean the data (or the model) before calibrating")
        stats.update(merge_stats(stats, st))
        n_batches[0] += 1
        return jax.tree_util.tree_unflatten(traced.out_tree, outs)

    if forward_loop is not None:
        forward_loop(run)
    elif calib_data is not None:
        total = len(calib_data) if hasattr(calib_data, "__len__") else None
        bar = tqdm(iter(calib_data), total=total, desc=f"jq {desc}", unit="batch", disable=not progress,
                   file=sys.stderr, leave=False)
        for batch in bar:
            args, kwargs = _as_args(batch)
            run(*args, **kwargs)
    return stats


def calibrate(qm: QuantizedModel, calib_data: Iterable | None = None, forward_loop: Callable | None = None,
              algorithm=None, *, progress: bool = True, share_sibling_weight_amax: bool = False,
              _warn_unused: bool = False) -> QuantizedModel:
    """(Re)calibrate ``qm``: weights from its params, activations from data.

    ``algorithm`` overrides the config's: ``"max"``, ``None`` (nothing to calibrate), ``"smoothquant"``
    (``{"method": "smoothquant", "alpha": 1.0}``) or ``"awq_lite"`` (``{"method": "awq_lite",
    "alpha_step": 0.1}``); the multi-pass algorithms read the data two or three times (a generator is
    materialised into a list first). Others raise ``NotImplementedError``.
    Sibling layers that read the same input (q/k/v, gate/up; see :func:`jq.trace.sibling_groups`) share
    one input amax (the max over the group). With ``share_sibling_weight_amax`` their per-tensor weight
    amaxes (the NVFP4 global amax, FP8 per-tensor amax) are shared too, as fused serving kernels need.
    Returns a new model; ``qm`` is unchanged.
    """
    alg = qm.config.algorithm if algorithm is None else Algorithm.parse(algorithm)
    _check_algorithm(alg)
    if calib_data is not None and forward_loop is not None:
        raise ValueError("pass calib_data or forward_loop, not both")
    cache = qm._meta.cache
    if alg.method is None and cache.first is None:  # nothing to calibrate, but the model must be traced
        if calib_data is not None:
            first = next(iter(calib_data), None)
            if first is not None:
                args, kwargs = _as_args(first)
                cache.get(qm.params, args, kwargs)
        elif forward_loop is not None:
            def trace_only(*args, **kwargs):
                cache.get(qm.params, args, kwargs)
                return qm.apply_fn(qm.params, *args, **kwargs)
            forward_loop(trace_only)
    qstate: dict = {k: dict(v) for k, v in qm.qstate.items()}
    if alg.method in ("smoothquant", "awq_lite"):
        if calib_data is not None and not hasattr(calib_data, "__len__"):
            calib_data = list(calib_data)
        if calib_data is None and forward_loop is None:
            raise ValueError(f"{alg.method} needs calibration data")
        _pre_quant_scales(qm, alg, calib_data, forward_loop, progress, qstate)
    stats = _collect(qm, calib_data, forward_loop, progress, qstate) if alg.method is not None else {}
    if cache.first is None:
        raise ValueError("no calibration batch was seen and nothing was traced: give calib_data or example_args")
    traced = cache.first
    specs = qm.specs(traced)
    if alg.method is not None:
        p_leaves = jax.tree_util.tree_leaves(qm.params)
        for name, entry in calibrate_weights(traced, specs, p_leaves, qstate).items():
            qstate.setdefault(name, {}).update(entry)
        for name, (amax, _) in stats.items():
            if amax is not None and "#" not in name:
                qstate.setdefault(name, {})["amax"] = amax
        _share_siblings(traced, qstate, share_sibling_weight_amax)
        missing = [n for n, s in traced.quantizers.items() if specs.get(n) is not None and not s.is_weight
                   and _needs(specs[n]) and "amax" not in qstate.get(n, {})]
        if missing:
            warnings.warn(f"jq: {len(missing)} activation quantizer(s) got no calibration data and stay "
                          f"uncalibrated: {missing[:5]}{' ...' if len(missing) > 5 else ''}", stacklevel=2)
    if _warn_unused:
        from jq.config import warn_unused
        warn_unused(qm.config, traced.quantizers)
    return qm.replace(qstate=qstate)


def _pre_quant_scales(qm, alg, calib_data, forward_loop, progress, qstate):
    """SmoothQuant / AWQ-lite: compute ``pre_quant_scale`` per site (stored on the input quantizer)."""
    from jq.calib import awq, smoothquant

    cache = qm._meta.cache
    if cache.first is None:  # trace once so the targets are known
        if calib_data is None:
            raise ValueError(f"{alg.method} with a forward_loop needs example_args to trace the model first")
        args, kwargs = _as_args(calib_data[0])
        cache.get(qm.params, args, kwargs)
    traced = cache.first
    leaves = jax.tree_util.tree_leaves(qm.params)
    opts = alg.kwargs
    if alg.method == "smoothquant":
        kinds = {s.name: {"channel_amax"} for s in smoothquant.smoothquant_targets(qm, traced)}
        stats = _collect(qm, calib_data, forward_loop, progress, qstate, kinds, desc="smoothquant")
        for name, scale in smoothquant.smoothquant_scales(qm, traced, stats, leaves, opts.get("alpha", 1.0)).items():
            qstate.setdefault(name, {})["pre_quant_scale"] = scale
        return
    targets = awq.awq_targets(qm, traced)
    stats = _collect(qm, calib_data, forward_loop, progress, qstate,
                     {s.name: {"channel_abssum"} for s in targets}, desc="awq pass 1")
    act_scales, w_scales = {}, {}
    groups = sibling_partition(traced, [s.name for s in targets])
    by_name = {s.name: s for s in targets}
    for group in groups:
        key = f"{group[0]}.input_quantizer"
        if f"{key}#channel_abssum#sum" not in stats:
            continue
        act = stats[f"{key}#channel_abssum#sum"][0] / stats[f"{key}#count#sum"][0][..., None]
        ws = [awq.awq_weight_scale(by_name[n], qm.spec(f"{n}.weight_quantizer"), leaves) for n in group]
        rows = [by_name[n].view.shape[by_name[n].view.batch] for n in group]
        w = sum(r * x for r, x in zip(rows, ws)) / sum(rows)
        for n in group:
            qstate.setdefault(f"{n}.input_quantizer", {}).update(awq_act_scale=act, awq_w_scale=w)
            act_scales[f"{n}.input_quantizer"], w_scales[f"{n}.input_quantizer"] = act, w
    alphas = awq.awq_alphas(opts.get("alpha_step", 0.1))
    stats = _collect(qm, calib_data, forward_loop, progress, qstate,
                     {n: {"awq"} for n in by_name if f"{n}.input_quantizer" in act_scales}, alphas=tuple(alphas),
                     desc="awq pass 2")
    pqs, _ = awq.awq_select(qm, traced, stats, act_scales, w_scales, alphas)
    for name in list(qstate):
        for k in ("awq_act_scale", "awq_w_scale"):
            qstate[name].pop(k, None)
    for name, scale in pqs.items():
        qstate.setdefault(name, {})["pre_quant_scale"] = scale


def _share_siblings(traced, qstate, weights: bool) -> None:
    from jq.trace.symbols import sibling_groups

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
                qstate[n]["amax"] = shared


def _needs(spec) -> bool:
    specs = spec if isinstance(spec, tuple) else (spec,)
    return any(s.enable and needs_amax(s) for s in specs)


# ----------------------------------------------------------------------------------------------------
# summary, enable/disable, fold


def _fmt_amax(a) -> str:
    if a is None:
        return "-"
    a = np.asarray(a)
    if a.size == 1:
        return f"{float(a.reshape(())):.4g}"
    return f"[{a.min():.3g}, {a.max():.3g}] {tuple(a.shape)}"


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
            fmt = " -> ".join(s.describe() for s in stages if s.enable)
            st = qm.qstate.get(name, {})
            amax = _fmt_amax(st.get("amax"))
            status = "on" if (not _needs(spec) or "amax" in st) else "uncalibrated"
        rows.append((name, fmt, amax, status))
    w = [max(len(r[i]) for r in rows + [("quantizer", "format", "amax", "status")]) for i in range(4)]
    line = "  ".join(f"{{:<{x}}}" for x in w)
    out = [line.format("quantizer", "format", "amax", "status"), line.format(*("-" * x for x in w))]
    out += [line.format(*r) for r in rows]
    n_on = sum(r[3] == "on" for r in rows)
    out.append(f"{len(rows)} quantizers, {n_on} enabled, {len(traced.sites)} sites"
               + (f", {len(traced.skipped)} matmuls/convs skipped" if traced.skipped else ""))
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


def fold_weights(qm: QuantizedModel) -> QuantizedModel:
    """Replace weights by their fake-quantized values and disable their weight quantizers (ModelOpt's
    ``fold_weight``): inference then skips weight quantization. A weight is folded when it reaches its
    sites through layout-only ops (a permutation of the params leaf) and is used nowhere else; others are
    left as they are (with a warning). Exact when the leaf dtype equals the operand dtype.
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
            v = replay_weight(w, origin.chain)
            fn = view.to_canonical
            for _ in range(n_layers):
                fn = jax.vmap(fn)
            return fn(v)

        c = forward(leaves[leaf])
        for i, s in enumerate(stages):
            if not s.enable:
                continue
            c = apply_stage(c, state.get("amax" if i == 0 else f"amax_{i}"), s, view.batch, n_layers)
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
