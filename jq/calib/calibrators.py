"""Per-quantizer calibrators: which statistic a quantizer collects from data, and the amax it yields.

A quantizer spec's ``calibrator`` field (ModelOpt's) names one, or gives it options in a dict::

    "calibrator": "percentile"
    "calibrator": {"method": "percentile", "percentile": 99.9, "num_bins": 2048}

and the spec keeps the frozen calibrator object (``to_dict`` writes the name back, or the dict when an option
differs from its default). Weights never need data: the weight calibrator is applied to the weight itself
(:meth:`Calibrator.weight_amax`, :mod:`jq.calib.weights`). Activations are observed during calibration passes
(:mod:`jq.calib.collect`): ``observe(x, spec, batch)`` returns a statistic (:mod:`jq.calib.stats`) that
merges across batches, loop iterations and devices; ``amax(statistic, spec)`` finishes it into the amax the
quantizer keeps. A calibrator with ``passes = 2`` observes the data again with the first pass's amax in the
quantizer state (``step=1``).

================  =====================================================================================
calibrator        amax
================  =====================================================================================
``max``           ``max|x|`` with the spec's granularity (tensor / axis / block), over all batches
``histogram``     a 2048-bin histogram of ``|x|``; the method comes from the algorithm (``percentile``,
                  ``entropy``, ``mse``; ``entropy`` under the others) -- options ``num_bins``,
                  ``percentile``, ``start_bin``, ``stride``
``percentile``    histogram, the ``percentile`` (99.99) of ``|x|`` (:mod:`jq.calib.histogram`)
``entropy``       histogram, TensorRT's KL-divergence threshold (``start_bin`` 128, ``stride`` 1)
``mse``           histogram, the bin centre minimising the count-weighted squared error
``mse_sweep``     ``amax0 * m`` for ``m`` in 0.25 .. 4.0 (``start_multiplier``, ``stop_multiplier``,
                  ``step_size``) minimising the squared error per amax entry (ModelOpt's MseCalibrator,
                  :mod:`jq.calib.mse`); two passes for activations. Static NVFP4 blocks: every E4M3 block
                  scale. ``fp8_scale_sweep=True`` accepts only such specs (ModelOpt's flag).
================  =====================================================================================

Histograms are per tensor (ModelOpt's ``HistogramCalibrator`` raises for an ``axis``; a histogram per
channel or block would cost ``num_bins`` floats each): a histogram calibrator on a per-axis or per-block
spec, on a dynamic quantizer or on a format whose block scales come from the tensor at run time (MX,
NVFP4's dynamic blocks) is a ``ValueError``. Per-channel and per-block weights use ``mse_sweep``.

Example:
  >>> from jq.config import QuantizerSpec
  >>> spec = QuantizerSpec(num_bits=8)
  >>> cal = get("max"); float(cal.amax(cal.observe(jnp.array([1.0, -2.5]), spec), spec))
  2.5
  >>> parse({"method": "percentile", "percentile": 99.9}).to_config()
  {'method': 'percentile', 'percentile': 99.9}
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar

import jax

from jq.calib import histogram as H
from jq.calib import mse
from jq.calib.stats import Amax, Histogram, Statistic, Sum

__all__ = ["Calibrator", "MaxCalibrator", "HistogramCalibrator", "MseSweepOptions", "MseSweepCalibrator", "Selection",
           "CALIBRATORS", "parse", "get", "check", "names"]


class Calibrator:
    """Observe activations, then finish the statistic into an amax (frozen dataclasses: fields are options)."""

    name: str = ""
    passes: ClassVar[int] = 1

    def validate(self, spec) -> None:
        """``ValueError`` when ``spec`` cannot be calibrated by this calibrator."""

    def supports(self, spec) -> bool:
        try:
            self.validate(spec)
        except ValueError:
            return False
        return True

    def observe(self, x: jax.Array, spec, batch: int = 0, *, step: int = 0, state: dict | None = None) -> Statistic:
        raise NotImplementedError

    def amax(self, stat: Statistic, spec, *, step: int = 0, state: dict | None = None) -> jax.Array:
        raise NotImplementedError

    def weight_amax(self, w: jax.Array, spec, batch: int = 0) -> jax.Array:
        """The amax of a weight (canonical view), calibrated from the weight alone."""
        return self.amax(self.observe(w, spec, batch), spec)

    def options(self) -> dict:
        """The options the dict form accepts, with their values."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_config(self) -> str | dict:
        """The config form: the name, or ``{"method": name, **options that differ from the default}``."""
        default = CALIBRATORS[self.name].options()
        changed = {k: v for k, v in self.options().items() if v != default[k]}
        return self.name if not changed else {"method": self.name, **changed}


