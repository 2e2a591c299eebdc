"""Deployment export for jq models: ONNX Q/DQ graphs, a TensorRT lint, TensorRT engines and checkpoints.

* :func:`to_onnx` - ONNX with ``QuantizeLinear``/``DequantizeLinear`` (INT8, INT4, FP8) and TensorRT's NVFP4
  form, through jax2onnx (:mod:`jq.export.onnx`, :mod:`jq.export.qdq`, :mod:`jq.export.passes`).
* :func:`check_tensorrt` - TensorRT's explicit-quantization rules (:mod:`jq.export.lint`).
* :func:`build_engine`, :func:`time_engine` - TensorRT Python API, optional (:mod:`onnx_toolbox.tensorrt`, shared
  with ``jq_autotune``).
* :func:`save`, :func:`load` - orbax checkpoints of a :class:`~jq.QuantizedModel` (:mod:`jq.export.checkpoint`).
* :func:`to_hf_checkpoint`, :func:`read_hf_checkpoint` - ModelOpt's unified Hugging Face layout
  (:mod:`jq.export.hf_checkpoint`).
* :func:`to_serving_checkpoint`, :func:`read_serving_checkpoint` - the same layout with HF tensor names,
  ``config.json``, KV scales and shards, as vLLM / TensorRT-LLM load it (:mod:`jq.export.serving`,
  :mod:`jq.export.serving_reader`; docs/serving.md).
* :func:`layer_scales` - the per-layer scales a deployment framework loads (:mod:`jq.export.scales`).

Example:
  >>> import jq
  >>> qm = jq.quantize(params, model.apply, jq.FP8_DEFAULT_CFG, calib_data=batches)
  >>> jq.export.to_onnx(qm, (x,), "fp8.onnx")
  >>> jq.export.check_tensorrt("fp8.onnx")
  []
"""

from jq.export.checkpoint import load, save
from jq.export.formats import SUPPORTED_FORMATS, QDQFormat, resolve_format
from jq.export.hf_checkpoint import HFCheckpoint, read_hf_checkpoint, to_hf_checkpoint
from jq.export.lint import Violation, check_tensorrt, format_violations
from jq.export.onnx import ExportOptions, OnnxExport, export, export_formats, run_onnxruntime, to_onnx, to_onnx_float
from jq.export.passes import optimize
from jq.export.scales import LayerScales, export_scale, layer_scales
from jq.export.serving import to_serving_checkpoint
from jq.export.serving_reader import ServingCheckpoint, read_serving_checkpoint
from onnx_toolbox.tensorrt import BuildOptions, TimingResult, build_engine, tensorrt_available, time_engine

__all__ = [
    "SUPPORTED_FORMATS",
    "QDQFormat",
    "resolve_format",
    "ExportOptions",
    "OnnxExport",
    "export",
    "export_formats",
    "run_onnxruntime",
    "to_onnx",
    "to_onnx_float",
    "optimize",
    "Violation",
    "check_tensorrt",
    "format_violations",
    "save",
    "load",
    "to_hf_checkpoint",
    "read_hf_checkpoint",
    "HFCheckpoint",
    "to_serving_checkpoint",
    "read_serving_checkpoint",
    "ServingCheckpoint",
    "BuildOptions",
    "TimingResult",
    "build_engine",
    "time_engine",
    "tensorrt_available",
    "LayerScales",
    "export_scale",
    "layer_scales",
]
