"""A lint for TensorRT's explicit-quantization rules (TensorRT 10/11, strongly typed networks).

:func:`check_tensorrt` walks every ``QuantizeLinear``, ``DequantizeLinear`` and ``trt::TRT_FP4DynamicQuantize``
node and reports each broken rule with the node's name:

=================  ==========================================================================================
rule               what TensorRT requires
=================  ==========================================================================================
``opset``          Q/DQ needs opset >= 13; FP8 types >= 19; INT4/UINT4 and ``block_size`` >= 21; FLOAT4E2M1 >= 23
``ir-version``     ``ir_version`` at least the one that introduced the opset (opset 23 -> IR 11)
``trt-domain``     ``trt::`` nodes need a ``trt`` opset import
``constant-scale`` scales and zero points are build-time constants (initializers, ``Constant`` nodes, or a
                   ``DequantizeLinear`` of constants: NVFP4's double quantization); the NVFP4 activation scale may
                   come from ``TRT_FP4DynamicQuantize``
``positive-scale`` every scale is finite and > 0
``zero-point``     INT8/INT4 zero points are 0 (UINT8 is accepted with a warning: TensorRT treats it as INT8)
``type``           quantized types INT8, UINT8 (warning), INT4, FLOAT8E4M3FN, FLOAT4E2M1; high-precision
                   types FLOAT, FLOAT16, BFLOAT16
``per-axis``       a 1-D scale has the length of the quantized axis
``block``          blocked scales have the input's rank and block exactly one axis, the last or second to last,
                   of a 2-D or 3-D tensor, with ``ceil(n / block_size)`` blocks
``even``           INT4/UINT4/FP4 tensors have an even element count
``fp4``            FP4 blocks are 16 elements; ``TRT_FP4DynamicQuantize`` has ``block_size=16``,
                   ``scale_type=FLOAT8E4M3FN``, a constant positive global scale, a 2-D/3-D input whose blocked
                   (last or second to last) axis is static and a multiple of 16
=================  ==========================================================================================

Example:
  >>> for v in check_tensorrt("model.onnx"):
  ...     print(v)
  error [zero-point] fc1.input_quantizer/QuantizeLinear: zero point must be 0, got values in [3, 3]
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import onnx
import onnx_ir as ir

from jq.export.passes import ir_version_for_opset

__all__ = ["Violation", "check_tensorrt", "format_violations"]

_T = ir.DataType
_QUANT_OK = {_T.INT8, _T.INT4, _T.FLOAT8E4M3FN, _T.FLOAT4E2M1}
_QUANT_WARN = {_T.UINT8}
_HIGH = {_T.FLOAT, _T.FLOAT16, _T.BFLOAT16}
_FOUR_BIT = {_T.INT4, _T.UINT4, _T.FLOAT4E2M1}
_MIN_OPSET = {_T.FLOAT8E4M3FN: 19, _T.FLOAT8E4M3FNUZ: 19, _T.FLOAT8E5M2: 19, _T.FLOAT8E5M2FNUZ: 19,
              _T.INT4: 21, _T.UINT4: 21, _T.FLOAT4E2M1: 23}


@dataclasses.dataclass(frozen=True)
class Violation:
    """One broken rule: the node's name and type, the rule id, a message, and ``"error"`` or ``"warning"``."""

    node: str
    op_type: str
    rule: str
    message: str
    severity: str = "error"

    def __str__(self):
        return f"{self.severity} [{self.rule}] {self.node} ({self.op_type}): {self.message}"


def format_violations(violations) -> str:
    """One line per violation (``"no violations"`` when empty)."""
    return "\n".join(str(v) for v in violations) if violations else "no violations"


def _load(model) -> ir.Model:
    if isinstance(model, ir.Model):
        return model
    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(os.fspath(model))
    if isinstance(model, onnx.ModelProto):
        return ir.serde.deserialize_model(model)
    raise TypeError(f"expected an onnx.ModelProto, onnx_ir.Model or a path, got {type(model).__name__}")


def _const(v: ir.Value | None):
    if v is None:
        return None
    if v.const_value is not None:
        return v.const_value.numpy()
    p = v.producer()
    if p is not None and p.op_type == "Constant" and "value" in p.attributes:
        return p.attributes["value"].value.numpy()
    return None


def _attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    return default if a is None else a.value


