"""Per-quantizer calibrators: which statistic a quantizer collects from data, and the amax it yields.

A calibrator is named by a quantizer spec's ``calibrator`` field (ModelOpt's). Weights never need data: the
weight calibrator is applied to the weight itself (:mod:`jq.calib.weights`). Activations are observed during
calibration passes (:mod:`jq.calib.collect`): ``observe(x, spec, batch)`` returns a statistic
(:mod:`jq.calib.stats`) that merges across batches, loop iterations and devices; ``amax(statistic, spec)``
finishes it into the amax the quantizer keeps.

===========  =================================================================================
calibrator   amax
===========  =================================================================================
``max``      ``max|x|`` with the spec's granularity (tensor / axis / block), over all batches
===========  =================================================================================

Example:
  >>> from jq.config import QuantizerSpec
  >>> spec = QuantizerSpec(num_bits=8)
  >>> cal = get("max"); float(cal.amax(cal.observe(jnp.array([1.0, -2.5]), spec), spec))
  2.5
"""

from __future__ import annotations

import dataclasses

import jax

from jq.calib.stats import Amax, Statistic

__all__ = ["Calibrator", "MaxCalibrator", "CALIBRATORS", "get", "check"]


class Calibrator:
    """Observe activations, then finish the statistic into an amax."""

    name: str = ""

    def observe(self, x: jax.Array, spec, batch: int = 0) -> Statistic | None:
        raise NotImplementedError

    def amax(self, stat: Statistic, spec) -> jax.Array:
        raise NotImplementedError

    def weight_amax(self, w: jax.Array, spec, batch: int = 0) -> jax.Array:
        """The amax of a weight (canonical view), calibrated from the weight alone."""
        return self.amax(self.observe(w, spec, batch), spec)


@dataclasses.dataclass(frozen=True)
class MaxCalibrator(Calibrator):
    """``amax = max|x|`` over everything seen, with the granularity of the spec (ModelOpt's default)."""

    name: str = "max"

    def observe(self, x, spec, batch=0):
        return Amax.of(x, spec.format.compute_amax(x, spec, batch))

    def amax(self, stat, spec):
        return stat.value


CALIBRATORS: dict[str, Calibrator] = {"max": MaxCalibrator()}


def check(name) -> None:
    """``ValueError`` listing the supported calibrators unless ``name`` is one."""
    if not isinstance(name, str) or name not in CALIBRATORS:
        extra = ""
        if name == "histogram":
            extra = " (histogram calibration, with percentile/entropy/mse, is not built in jq yet)"
        raise ValueError(f"calibrator must be one of {sorted(CALIBRATORS)}, got {name!r}{extra}")


def get(name: str) -> Calibrator:
    """The calibrator called ``name``."""
    check(name)
    return CALIBRATORS[name]
