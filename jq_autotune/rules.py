"""Backend-aware placement rules: what a Q/DQ looks like and where it may go.

ONNX Runtime (CPU) and TensorRT reward different Q/DQ graphs:

* **ONNX Runtime** fuses ``DQ(x), DQ(w) -> Conv/MatMul/Gemm -> Q`` into
  QLinearConv/QLinearMatMul/QGemm only when the *output* Q is present, prefers *uint8*
  (asymmetric) activations on x86, wants the bias of Conv/Gemm as an int32 DQ, and
  refuses QGemm when a Gemm carries a float ``C`` (so the zero ``C`` some exporters
  emit is removed: the "cleaned" Gemm form). Leaf regions therefore also offer their
  own outputs as insertion points (the output Q after Conv/MatMul/Gemm).
* **TensorRT** wants symmetric *int8* Q/DQ (zero point 0) on the *inputs* of
  Conv/MatMul/Gemm and on weights, float biases, and no Q/DQ on outputs of a region
  (the next region's input Q/DQ covers them).

Example::

    >>> r = placement_rules("ort", "int8")
    >>> r.activation_type == onnx.TensorProto.UINT8, r.region_output_points
    (True, True)
    >>> placement_rules("tensorrt", "int8").symmetric_activations
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto

from .host_cpu import u8s8_saturates

BACKENDS = ("ort", "tensorrt", "trtexec")

#: ops whose constant inputs are quantized (per output channel) when their data input is
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})

#: ops that only move or reinterpret data: a Q/DQ in front of them buys nothing
COPY_OPS = frozenset(
    {
        "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Cast", "CastLike", "Identity",
        "Shape", "Size", "Pad", "Clip", "Slice", "Expand", "Tile", "Gather", "Split", "Concat",
        "DepthToSpace", "SpaceToDepth", "Dropout", "ConstantOfShape", "NonZero", "Range",
        "QuantizeLinear", "DequantizeLinear",
    }
)

#: producer -> consumer edges inside fusible chains (Conv -> BN -> ReLU); splitting them
#: with a Q/DQ breaks the fusion on every backend
FUSED_EDGES = frozenset(
    {
        ("Conv", "BatchNormalization"),
        ("ConvTranspose", "BatchNormalization"),
        ("Conv", "Relu"),
        ("ConvTranspose", "Relu"),
        ("BatchNormalization", "Relu"),
        ("Conv", "LeakyRelu"),
        ("BatchNormalization", "LeakyRelu"),
    }
)

#: tensors smaller than this are not worth a Q/DQ
MIN_ELEMENTS = 8


@dataclass(frozen=True)
class PlacementRules:
    """How Q/DQ nodes are built and which candidate points a backend gets.

    Attributes:
        backend: ``"ort"`` or ``"tensorrt"`` (trtexec uses the TensorRT rules).
        quant_type: ``"int8"`` or ``"fp8"``.
        activation_type: ONNX element type of quantized activations.
        weight_type: ONNX element type of quantized weights.
        symmetric_activations: zero point fixed at 0 (TensorRT requires it).
        per_channel_weights: one weight scale per output channel.
        int32_bias: quantize Conv/Gemm biases to int32 (ONNX Runtime's fused kernels).
        region_output_points: leaf regions offer their outputs as insertion points.
        clean_gemm: drop an all-zero ``C`` input of Gemm before tuning.
        min_opset: the default-domain opset the Q/DQ nodes need.
        weight_qmax: largest ``|q|`` of INT8 weights: 127, or 64 (7 bits, ONNX Runtime's
            ``reduce_range``) where ONNX Runtime's u8s8 kernels would saturate
            (:mod:`jq_autotune.host_cpu`).
    """

    backend: str
    quant_type: str
    activation_type: int
    weight_type: int
    symmetric_activations: bool
    per_channel_weights: bool
    int32_bias: bool
    region_output_points: bool
    clean_gemm: bool
    min_opset: int
    weight_qmax: int = 127

    @property
    def activation_qmin_qmax(self) -> tuple[float, float]:
        """Representable range of the activation type."""
        return _RANGES[self.activation_type]


_RANGES = {
    TensorProto.UINT8: (0.0, 255.0),
    TensorProto.INT8: (-128.0, 127.0),
    TensorProto.FLOAT8E4M3FN: (-448.0, 448.0),
}


def placement_rules(backend: str, quant_type: str, reduce_range: bool | None = None) -> PlacementRules:
    """Rules for a backend (``ort``/``tensorrt``/``trtexec``) and type (``int8``/``fp8``).

    ``reduce_range`` quantizes INT8 weights to 7 bits (``|q| <= 64``). ``None`` (automatic) turns it on
    for the ONNX Runtime backend on a CPU where its u8s8 kernels saturate (x86 without VNNI, see
    :mod:`jq_autotune.host_cpu`), where full-range weights make the fused kernels compute something else
    than the Q/DQ graph; TensorRT (GPU) never needs it.

    Raises:
        ValueError: unknown backend or quantization type, or ``reduce_range=True`` with FP8.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if quant_type not in ("int8", "fp8"):
        raise ValueError(f"unknown quantization type {quant_type!r}: expected int8 or fp8")
    ort = backend == "ort"
    if quant_type == "fp8" and reduce_range:
        raise ValueError("reduce_range applies to INT8 weights only (quant type fp8)")
    if quant_type == "fp8":
        return PlacementRules(
            backend="ort" if ort else "tensorrt",
            quant_type="fp8",
            activation_type=TensorProto.FLOAT8E4M3FN,
            weight_type=TensorProto.FLOAT8E4M3FN,
            symmetric_activations=True,
            per_channel_weights=False,
            int32_bias=False,
            region_output_points=ort,
            clean_gemm=ort,
            min_opset=19,
        )
    if reduce_range is None:
        reduce_range = ort and u8s8_saturates()
    return PlacementRules(
        backend="ort" if ort else "tensorrt",
        quant_type="int8",
        activation_type=TensorProto.UINT8 if ort else TensorProto.INT8,
        weight_type=TensorProto.INT8,
        symmetric_activations=not ort,
        per_channel_weights=True,
        int32_bias=ort,
        region_output_points=ort,
        clean_gemm=ort,
        min_opset=13,
        weight_qmax=64 if reduce_range else 127,  # 2 * 255 * 64 = 32640 fits int16 pair sums
    )


def elem_type_name(elem_type: int) -> str:
    """``onnx.TensorProto`` enum name, e.g. ``UINT8``."""
    return onnx.TensorProto.DataType.Name(elem_type)
