"""Which quantizer specs have an ONNX form, and what that form is.

An enabled :class:`~jq.config.QuantizerSpec` maps to one :class:`QDQFormat`:

=============================  ==================  ===================================  ==========
jq spec                        ONNX element type    granularity                          min opset
=============================  ==================  ===================================  ==========
int8 / uint8, static           INT8 / UINT8         per tensor, per axis, blocks         13 (21)
int4 / uint4, static           INT4 / UINT4         per tensor, per axis, blocks         21
fp8 e4m3 / e5m2, static        FLOAT8E4M3FN / E5M2  per tensor, per axis, blocks         19 (21)
nvfp4 (E2M1, E4M3 scales)      FLOAT4E2M1           1D blocks of 16 (2D 16x16 weights)   23
=============================  ==================  ===================================  ==========

(Blocked Q/DQ needs opset 21.) Dynamic INT/FP8 scaling (per token), the MX formats and Hadamard rotation
have no standard Q/DQ form: :func:`resolve_format` raises ``ValueError`` naming the quantizer and the
formats listed here.

Example:
  >>> from jq.config import QuantizerSpec
  >>> resolve_format("fc1.weight_quantizer", QuantizerSpec(num_bits=8, axis=0)).granularity
  'axis'
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from jq.config import QuantizerSpec

__all__ = ["QDQFormat", "SUPPORTED_FORMATS", "resolve_format", "spec_stages", "min_opset_for"]

SUPPORTED_FORMATS = (
    "INT8/UINT8 (per tensor, per channel, blocks; opset >= 13, blocks >= 21)",
    "INT4/UINT4 (per tensor, per channel, blocks; opset >= 21)",
    "FP8 E4M3/E5M2 (per tensor, per channel, blocks; opset >= 19)",
    "NVFP4 (E2M1 with E4M3 scales in blocks of 16 along the last axis, 2D 16x16 for weights; opset >= 23)",
)

_INT_TYPES = {(8, False): ir.DataType.INT8, (8, True): ir.DataType.UINT8,
              (4, False): ir.DataType.INT4, (4, True): ir.DataType.UINT4}
_FP8_TYPES = {"e4m3": ir.DataType.FLOAT8E4M3FN, "e5m2": ir.DataType.FLOAT8E5M2}


@dataclasses.dataclass(frozen=True)
class QDQFormat:
    """The ONNX form of one quantizer.

    Attributes:
      kind: ``"int"``, ``"fp8"`` or ``"nvfp4"`` (the spec's kind).
      element_type: the ONNX type of the quantized tensor (``INT8``, ``FLOAT8E4M3FN``, ``FLOAT4E2M1`` ...).
      granularity: ``"tensor"``, ``"axis"`` or ``"block"``.
      min_opset: the smallest default-domain opset that has this form.
      block_size: elements per block along the ONNX block axis (``"block"`` only).
      qmax: the largest quantized magnitude (127, 7, 448, 57344, 6); ``maxb`` of the INT rule.
    """

    kind: str
    element_type: ir.DataType
    granularity: str
    min_opset: int
    block_size: int | None = None
    qmax: float = 0.0


def spec_stages(spec) -> tuple[QuantizerSpec, ...]:
    """The enabled stages of a spec (a sequential quantizer has several; a disabled one none).

    Example:
      >>> spec_stages(QuantizerSpec(num_bits=8, enable=False))
      ()
    """
    if spec is None:
        return ()
    stages = spec if isinstance(spec, tuple) else (spec,)
    return tuple(s for s in stages if s.enable)


def _unsupported(name: str, spec: QuantizerSpec, why: str) -> ValueError:
    return ValueError(f"quantizer {name!r} ({spec.describe()}) cannot be exported to ONNX: {why}. "
                      f"Supported formats: {'; '.join(SUPPORTED_FORMATS)}. Disable it with "
                      f"jq.disable_quantizer(qm, {name!r}) to export it unquantized.")


def resolve_format(name: str, spec: QuantizerSpec, *, is_weight: bool = False) -> QDQFormat:
    """The :class:`QDQFormat` of quantizer ``name``; ``ValueError`` (naming it) when it has none.

    Args:
      name: the quantizer name, for error messages.
      spec: one enabled stage of its spec.
      is_weight: whether the quantizer acts on a weight (2D NVFP4 blocks and ``narrow_range`` are exported
        for weights only: a weight never exceeds its amax, so ONNX's ``[-128, 127]`` clamp equals jq's
        ``[-127, 127]`` there).
    """
    kind = spec.kind
    if spec.rotate:
        raise _unsupported(name, spec, "Hadamard rotation (rotate=True) has no Q/DQ form")
    if kind in ("mxfp8", "mxfp4", "mxint8"):
        raise _unsupported(name, spec, "MX block scaling (E8M0 scales) has no TensorRT Q/DQ form in jq yet")
    if kind == "nvfp4":
        two_d = len(spec.block_sizes.sizes) == 2
        if two_d and not is_weight:
            raise _unsupported(name, spec, "2D 16x16 NVFP4 blocks are supported for weights only")
        return QDQFormat("nvfp4", ir.DataType.FLOAT4E2M1, "block", 23, 16, 6.0)
    if spec.is_dynamic:
        raise _unsupported(name, spec, "dynamic (per-call) INT/FP8 scales are not build-time constants")
    if kind == "int":
        key = (spec.num_bits, spec.unsigned)
        if key not in _INT_TYPES:
            raise _unsupported(name, spec, f"{spec.num_bits}-bit integers have no ONNX type (4 and 8 do)")
        if spec.narrow_range and not is_weight:
            raise _unsupported(name, spec, "narrow_range activations clamp to -127 where ONNX clamps to -128")
        elem = _INT_TYPES[key]
        qmax = 2.0 ** (spec.num_bits - 1 + int(spec.unsigned)) - 1.0
        base = 21 if spec.num_bits == 4 else 13
    else:
        elem = _FP8_TYPES[spec.fp8_name]
        qmax = 448.0 if spec.fp8_name == "e4m3" else 57344.0
        base = 19
    if spec.block_sizes is not None:
        sizes = [s for _, s in spec.block_sizes.sizes]
        if any(s is None for s in sizes):
            raise _unsupported(name, spec, "whole-axis blocks are per-token scaling, which is dynamic")
        return QDQFormat(kind, elem, "block", max(base, 21), int(sizes[-1]), qmax)
    if spec.axis is not None:
        axes = (spec.axis,) if isinstance(spec.axis, int) else tuple(spec.axis)
        if len(axes) != 1:
            raise _unsupported(name, spec, f"ONNX per-axis scales keep one axis, got axis={spec.axis}")
        return QDQFormat(kind, elem, "axis", base, None, qmax)
    return QDQFormat(kind, elem, "tensor", base, None, qmax)


def min_opset_for(formats) -> int:
    """The smallest opset that has every format in ``formats`` (13 when there is none)."""
    return max([13] + [f.min_opset for f in formats])
