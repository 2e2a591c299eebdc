"""The registered calibration algorithms, by the names configs use.

=================  ==============================================================================
name               algorithm
=================  ==============================================================================
``max``            :class:`~jq.calib.max.MaxCalibration` (every quantizer's calibrator; default)
``None``           :class:`~jq.calib.max.NoCalibration` (dynamic formats only)
``smoothquant``    :class:`~jq.calib.smoothquant.SmoothQuant` (``alpha``)
``awq_lite``       :class:`~jq.calib.awq.AWQLite` (``alpha_step``)
``percentile``     :class:`~jq.calib.amax_search.PercentileCalibration` (``percentile``, ``num_bins``)
``entropy``        :class:`~jq.calib.amax_search.EntropyCalibration` (``num_bins``, ``start_bin``, ``stride``)
``mse``            :class:`~jq.calib.amax_search.MSECalibration` (``step_size``, ``start_multiplier``,
                   ``stop_multiplier``, ``fp8_scale_sweep``, ``activations``, ``num_bins``)
``awq_clip``       :class:`~jq.calib.awq_clip.AWQClip` (``max_co_batch_size``, ``max_tokens_per_batch``,
                   ``min_clip_ratio``, ``shrink_step``)
``awq_full``       :class:`~jq.calib.awq_full.AWQFull` (``awq_lite``'s and ``awq_clip``'s options)
``gptq``           :class:`~jq.calib.gptq.GPTQ` (``perc_damp``, ``block_size``, ``act_order``, ``sequential``)
``svdquant``       :class:`~jq.calib.svdquant.SVDQuant` (``lowrank``, ``smooth``, ``alpha_step``)
=================  ==============================================================================

A config's ``algorithm`` (``"smoothquant"`` or ``{"method": "smoothquant", "alpha": 0.5}``, on a command line
``smoothquant,alpha=0.5``: :func:`algorithm_from_text`) becomes an algorithm object with :func:`make`; an unknown
name or option is a ``ValueError`` listing the valid ones.
Adding an algorithm: one module with an :class:`~jq.calib.base.Algorithm` dataclass, one line here.

Example:
  >>> make({"method": "smoothquant", "alpha": 0.5})
  SmoothQuant(alpha=0.5, formats=('int',))
"""

from __future__ import annotations

import dataclasses

from jq.calib.amax_search import EntropyCalibration, MSECalibration, PercentileCalibration
from jq.calib.awq import AWQLite
from jq.calib.awq_clip import AWQClip
from jq.calib.awq_full import AWQFull
from jq.calib.base import Algorithm
from jq.calib.gptq import GPTQ
from jq.calib.max import MaxCalibration, NoCalibration
from jq.calib.smoothquant import SmoothQuant
from jq.calib.svdquant import SVDQuant
from jq.config import Algorithm as AlgorithmConfig
from jq.config import did_you_mean

__all__ = ["ALGORITHMS", "make", "names", "algorithm_from_text", "parse_value"]

ALGORITHMS: dict = {cls.name: cls for cls in (MaxCalibration, NoCalibration, SmoothQuant, AWQLite,
                                              PercentileCalibration, EntropyCalibration, MSECalibration,
                                              AWQClip, AWQFull, GPTQ, SVDQuant)}


def names() -> list[str]:
    """The algorithm names, ``None`` last."""
    return sorted(n for n in ALGORITHMS if n is not None) + ["None"]


def make(algorithm) -> Algorithm:
    """The algorithm object for a config's ``algorithm`` (a name, a ``{"method": ...}`` dict, an
    :class:`~jq.config.Algorithm` or an algorithm object)."""
    if isinstance(algorithm, Algorithm):
        return algorithm
    cfg = AlgorithmConfig.parse(algorithm)
    cls = ALGORITHMS.get(cfg.method)
    if cls is None:
        raise ValueError(f"unknown calibration algorithm {cfg.method!r}{did_you_mean(cfg.method, names())}; "
                         f"jq implements: {names()}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in cfg.kwargs:
        if k not in fields:
            raise ValueError(f"algorithm {cfg.method!r} has no option {k!r}{did_you_mean(k, list(fields))}; "
                             f"its options: {list(fields)}")
    return cls(**{k: _as_field_type(fields[k], v) for k, v in cfg.kwargs.items()})


def _as_field_type(field, value):
    """A tuple option given as one value or a list (a command line's ``formats=fp8``, a JSON list) becomes a
    tuple: ``"fp8"`` -> ``("fp8",)``, not the string, whose ``in`` would match substrings (``"fp8" in "mxfp8"``)."""
    if field.type not in ("tuple", tuple) and not str(field.type).startswith("tuple["):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


def parse_value(text: str):
    """``true``/``false`` -> bool, ``128`` -> int, ``0.5`` -> float, else the string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def algorithm_from_text(text: str) -> str | dict:
    """An algorithm written on a command line: ``NAME[,key=value,...]`` (values by :func:`parse_value`).

    Example:
      >>> algorithm_from_text("gptq,act_order=true,perc_damp=0.1")
      {'method': 'gptq', 'act_order': True, 'perc_damp': 0.1}
    """
    method, *fields = text.split(",")
    options = {}
    for field in fields:
        key, eq, value = field.partition("=")
        if not eq or not key:
            raise ValueError(f"algorithm {text!r}: option {field!r} is not key=value")
        options[key] = parse_value(value)
    return {"method": method, **options} if options else method