class _Checker:
    def __init__(self, model: ir.Model):
        self.model = model
        self.opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        self.out: list[Violation] = []

    def add(self, node, rule, message, severity="error"):
        self.out.append(Violation(node.name or f"<unnamed {node.op_type}>", node.op_type, rule, message, severity))

    # -- model-level -----------------------------------------------------------------------------------
    def run(self) -> list[Violation]:
        m = self.model
        if self.opset:
            want = ir_version_for_opset(self.opset)
            if m.ir_version < want:
                self.out.append(Violation("<model>", "Model", "ir-version",
                                          f"opset {self.opset} needs ir_version >= {want}, got {m.ir_version}"))
        for node in ir.traversal.RecursiveGraphIterator(m.graph):
            if node.domain == "trt" and "trt" not in m.opset_imports:
                self.add(node, "trt-domain", "the model has no 'trt' opset import")
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.domain in ("", "ai.onnx"):
                self.qdq(node)
            elif node.op_type == "TRT_FP4DynamicQuantize":
                self.fp4_dynamic(node)
        return self.out

    # -- Q / DQ ----------------------------------------------------------------------------------------
    def _quant_type(self, node) -> ir.DataType | None:
        zp = node.inputs[2] if len(node.inputs) > 2 else None
        if node.op_type == "DequantizeLinear":
            if node.inputs[0].dtype is not None:
                return node.inputs[0].dtype
            if zp is not None and zp.dtype is not None:
                return zp.dtype
            src = node.inputs[0].producer()
            return self._quant_type(src) if src is not None and src.op_type == "QuantizeLinear" else None
        if zp is not None and zp.dtype is not None:
            return zp.dtype
        out_attr = _attr(node, "output_dtype")
        if out_attr:
            return ir.DataType(out_attr)
        return node.outputs[0].dtype or _T.UINT8

    def _scale_is_constant(self, node, scale_v) -> bool:
        if _const(scale_v) is not None:
            return True
        p = scale_v.producer()
        if p is not None and p.op_type == "DequantizeLinear":
            src = p.inputs[0].producer()
            dynamic_fp4 = src is not None and src.op_type == "TRT_FP4DynamicQuantize"
            return (dynamic_fp4 or _const(p.inputs[0]) is not None) and _const(p.inputs[1]) is not None
        return False

    def qdq(self, node):
        if self.opset and self.opset < 13:
            self.add(node, "opset", f"Q/DQ with per-axis scales needs opset >= 13, the model has {self.opset}")
        x, scale_v = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
        zp_v = node.inputs[2] if len(node.inputs) > 2 else None
        qtype = self._quant_type(node)
        block = int(_attr(node, "block_size", 0) or 0)
        if block and self.opset and self.opset < 21:
            self.add(node, "opset", f"blocked Q/DQ (block_size) needs opset >= 21, the model has {self.opset}")
        if qtype is not None and self.opset and self.opset < _MIN_OPSET.get(qtype, 0):
            self.add(node, "opset", f"{qtype.name} needs opset >= {_MIN_OPSET[qtype]}, the model has {self.opset}")
        if qtype in _QUANT_WARN:
            self.add(node, "type", "UINT8 is treated as INT8 by TensorRT", "warning")
        elif qtype is not None and qtype not in _QUANT_OK:
            self.add(node, "type", f"quantized type {qtype.name} is not supported; use INT8, INT4, FLOAT8E4M3FN "
                                   f"or FLOAT4E2M1")
        high = x.dtype if node.op_type == "QuantizeLinear" else (scale_v.dtype if scale_v is not None else None)
        if high is not None and high not in _HIGH:
            self.add(node, "type", f"high-precision type {high.name} is not FLOAT, FLOAT16 or BFLOAT16")
        if scale_v is None:
            self.add(node, "constant-scale", "missing scale")
            return
        scale = _const(scale_v)
        if not self._scale_is_constant(node, scale_v):
            self.add(node, "constant-scale", f"scale {scale_v.name!r} is not a build-time constant")
        elif scale is not None:
            s = scale.astype(np.float64)
            if not np.all(np.isfinite(s)) or not np.all(s > 0):
                bad = s[~(np.isfinite(s) & (s > 0))]
                self.add(node, "positive-scale", f"scales must be finite and > 0; {bad.size} are not "
                                                 f"(e.g. {bad.reshape(-1)[0]!r})")
        if zp_v is not None:
            zp = _const(zp_v)
            if zp is None:
                self.add(node, "constant-scale", f"zero point {zp_v.name!r} is not a build-time constant")
            elif qtype in (_T.INT8, _T.UINT8, _T.INT4, _T.UINT4) and np.any(zp.astype(np.int64) != 0):
                z = zp.astype(np.int64)
                self.add(node, "zero-point", f"zero point must be 0, got values in [{z.min()}, {z.max()}]")
            elif zp is not None and np.shape(zp) != np.shape(scale if scale is not None else zp):
                self.add(node, "zero-point", f"zero point shape {np.shape(zp)} differs from the scale's")
        self._granularity(node, x, scale_v, scale, block, qtype)
        if qtype in _FOUR_BIT:
            self._even(node, x)
            if qtype == _T.FLOAT4E2M1 and block != 16:
                self.add(node, "fp4", f"FP4 blocks must be 16 elements, got block_size={block or None}")

    def _granularity(self, node, x, scale_v, scale, block, qtype):
        shape = x.shape
        rank = len(shape) if shape is not None else None
        sshape = tuple(scale.shape) if scale is not None else (
            tuple(scale_v.shape) if scale_v.shape is not None else None)
        if sshape is None:
            return
        axis = int(_attr(node, "axis", 1))
        if block:
            if rank is None:
                return
            if len(sshape) != rank:
                self.add(node, "block", f"blocked scale has rank {len(sshape)}, the input has rank {rank}")
                return
            a = axis % rank
            differ = [i for i in range(rank) if _dim(shape[i]) != sshape[i]]
            if len(differ) > 1 or (differ and differ != [a]):
                self.add(node, "block", f"scale {sshape} blocks axes {differ} of input {tuple(shape)}; exactly one "
                                        f"axis (axis={axis}) may be blocked")
            if rank not in (2, 3):
                self.add(node, "block", f"TensorRT blocks 2-D and 3-D tensors only, the input has rank {rank}")
            if a not in (rank - 1, rank - 2):
                self.add(node, "block", f"the blocked axis must be the last or second to last, got axis {axis}")
            n = _dim(shape[a])
            if isinstance(n, int) and sshape[a] != math.ceil(n / block):
                self.add(node, "block", f"axis {a} of length {n} in blocks of {block} needs {math.ceil(n / block)} "
                                        f"scales, got {sshape[a]}")
        elif len(sshape) == 1 and sshape[0] != 1 and rank is not None:
            n = _dim(shape[axis % rank])
            if isinstance(n, int) and n != sshape[0]:
                self.add(node, "per-axis", f"per-axis scale of length {sshape[0]} for axis {axis} of length {n}")
        elif len(sshape) > 1 and not (qtype == _T.FLOAT4E2M1):
            self.add(node, "per-axis", f"a scale of shape {sshape} without block_size is neither per-tensor nor "
                                       f"per-axis")

    def _even(self, node, x):
        shape = x.shape
        if shape is None:
            return
        dims = [_dim(d) for d in shape]
        static = [d for d in dims if isinstance(d, int)]
        if len(static) == len(dims) and math.prod(static) % 2:
            self.add(node, "even", f"4-bit tensor {tuple(dims)} has an odd element count")
        elif dims and isinstance(dims[-1], int) and dims[-1] % 2 and len(static) != len(dims):
            self.add(node, "even", f"4-bit tensor {tuple(dims)} has an odd last dimension")

    # -- TRT FP4 dynamic quantize -------------------------------------------------------------------------
    def fp4_dynamic(self, node):
        if self.opset and self.opset < 23:
            self.add(node, "opset", f"FLOAT4E2M1 needs opset >= 23, the model has {self.opset}")
        if _attr(node, "block_size") != 16:
            self.add(node, "fp4", f"block_size must be 16, got {_attr(node, 'block_size')}")
        if _attr(node, "scale_type") != int(_T.FLOAT8E4M3FN):
            self.add(node, "fp4", f"scale_type must be FLOAT8E4M3FN ({int(_T.FLOAT8E4M3FN)}), "
                                  f"got {_attr(node, 'scale_type')}")
        x = node.inputs[0]
        if x.dtype is not None and x.dtype not in _HIGH:
            self.add(node, "type", f"input type {x.dtype.name} is not FLOAT, FLOAT16 or BFLOAT16")
        gs_v = node.inputs[1] if len(node.inputs) > 1 else None
        gs = _const(gs_v)
        if gs is None:
            self.add(node, "constant-scale", "the global (double-quantization) scale is not a build-time constant")
        elif not (np.all(np.isfinite(gs.astype(np.float64))) and np.all(gs.astype(np.float64) > 0)):
            self.add(node, "positive-scale", f"the global scale must be finite and > 0, got {gs.reshape(-1)[:1]}")
        shape = x.shape
        if shape is None:
            return
        rank = len(shape)
        axis = int(_attr(node, "axis", -1))
        if rank not in (2, 3):
            self.add(node, "fp4", f"TensorRT's dynamic FP4 quantization takes 2-D or 3-D inputs, got rank {rank}")
        a = axis % rank
        if a not in (rank - 1, rank - 2):
            self.add(node, "fp4", f"the blocked axis must be the last or second to last, got axis {axis}")
        n = _dim(shape[a])
        if not isinstance(n, int):
            self.add(node, "fp4", f"the blocked axis {axis} must be static, got {shape[a]}")
        elif n % 16:
            self.add(node, "fp4", f"the blocked axis has {n} elements, not a multiple of 16")


def _dim(d):
    return d if isinstance(d, int) else getattr(d, "value", d)


def check_tensorrt(model) -> list[Violation]:
    """Check ``model`` (``onnx.ModelProto``, ``onnx_ir.Model`` or a path) against TensorRT's explicit-quantization
    rules; returns the violations (errors and warnings), each naming its node. See the module docstring.

    Example:
      >>> violations = check_tensorrt(jq.export.to_onnx(qm, (x,)))
      >>> assert not [v for v in violations if v.severity == "error"], format_violations(violations)
    """
    return _Checker(_load(model)).run()
