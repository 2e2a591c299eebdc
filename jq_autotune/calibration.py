"""Activation scales for the Q/DQ nodes: from calibration data, a jq scales file, or a default.

* ``--calibration-data data.npz``: input samples. Each key is a model input name with
  the samples stacked on a new leading axis (``x: [N, 1, 3, 224, 224]``), or, for
  samples of different shapes, ``<input>__<k>`` per sample ``k`` (``input_ids__0``,
  ``input_ids__1``, ...). ONNX Runtime's MinMax calibrator runs them through the FP32
  model and returns each tensor's range.
* ``--calibration-data scales.yaml`` (or ``.json``): ranges exported by jq,
  ``{tensors: {name: {amax: a} | {min: lo, max: hi} | {scale: s, zero_point: z}}}``.
* Neither: every activation gets ``default_q_scale``/``default_q_zero_point`` (0.1 / 0).
  Such a model is useful for **latency only**; its outputs are not meaningful.

Ranges become parameters per the placement rules: asymmetric uint8 for ONNX Runtime
(``scale = (max - min) / 255`` with 0 inside the range), symmetric int8
(``amax / 127``) for TensorRT, ``amax / 448`` for FP8.

Example::

    >>> samples = load_calibration_inputs("calib.npz")            # doctest: +SKIP
    >>> ranges = calibrate_ranges("model.onnx", samples)           # doctest: +SKIP
    >>> params = params_from_ranges(ranges, placement_rules("ort", "int8"))   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from .qdq import QuantParams
from .rules import PlacementRules

LATENCY_ONLY_WARNING = (
    "NO CALIBRATION DATA: every Q/DQ uses the default scale {scale} and zero point {zp}. "
    "The optimized model is for LATENCY MEASUREMENT ONLY - its outputs are NOT accurate. "
    "Pass --calibration-data (an .npz of inputs, or a jq scales file) for a usable model."
)


def load_calibration_inputs(path: str | os.PathLike) -> list[dict[str, np.ndarray]]:
    """Samples (one feed dict each) from an ``.npz`` file (see module docstring).

    Raises:
        ValueError: the file is missing, empty or mixes inconsistent sample counts.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"calibration data not found: {path}")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if not arrays:
        raise ValueError(f"calibration data {path} holds no arrays")
    per_sample: dict[int, dict[str, np.ndarray]] = {}
    stacked: dict[str, np.ndarray] = {}
    for key, arr in arrays.items():
        m = re.fullmatch(r"(.+)__(\d+)", key)
        if m:
            per_sample.setdefault(int(m.group(2)), {})[m.group(1)] = arr
        else:
            stacked[key] = arr
    if per_sample and stacked:
        raise ValueError(f"calibration data {path}: use either stacked arrays or <input>__<k> keys, not both")
    if per_sample:
        return [per_sample[k] for k in sorted(per_sample)]
    counts = {k: v.shape[0] for k, v in stacked.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"calibration data {path}: inputs have different sample counts {counts}")
    n = next(iter(counts.values()))
    return [{k: v[i] for k, v in stacked.items()} for i in range(n)]


def calibrate_ranges(model_path: str | os.PathLike, samples: Sequence[dict[str, np.ndarray]], providers: Sequence[str] = ("CPUExecutionProvider",)) -> dict[str, tuple[float, float]]:
    """``{tensor: (min, max)}`` for every float tensor, by ONNX Runtime's MinMax calibrator."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(samples)

        def get_next(self):
            return next(self._it, None)

    with tempfile.TemporaryDirectory() as tmp:
        calibrator = create_calibrator(
            str(model_path),
            None,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=True,
            providers=list(providers),
        )
        calibrator.collect_data(_Reader())
        data = calibrator.compute_data()
    ranges: dict[str, tuple[float, float]] = {}
    for name in data:
        lo, hi = data[name].range_value
        ranges[name] = (float(np.min(lo)), float(np.max(hi)))
    return ranges


def load_scales_file(path: str | os.PathLike) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[float, int]]]:
    """Read a jq scales file: returns ``(ranges, explicit (scale, zero_point))``.

    Raises:
        ValueError: the file is missing or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"scales file not found: {path}")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"scales file {path} cannot be parsed: {e}") from e
    tensors = data.get("tensors") if isinstance(data, dict) else None
    if not isinstance(tensors, dict):
        raise ValueError(f"scales file {path}: expected a mapping 'tensors: {{name: {{amax: ...}}}}'")
    ranges: dict[str, tuple[float, float]] = {}
    explicit: dict[str, tuple[float, int]] = {}
    for name, v in tensors.items():
        if not isinstance(v, dict):
            raise ValueError(f"scales file {path}: entry {name!r} must be a mapping")
        if "scale" in v:
            explicit[name] = (float(v["scale"]), int(v.get("zero_point", 0)))
        elif "amax" in v:
            a = abs(float(v["amax"]))
            ranges[name] = (-a, a)
        elif "min" in v and "max" in v:
            ranges[name] = (float(v["min"]), float(v["max"]))
        else:
            raise ValueError(f"scales file {path}: entry {name!r} needs amax, min/max or scale")
    return ranges, explicit


def scale_zero_point(lo: float, hi: float, rules: PlacementRules) -> tuple[float, int]:
    """Quantization parameters of a range under ``rules`` (always a positive scale)."""
    if rules.quant_type == "fp8":
        amax = max(abs(lo), abs(hi))
        return (amax / 448.0 if amax > 0 else 1.0), 0
    if rules.symmetric_activations:
        amax = max(abs(lo), abs(hi))
        return (amax / 127.0 if amax > 0 else 1.0), 0
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        return 1.0, 0
    scale = (hi - lo) / 255.0
    zp = int(np.clip(round(-lo / scale), 0, 255))
    return scale, zp


def params_from_ranges(ranges: dict[str, tuple[float, float]], rules: PlacementRules, explicit: dict[str, tuple[float, int]] | None = None, default_scale: float = 0.1, default_zero_point: int = 0) -> QuantParams:
    """Calibrated :class:`QuantParams` (tensors without a range use the defaults)."""
    params = QuantParams(default_scale, default_zero_point, calibrated=True)
    for name, (lo, hi) in ranges.items():
        params.scales[name], params.zero_points[name] = scale_zero_point(lo, hi, rules)
    for name, (s, z) in (explicit or {}).items():
        params.scales[name], params.zero_points[name] = s, z
    return params


def is_scales_file(path: str | os.PathLike) -> bool:
    """True for ``.yaml``/``.yml``/``.json`` (a scales file) rather than ``.npz`` (inputs)."""
    return Path(path).suffix.lower() in (".yaml", ".yml", ".json")
