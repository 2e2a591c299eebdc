"""Hand-built onnx-ir graphs and an ONNX Runtime runner for the toolbox tests (no JAX)."""

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper

from onnx_toolbox import ir_version_for_opset


def model(nodes, inputs, outputs, inits=(), opset=19, ir_version=None) -> ir.Model:
    """An ``ir.Model`` from onnx.helper nodes, value infos and initializer protos."""
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                          ir_version=ir_version or ir_version_for_opset(opset))
    return ir.serde.deserialize_model(m)


def run(m: ir.Model, feeds) -> list[np.ndarray]:
    """ONNX Runtime on CPU with graph optimizations off: the graph's own arithmetic, positional inputs."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(ir.serde.serialize_model(m).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: np.asarray(x) for i, x in zip(sess.get_inputs(), feeds)})


def vi(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)
