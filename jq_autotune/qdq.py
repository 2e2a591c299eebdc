"""Building Q/DQ models: activation Q/DQ pairs, weight DQs, int32 biases; and import.

:func:`insert_qdq` writes a new model in which each resolved location gets
``QuantizeLinear -> DequantizeLinear``: one Q per tensor, one DQ per consuming edge
(so ONNX Runtime's fusions, which want a DQ with a single consumer, apply). When the
data input of a Conv/ConvTranspose/MatMul/Gemm is quantized, its constant weight is
replaced by ``DequantizeLinear(int8 weight)`` (per output channel for INT8, per tensor
for FP8; INT8 in ``[-rules.weight_qmax, rules.weight_qmax]``, 7 bits where ONNX Runtime's
u8s8 kernels saturate) and, under ONNX Runtime rules, its bias by an int32 DQ with scale
``x_scale * w_scale`` — the form ONNX Runtime fuses into QLinearConv/QGemm.

:func:`get_quantized_tensors` reads an existing Q/DQ model and returns the activation
tensors that carry a ``Q -> DQ`` pair, for importing its placement.

Example::

    >>> params = QuantParams.default(rules, scale=0.1, zero_point=0)   # doctest: +SKIP
    >>> qmodel = insert_qdq(model, graph, points, params, rules)         # doctest: +SKIP
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .graph import GraphIndex
from .insertion_points import ResolvedInsertionPoint
from .rules import WEIGHTED_OPS, PlacementRules

_NP = {TensorProto.UINT8: np.uint8, TensorProto.INT8: np.int8}


@dataclass
class QuantParams:
    """Scale and zero point per activation tensor, with a fallback for the rest.

    ``zero_points`` are in the activation type's integer domain (ignored for FP8).
    ``calibrated`` tells whether the values came from data (False: latency-only model).

    Example::

        >>> qp = QuantParams(default_scale=0.1, default_zero_point=0)
        >>> qp.get("x")
        (0.1, 0)
    """

    default_scale: float = 0.1
    default_zero_point: int = 0
    scales: dict[str, float] = field(default_factory=dict)
    zero_points: dict[str, int] = field(default_factory=dict)
    calibrated: bool = False

    def get(self, tensor: str) -> tuple[float, int]:
        """``(scale, zero_point)`` of a tensor."""
        return self.scales.get(tensor, self.default_scale), self.zero_points.get(tensor, self.default_zero_point)


class WeightQuantizer:
    """Quantizes constant weights once and reuses the result across schemes.

    Example::

        >>> wq = WeightQuantizer(graph, rules)        # doctest: +SKIP
        >>> q, scale, axis = wq.quantize("conv.weight", "Conv", node)   # doctest: +SKIP
    """

    def __init__(self, graph: GraphIndex, rules: PlacementRules):
        self.graph = graph
        self.rules = rules
        self._cache: dict[tuple[str, int | None], tuple[np.ndarray, np.ndarray, int | None] | None] = {}

    def quantize(self, name: str, axis: int | None) -> tuple[np.ndarray, np.ndarray, int | None] | None:
        """``(quantized, scale, axis_or_None)`` of weight ``name``, one scale per index of
        output axis ``axis`` (per tensor when ``axis`` is ``None`` or rules say so).

        ``None`` when the weight's value cannot be read (computed at run time).
        """
        key = (name, axis)
        if key not in self._cache:
            self._cache[key] = self._quantize(name, axis)
        return self._cache[key]

    def _quantize(self, name: str, axis: int | None):
        w = self.graph.constant_value(name)
        if w is None or w.dtype.kind != "f" or w.ndim == 0:
            return None
        w = w.astype(np.float32)
        if self.rules.quant_type == "fp8":
            amax = float(np.max(np.abs(w))) or 1.0
            scale = np.float32(amax / 448.0)
            q = _to_fp8(w / scale)
            return q, np.asarray(scale, np.float32), None
        qmax = float(self.rules.weight_qmax)  # symmetric: q = clip(rint(w / s), -qmax, qmax), s = amax / qmax
        if self.rules.per_channel_weights and w.ndim >= 2 and axis is not None:
            ax = axis % w.ndim
            red = tuple(d for d in range(w.ndim) if d != ax)
            amax = np.max(np.abs(w), axis=red)
            scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
            shape = [1] * w.ndim
            shape[ax] = -1
            q = np.clip(np.rint(w / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
            return q, scale, ax
        amax = float(np.max(np.abs(w)))
        scale = np.float32(amax / qmax if amax > 0 else 1.0)
        q = np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int8)
        return q, np.asarray(scale, np.float32), None


def _to_fp8(x: np.ndarray) -> np.ndarray:
    """float32 -> FLOAT8E4M3FN values as ml_dtypes/onnx-compatible array (saturating)."""
    import ml_dtypes

    return np.clip(x, -448.0, 448.0).astype(ml_dtypes.float8_e4m3fn)


def weight_output_axis(node: onnx.NodeProto, input_index: int, rank: int) -> int | None:
    """Axis of the output channels of a weight input, or ``None`` if not a weight slot."""
    op = node.op_type
    if op == "Conv" and input_index == 1:
        return 0
    if op == "ConvTranspose" and input_index == 1:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return 1 if group == 1 else None
    if op == "MatMul" and input_index == 1:
        return rank - 1
    if op == "Gemm" and input_index == 1:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return None


def insert_qdq(
    model: onnx.ModelProto,
    graph: GraphIndex,
    points: Iterable[ResolvedInsertionPoint],
    params: QuantParams,
    rules: PlacementRules,
    weights: WeightQuantizer | None = None,
) -> onnx.ModelProto:
    """A copy of ``model`` with Q/DQ at ``points`` (see module docstring).

    ``graph`` must index ``model``. Nodes stay topologically sorted.
    """
    weights = weights or WeightQuantizer(graph, rules)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(out.graph.node)
    edges: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for p in points:
        if p.is_tensor_level:
            for c, j in graph.consumers.get(p.tensor, ()):
                if not graph.is_shape_input(c, j):
                    edges[p.tensor].append((c, j))
        else:
            edges[p.tensor].append((p.node, p.input_index))  # type: ignore[arg-type]

    inits: list[onnx.TensorProto] = []
    extra: list[onnx.NodeProto] = []
    act_type = rules.activation_type
    quantized_inputs: dict[tuple[int, int], float] = {}
    for tensor in sorted(edges):
        uses = sorted(set(edges[tensor]))
        scale, zp = params.get(tensor)
        if rules.symmetric_activations:
            zp = 0
        s_name, z_name, q_name = f"{tensor}__qdq_scale", f"{tensor}__qdq_zp", f"{tensor}__q"
        inits.append(numpy_helper.from_array(np.asarray(scale, np.float32), s_name))
        inits.append(_zero_point(z_name, act_type, zp))
        extra.append(helper.make_node("QuantizeLinear", [tensor, s_name, z_name], [q_name], name=f"{tensor}__Q"))
        for k, (c, j) in enumerate(uses):
            dq_name = f"{tensor}__dq{k}"
            extra.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq_name], name=f"{tensor}__DQ{k}"))
            nodes[c].input[j] = dq_name
            quantized_inputs[(c, j)] = scale

    # weights (and int32 biases) of ops whose data input is now quantized
    for c in sorted({c for c, _ in quantized_inputs}):
        node = nodes[c]
        if node.op_type not in WEIGHTED_OPS:
            continue
        data_slots = [j for j in range(len(node.input)) if (c, j) in quantized_inputs]
        for j, name in enumerate(list(node.input)):
            if not name or name not in graph.constants or j == 2:
                continue
            info = graph.tensor_info(name)
            rank = len(info.shape) if info and info.shape is not None else 2
            if j > 1:
                continue
            axis = weight_output_axis(node, j, rank)  # None: one scale for the tensor
            res = weights.quantize(name, axis)
            if res is None:
                continue
            q, w_scale, q_axis = res
            qn, sn, zn, dn = f"{name}__w{c}_q", f"{name}__w{c}_scale", f"{name}__w{c}_zp", f"{name}__w{c}_dq"
            inits.append(_array_tensor(q, qn, rules.weight_type))
            inits.append(numpy_helper.from_array(np.asarray(w_scale, np.float32), sn))
            inits.append(_zero_point(zn, rules.weight_type, 0, None if q_axis is None else q.shape[q_axis]))
            attrs = {"axis": q_axis} if q_axis is not None else {}
            extra.append(helper.make_node("DequantizeLinear", [qn, sn, zn], [dn], name=f"{name}__W{c}", **attrs))
            node.input[j] = dn
            if rules.int32_bias and node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2] and data_slots:
                _quantize_bias(node, c, graph, quantized_inputs[(c, data_slots[0])], w_scale, inits, extra)

    del out.graph.node[:]
    out.graph.node.extend(_toposort(nodes + extra, {v.name for v in out.graph.input} | {t.name for t in out.graph.initializer} | {t.name for t in inits}))
    out.graph.initializer.extend(inits)
    # float weights replaced by their quantized form are dropped (ORT would warn)
    used = {x for n in out.graph.node for x in n.input}
    for n in out.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                used |= {x for sn in a.g.node for x in sn.input}
    replaced = {name for name in graph.initializers if name not in used}
    if replaced:
        keep = [t for t in out.graph.initializer if t.name not in replaced or t.name in graph.graph_outputs]
        del out.graph.initializer[:]
        out.graph.initializer.extend(keep)
    return out


def _quantize_bias(node, c, graph: GraphIndex, x_scale: float, w_scale: np.ndarray, inits, extra) -> None:
    b = graph.constant_value(node.input[2])
    if b is None or b.ndim != 1:
        return
    scale = (np.float32(x_scale) * np.asarray(w_scale, np.float32)).astype(np.float32)
    scale = np.broadcast_to(scale, b.shape).astype(np.float32) if scale.ndim else scale
    q = np.clip(np.rint(b.astype(np.float64) / scale), -(2**31), 2**31 - 1).astype(np.int32)
    name = node.input[2]
    qn, sn, zn, dn = f"{name}__b{c}_q", f"{name}__b{c}_scale", f"{name}__b{c}_zp", f"{name}__b{c}_dq"
    inits.append(numpy_helper.from_array(q, qn))
    inits.append(numpy_helper.from_array(np.asarray(scale, np.float32), sn))
    zp = np.zeros(scale.shape, np.int32) if np.ndim(scale) else np.asarray(0, np.int32)
    inits.append(numpy_helper.from_array(zp, zn))
    attrs = {"axis": 0} if np.ndim(scale) else {}
    extra.append(helper.make_node("DequantizeLinear", [qn, sn, zn], [dn], name=f"{name}__B{c}", **attrs))
    node.input[2] = dn


def _zero_point(name: str, elem_type: int, value: int, length: int | None = None) -> onnx.TensorProto:
    if elem_type == TensorProto.FLOAT8E4M3FN:
        shape = [] if length is None else [length]
        return helper.make_tensor(name, elem_type, shape, [0.0] * (length or 1))
    arr = np.full(() if length is None else (length,), value, dtype=_NP[elem_type])
    return numpy_helper.from_array(arr, name)


def _array_tensor(arr: np.ndarray, name: str, elem_type: int) -> onnx.TensorProto:
    if elem_type == TensorProto.FLOAT8E4M3FN:
        t = TensorProto()
        t.name = name
        t.data_type = elem_type
        t.dims.extend(arr.shape)
        t.raw_data = arr.tobytes()
        return t
    return numpy_helper.from_array(arr, name)


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Stable topological order: each node after the producers of its inputs."""
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    order: list[int] = []
    state = [0] * len(nodes)  # 0 new, 1 visiting, 2 done
    for start in range(len(nodes)):
        if state[start]:
            continue
        stack = [(start, iter(nodes[start].input))]
        state[start] = 1
        while stack:
            k, it = stack[-1]
            advanced = False
            for name in it:
                p = producer.get(name)
                if p is not None and name not in available and state[p] == 0:
                    state[p] = 1
                    stack.append((p, iter(nodes[p].input)))
                    advanced = True
                    break
            if not advanced:
                stack.pop()
                state[k] = 2
                order.append(k)
    return [nodes[k] for k in order]


# ---------------------------------------------------------------- import
@dataclass(frozen=True)
class QuantizedTensor:
    """An activation tensor quantized in an existing model, and the nodes its DQs feed."""

    tensor: str
    consumers: tuple[str, ...]


def get_quantized_tensors(model: onnx.ModelProto) -> dict[str, QuantizedTensor]:
    """Activation tensors carrying ``QuantizeLinear -> DequantizeLinear`` in ``model``.

    Weight DQs (an initializer feeding a DQ without a Q) are ignored: the autotuner
    quantizes weights itself. ``consumers`` are the names of the nodes reading the DQ
    outputs, so the placement can be mapped onto the FP32 model by node name.

    Example::

        >>> get_quantized_tensors(onnx.load("resnet_qdq.onnx"))   # doctest: +SKIP
        {'input': QuantizedTensor(tensor='input', consumers=('Conv_0',)), ...}
    """
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in nodes:
        for x in n.input:
            consumers[x].append(n)
    found: dict[str, set[str]] = defaultdict(set)
    for dq in nodes:
        if dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        for user in consumers.get(dq.output[0], []):
            found[q.input[0]].add(user.name)
    return {t: QuantizedTensor(t, tuple(sorted(c))) for t, c in found.items()}
