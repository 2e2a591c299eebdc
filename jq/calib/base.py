"""The calibration algorithm interface: one object per algorithm, one entry point.

An algorithm is a frozen dataclass whose fields are its options (``SmoothQuant(alpha=0.5)``); its
``calibrate(qm, data)`` returns the calibrated :class:`~jq.QuantizedModel` (most algorithms change only the
quantizer state; weight-updating ones such as GPTQ change the params too). ``data`` is a :class:`CalibData`:
the batches (or ``forward_loop``) and the per-call options, with helpers to run collection passes.

Example:
  >>> qm = SmoothQuant(alpha=0.8).calibrate(qm, CalibData.create(batches))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from jq.calib.collect import as_args, collection_pass

__all__ = ["Algorithm", "CalibData"]


@dataclasses.dataclass(frozen=True)
class CalibData:
    """Calibration data and the options of one :func:`jq.calibrate` call.

    Attributes:
      batches: a sequence of batches (a one-shot iterable is materialised when an algorithm reads it twice).
      forward_loop: alternatively ``forward_loop(run)`` calling ``run(*args, **kwargs)`` per batch.
      progress: show progress bars.
      share_sibling_weight_amax: siblings (q/k/v, gate/up) share per-tensor weight amaxes too.
    """

    batches: Sequence | None = None
    forward_loop: Callable | None = None
    progress: bool = True
    share_sibling_weight_amax: bool = False

    @classmethod
    def create(cls, calib_data=None, forward_loop=None, *, progress=True, share_sibling_weight_amax=False,
               passes: int = 1) -> CalibData:
        if calib_data is not None and forward_loop is not None:
            raise ValueError("pass calib_data or forward_loop, not both")
        if calib_data is not None and passes > 1 and not hasattr(calib_data, "__len__"):
            calib_data = list(calib_data)
        return cls(calib_data, forward_loop, progress, share_sibling_weight_amax)

    @property
    def empty(self) -> bool:
        return self.batches is None and self.forward_loop is None

    def collect(self, qm, handler, *, qstate=None, desc="calibrate") -> dict:
        """One pass of ``handler`` over the data (:func:`jq.calib.collect.collection_pass`)."""
        return collection_pass(qm, self.batches, self.forward_loop, handler, qstate=qstate,
                               progress=self.progress, desc=desc)

    def trace(self, qm) -> None:
        """Trace ``qm`` on the first batch (or the first call of the forward loop) if it is not traced yet.

        A forward loop is stopped right after its first call (an exception raised through it), so no batch is
        evaluated."""
        if qm.is_traced:
            return
        cache = qm.cache
        if self.batches is not None:
            first = next(iter(self.batches), None)
            if first is not None:
                args, kwargs = as_args(first)
                cache.get(qm.params, args, kwargs)
        elif self.forward_loop is not None:
            def trace_only(*args, **kwargs):
                cache.get(qm.params, args, kwargs)
                raise _Traced

            try:
                self.forward_loop(trace_only)
            except _Traced:
                pass


class _Traced(Exception):
    """Raised through a forward loop once its first call has traced the model."""


class Algorithm:
    """Base of the calibration algorithms (frozen dataclasses; fields are the options).

    Attributes:
      name: the name configs use (``"max"``, ``"smoothquant"`` ...).
      passes: how many times it reads the data.
      needs_data: whether it cannot run on weights alone.
    """

    name: ClassVar[str] = ""
    passes: ClassVar[int] = 1
    needs_data: ClassVar[bool] = False

    def calibrate(self, qm, data: CalibData) -> Any:
        raise NotImplementedError
