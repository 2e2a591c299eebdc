"""One pass over calibration data that collects statistics (ModelOpt's "calibrate with quantization off").

:class:`Collect` is the handler: every enabled activation quantizer (and every weight computed from several
params leaves, which cannot be calibrated from the params alone) observes its tensor with its calibrator and
passes it on unquantized. Algorithms that need more (per-channel statistics, search losses, Hessians) subclass
it and override :meth:`~jq.handlers.Handler.site`. Handlers are pytrees: their array fields are traced
arguments of the compiled pass, their other fields are static (part of the compilation cache key).

:func:`collection_pass` runs a handler over the data (``calib_data`` batches or a ``forward_loop``), one
compiled evaluation per input signature, with a progress bar, and stops at the first batch whose values
reaching a quantizer are not finite, naming the quantizer and the batch.

Example:
  >>> stats = collection_pass(qm, batches, None, Collect.for_model(qm, traced))
  >>> stats[("fc1.input_quantizer", "amax")].value
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import jax

from jq.calib import calibrators
from jq.calib.stats import Finite, merge_stats
from jq.handlers.base import Handler, QuantizerCall
from jq.progress import progress as progress_bar
from jq.trace.sites import ParamOrigin
from jq.transform import Evaluator

__all__ = ["Collect", "collection_pass", "as_args", "weights_from_data", "pytree_handler"]


def pytree_handler(cls):
    """Register a dataclass handler as a pytree: fields named in ``cls.array_fields`` are children."""
    names = [f.name for f in dataclasses.fields(cls)]
    data = list(getattr(cls, "array_fields", ()))
    jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=[n for n in names if n not in data])
    return cls


def weights_from_data(traced) -> frozenset:
    """Weight quantizers whose weight is computed from several params leaves: calibrated from data."""
    return frozenset(n for n, s in traced.quantizers.items()
                     if s.is_weight and not isinstance(s.sites[0].weight, ParamOrigin))


@pytree_handler
@dataclasses.dataclass(frozen=True)
class Collect(Handler):
    """Observe activation quantizers with their calibrators; quantize nothing.

    Attributes:
      data_weights: weight quantizers calibrated from data (see :func:`weights_from_data`).
      select: which calibrator each quantizer uses (:class:`~jq.calib.calibrators.Selection`).
      step: the pass of multi-pass calibrators (``step=1`` sees the first pass's amax in the state).
      only: the quantizers observed (None: all).
    """

    data_weights: frozenset = frozenset()
    select: calibrators.Selection = calibrators.Selection()
    step: int = 0
    only: frozenset | None = None
    collects = True
    array_fields = ()

    def quantizer(self, q: QuantizerCall, x):
        if q.is_weight and q.name not in self.data_weights:
            return x  # calibrated from the params
        if self.only is not None and q.name not in self.only:
            return x
        first = next((s for s in q.stages if s.enable), None)
        if first is None:
            return x
        v = q.view.to_canonical(x) if q.view is not None else x
        if first.format.needs_amax(first):
            stat = self.select(first, q.is_weight).observe(v, first, q.batch, step=self.step, state=q.state)
        else:
            stat = Finite.of(v)
        q.scope.record((q.name, stat.kind), stat)
        return x


def as_args(batch) -> tuple[tuple, dict]:
    """A calibration batch: a tuple of positional args, ``{"args": ..., "kwargs": ...}``, or a single array."""
    if isinstance(batch, tuple):
        return batch, {}
    if isinstance(batch, dict) and set(batch) <= {"args", "kwargs"}:
        return tuple(batch.get("args", ())), dict(batch.get("kwargs", {}))
    return (batch,), {}


def _compiled(qm, key, traced, handler_def):
    cache = qm.cache.collectors
    ck = (key, qm.config, handler_def)
    fn = cache.get(ck)
    if fn is None:
        specs = qm.specs(traced)

        def run(flat, qstate, handler):
            return Evaluator(traced, specs, qstate, handler).run(flat)

        fn = cache[ck] = jax.jit(run)
    return fn


def collection_pass(qm, calib_data: Iterable | None, forward_loop: Callable | None, handler: Handler, *,
                    qstate: dict | None = None, progress: bool = True, desc: str = "calibrate") -> dict:
    """Run ``handler`` over the data and return the merged statistics ``{(name, kind): Statistic}``.

    Args:
      qm: the :class:`~jq.QuantizedModel` (traced on each new input signature).
      calib_data: iterable of batches (see :func:`as_args`), or None with ``forward_loop``.
      forward_loop: ``forward_loop(run)`` calling ``run(*args, **kwargs)`` per batch (ModelOpt's form).
      handler: a collecting handler (a pytree, see :func:`pytree_handler`).
      qstate: the quantizer state the evaluation sees (default: the model's).
      progress: show a progress bar.
      desc: the progress bar's label.

    Raises:
      ValueError: a batch has NaN or inf values reaching a quantizer (naming the quantizers and the batch).
    """
    cache = qm.cache
    state = qm.qstate if qstate is None else qstate
    stats: dict = {}
    n_batches = [0]
    h_leaves, h_def = jax.tree_util.tree_flatten(handler)

    def run(*args, **kwargs):
        key, traced, flat = cache.get(qm.params, args, kwargs)
        outs, st = _compiled(qm, key, traced, h_def)(flat, state, jax.tree_util.tree_unflatten(h_def, h_leaves))
        bad = sorted({k[0] for k, s in st.items() if not bool(s.finite.all())})
        if bad:
            raise ValueError(f"calibration batch {n_batches[0]} has NaN or inf values reaching quantizer(s) "
                             f"{bad}; clean the data (or the model) before calibrating")
        stats.update(merge_stats(stats, st))
        n_batches[0] += 1
        return jax.tree_util.tree_unflatten(traced.out_tree, outs)

    if forward_loop is not None:
        forward_loop(run)
    elif calib_data is not None:
        for batch in progress_bar(calib_data, desc=f"jq {desc}", enabled=progress):
            args, kwargs = as_args(batch)
            run(*args, **kwargs)
    return stats
