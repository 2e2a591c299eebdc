"""The quantized model: float params, quantizer state and static metadata, as one pytree.

Example:
  >>> qm = jq.quantize(params, model.apply, jq.INT8_DEFAULT_CFG, calib_data=[(x,)])
  >>> y = jax.jit(qm.apply)(qm.params, x)            # same signature as model.apply
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

from jq.config import QuantConfig, as_config
from jq.handlers.apply import FakeQuant
from jq.trace.tracer import TracedModel, signature_of, split_dynamic, trace
from jq.transform import Evaluator

__all__ = ["QuantizedModel", "TraceCache"]


class TraceCache:
    """Traced jaxprs of ``apply_fn`` keyed by the input signature (shapes, dtypes, static arguments), and
    the compiled calibration passes built on them."""

    def __init__(self, apply_fn):
        self.apply_fn = apply_fn
        self.entries: dict = {}
        self.first: TracedModel | None = None
        self.collectors: dict = {}

    def get(self, params, args, kwargs):
        """``(key, traced, flat params + dynamic args)`` for this call, tracing on a new signature."""
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
    cache: TraceCache = dataclasses.field(compare=False, hash=False, repr=False)


@jax.tree_util.register_pytree_node_class
class QuantizedModel:
    """A quantized model: float ``params``, quantizer state ``qstate`` and static metadata.

    ``qm.apply(params, *args, **kwargs)`` has ``apply_fn``'s signature and runs it with fake quantization
    at every enabled site; it works under ``jax.jit``, ``jax.grad`` (QAT, straight-through estimator),
    ``jax.vmap`` and for new input shapes (re-traced and cached per signature). The model is a pytree whose
    children are ``(params, qstate)``.

    Attributes:
      params: the (float or folded) params, same structure as given to :func:`jq.quantize`.
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
        return cls(params, dict(qstate or {}), _Meta(apply_fn, as_config(config), TraceCache(apply_fn)))

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
    def cache(self) -> TraceCache:
        return self._meta.cache

    @property
    def traced(self) -> TracedModel:
        """The first trace (sites and quantizers as found at quantization time)."""
        if self._meta.cache.first is None:
            raise ValueError("this QuantizedModel has not been traced yet: call apply or calibrate first")
        return self._meta.cache.first

    @property
    def is_traced(self) -> bool:
        return self._meta.cache.first is not None

    def spec(self, name: str, traced: TracedModel | None = None):
        """Resolved spec of quantizer ``name`` (a QuantizerSpec, a tuple for sequential, None when off).

        ``"@role"`` config keys match by the roles ``traced`` (default: the first trace) gives the quantizer.
        """
        traced = traced or self._meta.cache.first
        spec = self.config.resolve(name, () if traced is None else traced.roles(name))
        if isinstance(spec, tuple):
            return spec if any(s.enable for s in spec) else None
        return spec if spec.enable else None

    def specs(self, traced: TracedModel | None = None) -> dict:
        traced = traced or self.traced
        return {n: self.spec(n, traced) for n in traced.quantizers}

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
        return QuantizedModel(params, qstate, dataclasses.replace(self._meta, config=as_config(config)))

    # -- running -----------------------------------------------------------------------------------------
    def evaluate(self, handler, params, *args, **kwargs):
        """Run ``apply_fn(params, *args, **kwargs)`` with ``handler`` at the sites (outputs unflattened)."""
        _, traced, flat = self._meta.cache.get(params, args, kwargs)
        outs = Evaluator(traced, self.specs(traced), self.qstate, handler).run(flat)
        if handler.collects:
            outs, stats = outs
            return jax.tree_util.tree_unflatten(traced.out_tree, outs), stats
        return jax.tree_util.tree_unflatten(traced.out_tree, outs)

    def apply(self, params, *args, **kwargs):
        """Run ``apply_fn(params, *args, **kwargs)`` with fake quantization."""
        return self.evaluate(FakeQuant(), params, *args, **kwargs)

    def __call__(self, *args, **kwargs):
        """``apply`` with the model's own params."""
        return self.apply(self.params, *args, **kwargs)

    def __repr__(self):
        n = len(self._meta.cache.first.quantizers) if self._meta.cache.first else "?"
        return f"QuantizedModel(apply_fn={getattr(self.apply_fn, '__qualname__', self.apply_fn)}, quantizers={n})"