def _needs_static_amax(cal_name: str, spec) -> None:
    if spec.format.is_dynamic(spec) and spec.format.needs_amax(spec):
        raise ValueError(f"calibrator {cal_name!r} cannot calibrate {spec.describe()}: its block scales are "
                         f"computed from the tensor at run time (only the per-tensor global amax is static); "
                         f"use 'max'")
    if not spec.format.needs_amax(spec):
        raise ValueError(f"calibrator {cal_name!r} cannot calibrate {spec.describe()}: it is dynamic (no "
                         f"calibrated amax); use 'max'")


@dataclasses.dataclass(frozen=True)
class MaxCalibrator(Calibrator):
    """``amax = max|x|`` over everything seen, with the granularity of the spec (ModelOpt's default)."""

    name: ClassVar[str] = "max"

    def observe(self, x, spec, batch=0, *, step=0, state=None):
        return Amax.of(x, spec.format.compute_amax(x, spec, batch))

    def amax(self, stat, spec, *, step=0, state=None):
        return stat.value


def _int_option(cal, field, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"calibrator {cal!r}: {field} must be an int in [{low}, {high}], got {value!r}")


def _float_option(cal, field, value, low, high, low_open=True):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not (
            (low < value if low_open else low <= value) and value <= high):
        raise ValueError(f"calibrator {cal!r}: {field} must be a number in {'(' if low_open else '['}{low}, "
                         f"{high}], got {value!r}")


@dataclasses.dataclass(frozen=True)
class HistogramCalibrator(Calibrator):
    """A histogram of ``|x|`` (:class:`~jq.calib.stats.Histogram`) finished by ``method`` (ModelOpt's
    ``HistogramCalibrator`` + ``compute_amax``); ``method=None`` is ``"histogram"``: the algorithm decides."""

    method: str | None = None
    num_bins: int = 2048
    percentile: float = 99.99
    start_bin: int = 128
    stride: int = 1

    _OPTIONS: ClassVar[dict] = {None: ("num_bins", "percentile", "start_bin", "stride"),
                                "percentile": ("num_bins", "percentile"),
                                "entropy": ("num_bins", "start_bin", "stride"),
                                "mse": ("num_bins", "start_bin", "stride")}

    def __post_init__(self):
        if self.method not in self._OPTIONS:
            raise ValueError(f"histogram method must be one of {list(H.METHODS)} or None, got {self.method!r}")
        _int_option(self.name, "num_bins", self.num_bins, 2, 1 << 20)
        _float_option(self.name, "percentile", self.percentile, 0.0, 100.0)
        _int_option(self.name, "start_bin", self.start_bin, 1, self.num_bins - (1 if self.method == "mse" else 0))
        _int_option(self.name, "stride", self.stride, 1, self.num_bins)
        object.__setattr__(self, "percentile", float(self.percentile))

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.method or "histogram"

    def options(self):
        return {k: getattr(self, k) for k in self._OPTIONS[self.method]}

    def validate(self, spec):
        _needs_static_amax(self.name, spec)
        if spec.axis is not None or spec.block_sizes is not None:
            raise ValueError(f"calibrator {self.name!r} collects one histogram per tensor (as ModelOpt's), but "
                             f"{spec.describe()} keeps an amax per axis or block; use 'max' or 'mse_sweep'")

    def observe(self, x, spec, batch=0, *, step=0, state=None):
        return Histogram.of(x, self.num_bins, batch)

    def amax(self, stat, spec, *, step=0, state=None):
        if self.method == "percentile":
            return H.host_amax(functools.partial(H.percentile_amax, percentile=self.percentile), stat.counts,
                               stat.range)
        if self.method == "entropy":
            return H.host_amax(functools.partial(H.entropy_amax, levels=H.quant_levels(spec),
                                                 start_bin=self.start_bin, stride=self.stride), stat.counts, stat.range)
        if self.method == "mse":
            return H.histogram_amax(functools.partial(H.mse_amax, spec=spec, start_bin=self.start_bin,
                                                      stride=self.stride), stat.counts, stat.range)
        raise ValueError("a 'histogram' calibrator needs a method (percentile, entropy or mse) from the calibration "
                         "algorithm; resolve it with calibrators.Selection")


@dataclasses.dataclass(frozen=True)
class MseSweepOptions:
    """The amax sweep's options (ModelOpt's ``MseCalibConfig``), shared by :class:`MseSweepCalibrator` and the
    ``mse`` algorithm: candidates ``amax0 * m`` for ``m`` in ``linspace(start_multiplier, stop_multiplier,
    ceil((stop - start) / step_size) + 1)``; ``fp8_scale_sweep`` searches NVFP4 block scales over every E4M3
    value instead.

    Example:
      >>> MseSweepCalibrator(step_size=0.25).multipliers[:3]  # a MseSweepOptions with the calibrator's methods
      array([0.25, 0.5 , 0.75], dtype=float32)
    """

    start_multiplier: float = 0.25
    stop_multiplier: float = 4.0
    step_size: float = 0.1
    fp8_scale_sweep: bool = False


