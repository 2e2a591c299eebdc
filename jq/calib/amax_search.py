"""Algorithms that pick every quantizer's calibrator: ``percentile``, ``entropy`` and ``mse``.

Each runs :func:`~jq.calib.max.max_calibrate` with a :class:`~jq.calib.calibrators.Selection`: the
quantizers left at the default ``"max"`` calibrator that can use the algorithm's calibrator take it, a
``"histogram"`` calibrator takes the algorithm's method, and any other calibrator named in the config is
kept.

* ``percentile`` (``percentile`` 99.99, ``num_bins`` 2048): activations by the histogram percentile;
  weights max (as ModelOpt's ONNX PTQ).
* ``entropy`` (``num_bins``, ``start_bin`` 128, ``stride`` 1): activations by TensorRT's KL threshold;
  weights max (ModelOpt's ONNX default for INT8/FP8).
* ``mse`` (ModelOpt's ``MseCalibConfig``: ``step_size`` 0.1, ``start_multiplier`` 0.25,
  ``stop_multiplier`` 4.0, ``fp8_scale_sweep`` False): weights by the amax sweep (per amax entry: tensor,
  channel or block); activations by ``activations``: ``"histogram"`` (histogram MSE, default), ``"sweep"``
  (the amax sweep over the data, two passes) or ``"max"`` (ModelOpt's ``mse``, which refines weights only).
  ``fp8_scale_sweep=True`` searches only NVFP4 block scales (over every E4M3 value) and leaves other weights
  at max, as ModelOpt; NVFP4 weight quantizers with dynamic blocks are switched to static blocks (a config
  entry per quantizer is appended), since the chosen block scales must be stored.

Histograms are per tensor: quantizers with per-axis, per-block or run-time scales keep max (an algorithm that
changes no quantizer of the model is a ``ValueError``).

Example:
  >>> qm = jq.calibrate(qm, batches, algorithm={"method": "percentile", "percentile": 99.9})
"""

from __future__ import annotations

import dataclasses
import glob

from jq.calib.base import Algorithm
from jq.calib.calibrators import HistogramCalibrator, MseSweepCalibrator, MseSweepOptions, Selection
from jq.calib.max import max_calibrate

__all__ = ["SelectionAlgorithm", "PercentileCalibration", "EntropyCalibration", "MSECalibration", "calibrate_with",
           "to_static_blocks"]


def _stages(spec) -> tuple:
    return spec if isinstance(spec, tuple) else (spec,)


def calibrate_with(qm, data, select: Selection, name: str):
    """``max_calibrate`` with ``select``; ``ValueError`` when no quantizer of the model can use the algorithm's
    calibrators (a config naming other calibrators for some quantizers is fine)."""
    data.trace(qm)
    if not qm.is_traced:
        raise ValueError("no calibration batch was seen and nothing was traced: give calib_data or example_args")

    def usable(s, is_weight):
        cal = select.weights if is_weight else select.activations
        return s.enable and s.format.needs_amax(s) and (
            (cal is not None and cal.supports(s)) or select(s, is_weight) != s.calibrator)

    if not any(usable(s, slot.is_weight) for n, slot in qm.traced.quantizers.items() if qm.spec(n) is not None
               for s in _stages(qm.spec(n))):
        raise ValueError(f"calibration algorithm {name!r} applies to no quantizer of this model: its calibrators "
                         f"need static amaxes (histograms: per tensor, the E4M3 block-scale search: static NVFP4 "
                         f"blocks); use algorithm 'max'")
    return qm.replace(qstate=max_calibrate(qm, data, select=select))


def to_static_blocks(qm):
    """``qm`` with every weight quantizer whose format can search static block scales (NVFP4) switched to its
    static-block variant (one config entry per quantizer, appended)."""
    entries = []
    for name, slot in qm.traced.quantizers.items():
        spec = qm.spec(name)
        if not slot.is_weight or spec is None or isinstance(spec, tuple):
            continue
        variant = getattr(spec.format, "static_variant", None)
        if variant is not None and spec.format.is_dynamic(spec) and spec.format.needs_amax(spec):
            entries.append((glob.escape(name), variant(spec)))
    return qm.replace(config=qm.config.with_entries(*entries)) if entries else qm


class SelectionAlgorithm(Algorithm):
    """Base of the algorithms that pick each quantizer's calibrator: ``max_calibrate`` with the subclass's
    :meth:`selection` (:func:`calibrate_with`); building the selection validates the options, so it runs once at
    construction."""

    def __post_init__(self):
        self.selection()  # validates the options

    def selection(self) -> Selection:
        raise NotImplementedError

    def calibrate(self, qm, data):
        return calibrate_with(qm, data, self.selection(), self.name)


@dataclasses.dataclass(frozen=True)
class PercentileCalibration(SelectionAlgorithm):
    """Activations at the ``percentile`` of a ``num_bins``-bin histogram of ``|x|``; weights max."""

    percentile: float = 99.99
    num_bins: int = 2048
    name = "percentile"
    needs_data = True

    def selection(self) -> Selection:
        return Selection(activations=HistogramCalibrator("percentile", self.num_bins, self.percentile),
                         histogram_method="percentile")


@dataclasses.dataclass(frozen=True)
class EntropyCalibration(SelectionAlgorithm):
    """Activations at TensorRT's KL-divergence threshold of a histogram of ``|x|``; weights max."""

    num_bins: int = 2048
    start_bin: int = 128
    stride: int = 1
    name = "entropy"
    needs_data = True

    def selection(self) -> Selection:
        return Selection(activations=HistogramCalibrator("entropy", self.num_bins, start_bin=self.start_bin,
                                                         stride=self.stride), histogram_method="entropy")


@dataclasses.dataclass(frozen=True)
class MSECalibration(MseSweepOptions, SelectionAlgorithm):
    """Weights by the MSE amax sweep (ModelOpt's ``mse``); activations by ``activations``."""

    activations: str = "histogram"
    num_bins: int = 2048
    name = "mse"

    def __post_init__(self):
        if self.activations not in ("histogram", "sweep", "max"):
            raise ValueError(f"algorithm 'mse': activations must be 'histogram', 'sweep' or 'max', "
                             f"got {self.activations!r}")
        super().__post_init__()

    def selection(self) -> Selection:
        sweep = MseSweepCalibrator(self.start_multiplier, self.stop_multiplier, self.step_size)
        acts = {"histogram": HistogramCalibrator("mse", self.num_bins), "sweep": sweep, "max": None}[self.activations]
        return Selection(activations=acts, weights=dataclasses.replace(sweep, fp8_scale_sweep=self.fp8_scale_sweep),
                         histogram_method="mse")

    @property
    def passes(self) -> int:  # type: ignore[override]
        return 2 if self.activations == "sweep" else 1

    def calibrate(self, qm, data):
        if self.fp8_scale_sweep:
            data.trace(qm)
            qm = to_static_blocks(qm)
        return super().calibrate(qm, data)
