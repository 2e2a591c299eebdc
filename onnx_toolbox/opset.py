"""Opset bookkeeping: the IR version that goes with an opset, and TensorRT's ``trt`` domain import.

An ONNX file declares an ``ir_version`` and one opset per domain. Writers such as jax2onnx always write
``ir_version=10``, but opset 23 (FP4 / blocked FP8) needs IR 11 and older consumers reject an IR newer
than their opset needs; TensorRT's custom ops (``trt::TRT_FP4DynamicQuantize``) need a ``trt`` opset import.

Example:
  >>> ir_version_for_opset(21)
  10
  >>> FixIrVersionPass()(model); TrtDomainPass()(model)
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

__all__ = ["TRT_DOMAIN", "ir_version_for_opset", "default_opset", "set_trt_domain", "FixIrVersionPass",
           "TrtDomainPass"]

#: the domain of TensorRT's ONNX custom ops (``TRT_FP4DynamicQuantize``, ...), imported at version 1
TRT_DOMAIN = "trt"


def ir_version_for_opset(opset: int) -> int:
    """The IR version that introduced default-domain ``opset`` (13 -> 7, 17 -> 8, 19 -> 9, 21 -> 10, 23 -> 11)."""
    return onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)])


def default_opset(model: ir.Model) -> int | None:
    """The model's default-domain (``""`` or ``"ai.onnx"``) opset version, None when it imports none."""
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx"))


def set_trt_domain(model: ir.Model) -> bool:
    """Import the ``trt`` domain (version 1) when a node uses it, drop the import when none does.

    Returns whether the imports changed.
    """
    used = any(n.domain == TRT_DOMAIN for n in ir.traversal.RecursiveGraphIterator(model.graph))
    has = TRT_DOMAIN in model.opset_imports
    if used and not has:
        model.opset_imports[TRT_DOMAIN] = 1
    elif has and not used:
        del model.opset_imports[TRT_DOMAIN]
    return used != has


class FixIrVersionPass(ir.passes.InPlacePass):
    """Set ``ir_version`` to :func:`ir_version_for_opset` of the model's default-domain opset."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = default_opset(model)
        if opset is None:
            return ir.passes.PassResult(model, False)
        want = ir_version_for_opset(opset)
        modified = model.ir_version != want
        model.ir_version = want
        return ir.passes.PassResult(model, modified)


class TrtDomainPass(ir.passes.InPlacePass):
    """:func:`set_trt_domain` as a pass."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, set_trt_domain(model))
