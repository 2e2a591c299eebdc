"""Which quantizer specs have an ONNX form, and what that form is.

The form comes from the spec's format (:meth:`jq.formats.Format.onnx_form`); here it gets its ONNX types:

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
from jq.formats import QDQForm, UnsupportedExport

__all__ = ["QDQFormat", "SUPPORTED_FORMATS", "resolve_format", "spec_stages", "min_opset_for"]

SUPPORTED_FORMATS = (
    "INT8/UINT8 (per tensor, per channel, blocks; opset >= 13, blocks >= 21)",
    "INT4/UINT4 (per tensor, per channel, blocks; opset >= 21)",
    "FP8 E4M3/E5M2 (per tensor, per channel, blocks; opset >= 19)",
    "NVFP4 (E2M1 with E4M3 scales in blocks of 16 along the last axis, 2D 16x16 for weights; opset >= 23)",
)


@dataclasses.dataclass(frozen=True)
class QDQFormat:
    """The ONNX form of one quantizer (:class:`jq.formats.QDQForm` with onnx-ir types).

    Attributes:
      form: the format's structural description.
      element_type: the ONNX type of the quantized tensor (``INT8``, ``FLOAT8E4M3FN``, ``FLOAT4E2M1`` ...).
      block_scale_type: the type of two-level block scales (NVFP4's ``FLOAT8E4M3FN``), else None.
    """

    form: QDQForm
    element_type: ir.DataType
    block_scale_type: ir.DataType | None = None

    @property
    def kind(self) -> str:
        return self.form.format

    @property
    def granularity(self) -> str:
        return self.form.granularity

    @property
    def min_opset(self) -> int:
        return self.form.min_opset

    @property
    def block_size(self) -> int | None:
        return self.form.block_size

    @property
    def qmax(self) -> float:
        return self.form.qmax

    @property
    def two_level(self) -> bool:
        """Block scales stored in a narrow type and dequantized by a per-tensor scale (NVFP4)."""
        return self.block_scale_type is not None

    @property
    def dynamic_quantize_op(self) -> tuple[str, str] | None:
        return self.form.dynamic_quantize_op


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
        for weights only).
    """
    if spec.rotate:
        raise _unsupported(name, spec, "Hadamard rotation (rotate=True) has no Q/DQ form")
    try:
        form = spec.format.onnx_form(spec, is_weight=is_weight)
    except UnsupportedExport as e:
        raise _unsupported(name, spec, str(e)) from None
    block_scale = None if form.block_scale_type is None else ir.DataType[form.block_scale_type]
    return QDQFormat(form, ir.DataType[form.element_type], block_scale)


def min_opset_for(formats) -> int:
    """The smallest opset that has every format in ``formats`` (13 when there is none)."""
    return max([13] + [f.min_opset for f in formats])
