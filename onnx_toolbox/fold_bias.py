"""Fold a constant bias ``Add`` into the ``Conv`` or ``Gemm`` that feeds it.

Exporters such as jax2onnx write a bias as a separate ``Add`` after a bias-free ``Conv`` (sometimes through a
``Transpose`` back to channels-last) or after ``Gemm(A, B, C=0, beta=0)``. A Q/DQ'd ``Conv`` cannot absorb such
an ``Add`` (ONNX Runtime's ``QLinearConv`` fusion needs ``Conv -> Q``; TensorRT fuses the bias only when it is
the op's own input), so the bias moves into the op:

    Conv(x, W, B) + b   = Conv(x, W, B + b)          b varies along the output-channel axis only
    Gemm(A, B, C) + b   = Gemm(A, B, beta * C + b) with beta := 1      b varies along N only

Through ``Transpose(perm)`` the channel axis of the ``Add`` is ``perm.index(1)``. The folded op then writes
the tensor the ``Add`` wrote (same name), so names that refer to it stay valid.

Example:
  >>> fold_bias(model)            # number of Add nodes folded
  4
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnx_toolbox.values import (
    add_initializer,
    attribute,
    constant_array,
    drop_if_unused,
    float_dtype,
    only_used_by,
    replace_value,
)

__all__ = ["fold_bias", "FoldBiasPass"]

_ONNX = ("", "ai.onnx")


def _static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The shape of ``value`` when every dimension is a known positive int (else the constant's shape)."""
    if value is None:
        return None
    if value.shape is not None and all(isinstance(d, int) and d > 0 for d in value.shape):
        return tuple(value.shape)
    arr = constant_array(value)
    return None if arr is None else arr.shape


def _target(src: ir.Node) -> tuple[ir.Node | None, list[int] | None]:
    """The ``Conv``/``Gemm`` whose output reaches the ``Add`` (directly, or a ``Conv`` through a Transpose)."""
    if src.domain not in _ONNX:
        return None, None
    if src.op_type in ("Conv", "Gemm"):
        return src, None
    if src.op_type == "Transpose" and attribute(src, "perm") is not None:
        conv = src.inputs[0].producer()
        if conv is not None and conv.op_type == "Conv" and conv.domain in _ONNX and only_used_by(src.inputs[0], src):
            return conv, [int(p) for p in attribute(src, "perm")]
    return None, None


def _geometry(target: ir.Node, perm: list[int] | None) -> tuple[int, int, int] | None:
    """``(rank, channel_axis, channels)`` of the tensor the ``Add`` reads, or None when unknown.

    The output channels come from the weight (``Conv``: ``W[M, C/g, k...]`` -> ``M``; ``Gemm``: ``B`` is
    ``[K, N]``, or ``[N, K]`` with ``transB``) or else from the op's inferred output shape.
    """
    w = _static_shape(target.inputs[1]) if len(target.inputs) > 1 else None
    out = target.outputs[0].shape
    if target.op_type == "Conv":
        rank = len(w) if w is not None else (len(out) if out is not None else None)
        channels = w[0] if w is not None else (out[1] if out is not None and len(out) > 1 else None)
    else:
        rank = 2
        if w is not None and len(w) == 2:
            channels = w[0] if attribute(target, "transB", 0) else w[1]
        else:
            channels = out[1] if out is not None and len(out) == 2 else None
    if rank is None or not isinstance(channels, int) or channels <= 0:
        return None
    if perm is not None:
        if sorted(perm) != list(range(rank)):
            return None
        return rank, perm.index(1), channels
    return rank, 1, channels


def _channel_vector(bias: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | None:
    """``bias`` as a ``[channels]`` vector when, broadcast against a rank-``rank`` tensor, it varies along
    ``axis`` only (so adding it cannot change the tensor's shape), else None."""
    if bias.ndim > rank:
        return None
    full = (1,) * (rank - bias.ndim) + tuple(bias.shape)
    if any(n != 1 for i, n in enumerate(full) if i != axis) or full[axis] not in (1, channels):
        return None
    return np.broadcast_to(bias.reshape(-1), (channels,)).astype(np.float64)


def _existing_bias(target: ir.Node, channels: int) -> np.ndarray | None:
    """The op's current bias as a float64 ``[channels]`` vector (zeros when it has none); None when it is
    not a constant per-channel bias (then nothing is folded)."""
    if len(target.inputs) <= 2 or target.inputs[2] is None:
        return np.zeros(channels)
    prev = constant_array(target.inputs[2])
    if prev is None:
        return None
    prev = prev.astype(np.float64)
    if target.op_type == "Gemm":  # C enters as beta * C (jax2onnx writes beta=0 with its zero C)
        prev = prev * float(attribute(target, "beta", 1.0))
        if prev.ndim > 2 or (prev.ndim == 2 and prev.shape[0] != 1):
            return None  # a [M, N] or [M, 1] C is not a per-channel bias
    if prev.size not in (1, channels):
        return None
    return np.broadcast_to(prev.reshape(-1), (channels,))


def fold_bias(model: ir.Model) -> int:
    """Fold every foldable constant bias ``Add`` of the main graph into its ``Conv``/``Gemm``; returns how many."""
    graph, count = model.graph, 0
    for node in list(graph):
        if node.op_type != "Add" or node.domain not in _ONNX or len(node.inputs) != 2 or None in node.inputs:
            continue
        consts = [constant_array(v) for v in node.inputs]
        if (consts[0] is None) == (consts[1] is None):
            continue
        k = 0 if consts[0] is not None else 1
        bias, x = consts[k], node.inputs[1 - k]
        src = x.producer()
        if bias.dtype.kind != "f" or src is None or not only_used_by(x, node):
            continue
        target, perm = _target(src)
        geometry = _geometry(target, perm) if target is not None else None
        if geometry is None:
            continue
        rank, axis, channels = geometry
        vec = _channel_vector(bias, rank, axis, channels)
        prev = _existing_bias(target, channels) if vec is not None else None
        if prev is None:
            continue
        dtype = float_dtype(x, default=bias.dtype)
        out = node.outputs[0]
        new_bias = add_initializer(graph, f"{out.name or target.name or 'folded'}_bias", (prev + vec).astype(dtype))
        old_bias = target.inputs[2] if len(target.inputs) > 2 else None
        if len(target.inputs) < 3:
            target.resize_inputs(3)
        target.replace_input_with(2, new_bias)
        if target.op_type == "Gemm":
            target.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        bias_value = node.inputs[k]
        replace_value(out, x, keep_name=True)
        graph.remove(node, safe=True)
        drop_if_unused(graph, old_bias)
        drop_if_unused(graph, bias_value)
        count += 1
    return count


class FoldBiasPass(ir.passes.InPlacePass):
    """:func:`fold_bias` as a pass."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, fold_bias(model) > 0)