@dataclasses.dataclass(frozen=True)
class MseSweepCalibrator(MseSweepOptions, Calibrator):
    """``amax0 * m`` minimising the squared error per amax entry (ModelOpt's ``MseCalibrator``, :mod:`jq.calib.mse`)."""

    name: ClassVar[str] = "mse_sweep"
    passes: ClassVar[int] = 2

    def __post_init__(self):
        _float_option(self.name, "start_multiplier", self.start_multiplier, 0.0, 1e6)
        _float_option(self.name, "stop_multiplier", self.stop_multiplier, self.start_multiplier, 1e6, low_open=False)
        _float_option(self.name, "step_size", self.step_size, 0.0, 1e6)
        if (self.stop_multiplier - self.start_multiplier) / self.step_size > 10_000:
            raise ValueError(f"calibrator {self.name!r}: more than 10000 candidates; use a larger step_size")
        if not isinstance(self.fp8_scale_sweep, bool):
            raise ValueError(f"calibrator {self.name!r}: fp8_scale_sweep must be a bool, got {self.fp8_scale_sweep!r}")
        for f in ("start_multiplier", "stop_multiplier", "step_size"):
            object.__setattr__(self, f, float(getattr(self, f)))

    @property
    def multipliers(self):
        return mse.multipliers(self.start_multiplier, self.stop_multiplier, self.step_size)

    def validate(self, spec):
        if not spec.format.needs_amax(spec):
            raise ValueError(f"calibrator {self.name!r} cannot calibrate {spec.describe()}: it is dynamic (no "
                             f"calibrated amax); use 'max'")
        if self.fp8_scale_sweep and (mse.block_sweep_of(spec) is None or spec.format.is_dynamic(spec)):
            raise ValueError(f"calibrator {self.name!r} with fp8_scale_sweep searches static E4M3 block scales "
                             f"(NVFP4 with block_sizes type 'static'); {spec.describe()} has none")

    def observe(self, x, spec, batch=0, *, step=0, state=None):
        if step == 0:
            return Amax.of(x, spec.format.compute_amax(x, spec, batch))
        return Sum.of(mse.sweep_losses(x, spec, batch, state["amax"], self.multipliers))

    def amax(self, stat, spec, *, step=0, state=None):
        if step == 0:
            return stat.value
        return mse.pick(stat.value, state["amax"], self.multipliers)

    def weight_amax(self, w, spec, batch=0):
        best = mse.block_sweep(w, spec, batch)
        return mse.sweep_amax(w, spec, batch, self.multipliers) if best is None else best


CALIBRATORS: dict[str, Calibrator] = {
    "max": MaxCalibrator(),
    "histogram": HistogramCalibrator(),
    "percentile": HistogramCalibrator("percentile"),
    "entropy": HistogramCalibrator("entropy"),
    "mse": HistogramCalibrator("mse"),
    "mse_sweep": MseSweepCalibrator(),
}


def names() -> list[str]:
    return list(CALIBRATORS)


def parse(value: Any) -> Calibrator:
    """The calibrator of a spec's ``calibrator`` field: a name, ``{"method": name, **options}`` or an object.

    Raises:
      ValueError: an unknown name or option, or a bad option value (naming the valid ones).
    """
    if isinstance(value, Calibrator):
        return value
    if isinstance(value, str):
        options, method = {}, value
    elif isinstance(value, dict) or (hasattr(value, "keys") and hasattr(value, "items")):
        options = dict(value)
        method = options.pop("method", None)
        if not isinstance(method, str):
            raise ValueError(f"a calibrator dict needs a 'method' name (one of {names()}), got {dict(value)!r}")
    else:
        raise ValueError(f"calibrator must be one of {names()} or a dict {{'method': ..., **options}}, got {value!r}")
    base = CALIBRATORS.get(method)
    if base is None:
        raise ValueError(f"calibrator must be one of {names()}, got {method!r}")
    allowed = list(base.options())
    for k in options:
        if k not in allowed:
            raise ValueError(f"calibrator {method!r} has no option {k!r}; its options: {allowed}")
    return dataclasses.replace(base, **options) if options else base


def check(value) -> None:
    """``ValueError`` listing the supported calibrators unless ``value`` is one (see :func:`parse`)."""
    parse(value)


def get(value) -> Calibrator:
    """The calibrator named (or described) by ``value``."""
    return parse(value)


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which calibrator each quantizer uses in one calibration (the algorithm's choice, per quantizer).

    A spec's explicit calibrator wins; a ``"histogram"`` calibrator takes ``histogram_method``; the
    quantizers left at ``"max"`` (the default) take ``activations`` / ``weights`` where those support them.
    """

    activations: Calibrator | None = None
    weights: Calibrator | None = None
    histogram_method: str = "entropy"

    def __call__(self, spec, is_weight: bool = False) -> Calibrator:
        cal = spec.calibrator
        if isinstance(cal, HistogramCalibrator) and cal.method is None:
            return dataclasses.replace(cal, method=self.histogram_method)
        override = self.weights if is_weight else self.activations
        if override is not None and isinstance(cal, MaxCalibrator) and override.supports(spec):
            return override
        return cal
