"""The quantized model: every enabled quantizer fake-quantizes its tensor with its calibrated state.

Each stage of a (possibly sequential) quantizer reads its amax (``amax`` for the first stage, ``amax_1``,
... for the next) from the quantizer state and applies :func:`jq.fake_quant.fake_quant`; a static quantizer
without an amax is an error naming it.

Example:
  >>> outs = Evaluator(traced, specs, qstate, FakeQuant()).run(flat_args)
"""

from __future__ import annotations

from jq.fake_quant import fake_quant
from jq.handlers.base import Handler, QuantizerCall

__all__ = ["FakeQuant", "stage_amax_key"]


def stage_amax_key(i: int) -> str:
    """The quantizer-state key of stage ``i``'s amax: ``amax``, ``amax_1``, ``amax_2`` ..."""
    return "amax" if i == 0 else f"amax_{i}"


class FakeQuant(Handler):
    """Fake quantization with the calibrated state (what :meth:`jq.QuantizedModel.apply` runs)."""

    def quantizer(self, q: QuantizerCall, x):
        for i, s in enumerate(q.stages):
            if not s.enable:
                continue
            amax = q.state.get(stage_amax_key(i))
            if amax is None and s.format.needs_amax(s):
                raise ValueError(f"quantizer {q.name!r} ({s.describe()}) has no calibrated amax: run jq.calibrate "
                                 f"(or disable it with jq.disable_quantizer)")
            x = self.stage(q, i, s, x, amax)
        return x

    def stage(self, q: QuantizerCall, i: int, spec, x, amax):
        """Stage ``i`` of quantizer ``q`` applied to ``x`` with its amax (subclasses change how it is applied)."""
        del i
        return fake_quant(x, amax, spec=spec, view=q.view)
