"""Handlers: what the evaluator (:mod:`jq.transform`) does at sites and quantizers (:mod:`jq.handlers.base`).

:class:`FakeQuant` (:mod:`jq.handlers.apply`) is the quantized model; the calibration, export and deployment
handlers live with their features (:mod:`jq.calib.collect`, :mod:`jq.export.onnx`, :mod:`jq.deploy`).
"""

from jq.handlers.apply import FakeQuant, stage_amax_key
from jq.handlers.base import Handler, QuantizerCall, Scope, SiteCall, bind

__all__ = ["Handler", "SiteCall", "QuantizerCall", "Scope", "bind", "FakeQuant", "stage_amax_key"]
