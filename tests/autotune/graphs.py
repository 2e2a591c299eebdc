"""Small hand-built ONNX graphs used as specimens by the autotune tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)


class Builder:
    """Tiny helper: add nodes and float weights, then make a model."""

    def __init__(self, constant_weights: bool = False, rng: np.random.Generator | None = None):
        self.rng = RNG if rng is None else rng  # the shared stream unless a test wants fixed weights
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.constant_weights = constant_weights
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def weight(self, shape, scale: float = 0.2, value=None) -> str:
        arr = (self.rng.standard_normal(shape) * scale).astype(np.float32) if value is None else np.asarray(value, np.float32)
        name = self.name("w")
        if self.constant_weights:
            self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name + "_v"), name=name + "_const"))
        else:
            self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        name = self.name(op_type.lower())
        outs = [f"{name}_out{k}" if n_out > 1 else f"{name}_out" for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs if n_out > 1 else outs[0]

    def conv(self, x: str, cin: int, cout: int, k: int = 3, bias: bool = True, **attrs) -> str:
        ins = [x, self.weight((cout, cin, k, k))]
        if bias:
            ins.append(self.weight((cout,), 0.1))
        return self.op("Conv", ins, pads=[k // 2] * 4, **attrs)

    def model(self, inputs, outputs, opset: int = 17) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, "g", inputs, outputs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 8 if opset <= 18 else 10
        return m


def fvi(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def residual_cnn(blocks: int = 2, channels: int = 8, hw: int = 16, bn: bool = False, constant_weights: bool = False, opset: int = 17, batch="N", seed: int | None = None) -> onnx.ModelProto:
    """stem Conv+Relu, then ``blocks`` x (Conv, [BN], Relu, Conv, [BN], Add(skip), Relu), GAP, Flatten, Gemm.

    Weights come from the module's shared generator (so they depend on which tests ran before) unless
    ``seed`` fixes them.
    """
    b = Builder(constant_weights, None if seed is None else np.random.default_rng(seed))
    h = b.op("Relu", [b.conv("x", 3, channels)])
    for _ in range(blocks):
        r = b.conv(h, channels, channels)
        if bn:
            r = bn_node(b, r, channels)
        r = b.op("Relu", [r])
        r = b.conv(r, channels, channels)
        if bn:
            r = bn_node(b, r, channels)
        h = b.op("Relu", [b.op("Add", [r, h])])
    p = b.op("GlobalAveragePool", [h])
    f = b.op("Flatten", [p], axis=1)
    y = b.op("Gemm", [f, b.weight((channels, 10)), b.weight((10,), 0.1)])
    b.nodes[-1].output[0] = "y"
    return b.model([fvi("x", [batch, 3, hw, hw])], [fvi("y", [batch, 10])], opset)


def bn_node(b: Builder, x: str, c: int) -> str:
    scale = b.weight((c,), value=b.rng.uniform(0.5, 1.5, c))
    bias = b.weight((c,), value=b.rng.uniform(-0.2, 0.2, c))
    mean = b.weight((c,), value=b.rng.uniform(-0.1, 0.1, c))
    var = b.weight((c,), value=b.rng.uniform(0.5, 1.5, c))
    return b.op("BatchNormalization", [x, scale, bias, mean, var], epsilon=1e-5)


def reconverging_branches() -> onnx.ModelProto:
    """x -> Relu(d) -> {Sigmoid -> Tanh, Exp} -> Add -> Neg -> y : a diamond then a tail."""
    b = Builder()
    d = b.op("Relu", ["x"])
    left = b.op("Tanh", [b.op("Sigmoid", [d])])
    right = b.op("Exp", [d])
    t = b.op("Neg", [b.op("Add", [left, right])])
    b.nodes[-1].output[0] = "y"
    return b.model([fvi("x", [1, 64])], [fvi("y", [1, 64])])


def diverging_outputs() -> onnx.ModelProto:
    """x -> Relu -> {Sigmoid -> y1, Tanh -> y2}: branches that never reconverge."""
    b = Builder()
    d = b.op("Relu", ["x"])
    s = b.op("Sigmoid", [d])
    t = b.op("Tanh", [d])
    b.nodes[-2].output[0] = "y1"
    b.nodes[-1].output[0] = "y2"
    return b.model([fvi("x", [1, 64])], [fvi("y1", [1, 64]), fvi("y2", [1, 64])])


def long_chain(n_layers: int = 8, width: int = 32) -> onnx.ModelProto:
    """``n_layers`` x (MatMul, Add bias, Relu) in one chain: 3 * n_layers nodes."""
    b = Builder()
    h = "x"
    for _ in range(n_layers):
        h = b.op("Relu", [b.op("Add", [b.op("MatMul", [h, b.weight((width, width))]), b.weight((width,), 0.1)])])
    b.nodes[-1].output[0] = "y"
    return b.model([fvi("x", [4, width])], [fvi("y", [4, width])])


def two_blocks_add(swap_second: bool = False, alpha2: float = 0.1) -> onnx.ModelProto:
    """Two structurally equal blocks (MatMul -> LeakyRelu -> Add(skip)) separated by a
    Reshape; ``swap_second`` swaps the Add operands of the second block, ``alpha2`` sets
    the LeakyRelu attribute of the second block."""
    b = Builder()
    h = "x"
    for k in range(2):
        m = b.op("MatMul", [h, b.weight((16, 16))])
        a = b.op("LeakyRelu", [m], alpha=0.1 if k == 0 else alpha2)
        ins = [a, h] if (k == 0 or not swap_second) else [h, a]
        h = b.op("Add", ins)
        shape = b.name("shape")
        b.inits.append(numpy_helper.from_array(np.array([4, 16], np.int64), shape))
        h = b.op("Reshape", [h, shape])
    b.nodes[-1].output[0] = "y"
    return b.model([fvi("x", [4, 16])], [fvi("y", [4, 16])])


def skip_specimen() -> onnx.ModelProto:
    """A graph exercising each skip rule: int64 indices, a tiny tensor, a shape input,
    a copy op, weights and a fused Conv->Relu edge."""
    b = Builder()
    c = b.conv("x", 3, 8)
    r = b.op("Relu", [c])  # Conv -> Relu: fused edge
    shape = b.name("shape")
    b.inits.append(numpy_helper.from_array(np.array([1, 8, 64], np.int64), shape))
    flat = b.op("Reshape", [r, shape])  # copy op; shape input
    idx_out = b.op("Gather", [flat, "idx"], axis=2)  # int64 indices input
    tiny = b.op("Mul", ["small", "small"])  # 4-element tensor
    y = b.op("Add", [b.op("ReduceMean", [idx_out], keepdims=0, axes=[2]), b.op("ReduceSum", [tiny], keepdims=0)])
    b.nodes[-1].output[0] = "y"
    inputs = [fvi("x", [1, 3, 8, 8]), helper.make_tensor_value_info("idx", TensorProto.INT64, [5]), fvi("small", [4])]
    return b.model(inputs, [fvi("y", [1, 8])], opset=17)
