"""Fold an inference-mode ``BatchNormalization`` into the ``Conv`` before it.

With ``f = scale / sqrt(var + epsilon)`` per output channel ``m``:

    BN(Conv(x, W, B)) = Conv(x, W * f[m], (B - mean) * f + bias)

(``W`` is ``[M, C/group, k...]``, so ``f`` scales its axis 0 whatever the group count). The BN disappears and
the ``Conv`` writes the tensor the BN wrote (same name). Only constant BN parameters, a ``Conv`` read by the BN
alone, ``training_mode=0`` and unused running-statistics outputs qualify.

Example:
  >>> fold_batchnorm(model)        # number of BatchNormalization nodes folded
  4
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnx_toolbox.values import add_initializer, attribute, constant_array, drop_if_unused, only_used_by, replace_value

__all__ = ["fold_batchnorm", "FoldBatchNormPass"]

_ONNX = ("", "ai.onnx")


def _foldable_conv(bn: ir.Node) -> ir.Node | None:
    """The ``Conv`` feeding ``bn`` when the pair can be folded, else None."""
    if bn.domain not in _ONNX or len(bn.inputs) != 5 or None in bn.inputs or attribute(bn, "training_mode", 0):
        return None
    if any(o.uses() or o.is_graph_output() for o in bn.outputs[1:]):
        return None  # running mean/var (training outputs) are read
    conv = bn.inputs[0].producer()
    if conv is None or conv.op_type != "Conv" or conv.domain not in _ONNX or not only_used_by(bn.inputs[0], bn):
        return None
    return conv


def fold_batchnorm(model: ir.Model) -> int:
    """Fold every foldable ``Conv -> BatchNormalization`` pair of the main graph; returns how many."""
    graph, count = model.graph, 0
    for bn in list(graph):
        if bn.op_type != "BatchNormalization":
            continue
        conv = _foldable_conv(bn)
        if conv is None or len(conv.inputs) < 2:
            continue
        w = constant_array(conv.inputs[1])
        has_b = len(conv.inputs) > 2 and conv.inputs[2] is not None
        b = constant_array(conv.inputs[2]) if has_b else None
        params = [constant_array(v) for v in bn.inputs[1:5]]
        if w is None or w.dtype.kind != "f" or (has_b and b is None) or any(p is None for p in params):
            continue
        scale, shift, mean, var = (np.asarray(p, np.float64).reshape(-1) for p in params)
        if not all(p.size in (1, w.shape[0]) for p in (scale, shift, mean, var)):
            continue
        factor = scale / np.sqrt(var + float(attribute(bn, "epsilon", 1e-5)))
        w_new = (w.astype(np.float64) * np.broadcast_to(factor, (w.shape[0],)).reshape((-1,) + (1,) * (w.ndim - 1)))
        b0 = np.zeros(w.shape[0]) if b is None else b.astype(np.float64).reshape(-1)
        b_new = (b0 - mean) * factor + shift
        y = bn.outputs[0]
        base = y.name or conv.name or "bn"
        old = [conv.inputs[1], conv.inputs[2] if has_b else None, *bn.inputs[1:5]]
        conv.replace_input_with(1, add_initializer(graph, f"{base}_folded_weight", w_new.astype(w.dtype)))
        if not has_b:
            conv.resize_inputs(3)
        conv.replace_input_with(2, add_initializer(graph, f"{base}_folded_bias",
                                                   np.broadcast_to(b_new, (w.shape[0],)).astype(w.dtype)))
        replace_value(y, conv.outputs[0], keep_name=True)
        graph.remove(bn, safe=True)
        for value in old:
            drop_if_unused(graph, value)
        count += 1
    return count


class FoldBatchNormPass(ir.passes.InPlacePass):
    """:func:`fold_batchnorm` as a pass."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, fold_batchnorm(model) > 0)
