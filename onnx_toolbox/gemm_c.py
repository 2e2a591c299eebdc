"""Drop the all-zero ``C`` input of ``Gemm`` nodes.

``Gemm(A, B, C) = alpha * A' @ B' + beta * C``. Exporters (jax2onnx writes one for every 2-D matmul) add a
constant zero ``C``; it changes nothing but blocks ONNX Runtime's ``QGemm`` fusion, which refuses a float
``C``. Removing it keeps the values bit for bit.

Example:
  >>> drop_zero_gemm_c(model)     # number of Gemm nodes changed
  1
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnx_toolbox.values import constant_array, drop_if_unused

__all__ = ["drop_zero_gemm_c", "DropZeroGemmCPass"]


def drop_zero_gemm_c(model: ir.Model) -> int:
    """Remove ``C`` from every main-graph ``Gemm`` whose ``C`` is a constant of zeros; returns how many."""
    count = 0
    for node in list(model.graph):
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 3 \
                or node.inputs[2] is None:
            continue
        c = constant_array(node.inputs[2])
        if c is None or np.any(c):
            continue
        old = node.inputs[2]
        node.resize_inputs(2)
        drop_if_unused(model.graph, old)
        count += 1
    return count


class DropZeroGemmCPass(ir.passes.InPlacePass):
    """:func:`drop_zero_gemm_c` as a pass."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, drop_zero_gemm_c(model) > 0)
