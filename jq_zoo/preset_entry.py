"""Preset entries written on a command line: ``NAME[:ALGORITHM[,key=value,...]][+OTHER_PRESET...][~PATTERN...]``.

The experiment scripts (``examples/smollm2_perplexity.py``, ``benchmarks/calibration/smollm2_attribution.py``)
take presets in this form: ``INT8_SMOOTHQUANT:smoothquant,alpha=0.5`` replaces the preset's algorithm by
``{"method": "smoothquant", "alpha": 0.5}``; ``FP8_DEFAULT+FP8_KV`` merges a second preset in;
``FP8_DEFAULT~*layers.0.*~*layers.29.*`` appends ``{"enable": False}`` entries for those quantizer name
patterns before calibration (those layers stay in float: mixed precision, as Llama 3's FP8 recipe keeps the
first and last transformer layers unquantized).

Example:
  >>> preset_cfg("INT8_SMOOTHQUANT:smoothquant,alpha=0.5")["algorithm"]
  {'method': 'smoothquant', 'alpha': 0.5}
"""

from __future__ import annotations

import jq
from jq.calib.algorithms import algorithm_from_text, parse_value

__all__ = ["parse_value", "preset_cfg"]


def preset_cfg(entry: str) -> dict:
    """The preset dict of ``entry``: its algorithm replaced (values parsed by :func:`parse_value`), any
    ``+PRESET`` merged with :func:`jq.merge_presets`, and each ``~PATTERN`` appended to ``quant_cfg`` as
    ``{"enable": False}`` (a later entry wins, so the pattern's quantizers are off whatever the preset says)."""
    entry, *kept_float = entry.split("~")
    if any(not p for p in kept_float):
        raise ValueError(f"preset entry {entry!r}: an empty ~PATTERN")
    entry, *fragments = entry.split("+")
    name, _, algorithm = entry.partition(":")
    cfg = jq.merge_presets(jq.get_preset(name), *(jq.get_preset(f) for f in fragments))
    if algorithm:
        cfg = {**cfg, "algorithm": algorithm_from_text(algorithm)}
    if kept_float:
        cfg = {**cfg, "quant_cfg": {**cfg["quant_cfg"], **{p: {"enable": False} for p in kept_float}}}
    return cfg
