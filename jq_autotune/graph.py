"""Read-only index over an ONNX graph: producers, consumers, constants, dtypes, shapes.

Everything else in :mod:`jq_autotune` addresses nodes by their position in
``model.graph.node`` and tensors by name; this module answers the structural
questions those modules ask (who produces ``t``? who consumes it? is it a weight?
how many elements does it have?).

Example::

    >>> import onnx
    >>> from jq_autotune.graph import GraphIndex
    >>> g = GraphIndex(onnx.load("model.onnx"))          # doctest: +SKIP
    >>> g.producer["conv1_out"], g.consumers["conv1_out"]  # doctest: +SKIP
    (0, [(1, 0)])
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from dataclasses import dataclass

import onnx
from onnx import TensorProto

from onnx_toolbox.shapes import static_dims

FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
)

# Inputs (by op type and input index) that carry shapes, axes, indices or sizes rather
# than data: a Q/DQ there would be meaningless, so they are never insertion points.
SHAPE_INPUTS: dict[str, frozenset[int]] = {
    "Reshape": frozenset({1}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
    "Slice": frozenset({1, 2, 3, 4}),
    "ConstantOfShape": frozenset({0}),
    "Resize": frozenset({1, 2, 3}),
    "Upsample": frozenset({1}),
    "Pad": frozenset({1, 2, 3}),
    "Range": frozenset({0, 1, 2}),
    "TopK": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "Squeeze": frozenset({1}),
    "Split": frozenset({1}),
    "Gather": frozenset({1}),
    "GatherElements": frozenset({1}),
    "GatherND": frozenset({1}),
    "ScatterElements": frozenset({1}),
    "ScatterND": frozenset({1}),
    "OneHot": frozenset({1, 2}),
    "ReduceSum": frozenset({1}),
    "ReduceMean": frozenset({1}),
    "ReduceMax": frozenset({1}),
    "ReduceMin": frozenset({1}),
    "ReduceProd": frozenset({1}),
    "ReduceL2": frozenset({1}),
    "Clip": frozenset({1, 2}),
    "Where": frozenset({0}),
    "CumSum": frozenset({1}),
}


@dataclass(frozen=True)
class TensorInfo:
    """Element type and (possibly partial) shape of one tensor.

    ``shape`` is ``None`` when the rank is unknown; unknown dimensions are ``None``.

    Example::

        >>> TensorInfo(onnx.TensorProto.FLOAT, (1, 3, None)).numel is None
        True
    """

    elem_type: int
    shape: tuple[int | None, ...] | None

    @property
    def numel(self) -> int | None:
        """Number of elements, or ``None`` when any dimension is unknown."""
        if self.shape is None or any(d is None for d in self.shape):
            return None
        return math.prod(self.shape)  # type: ignore[arg-type]

    @property
    def is_float(self) -> bool:
        """True for float32/float16/bfloat16/double tensors."""
        return self.elem_type in FLOAT_TYPES


def _info_from_type(tp: onnx.TypeProto) -> TensorInfo | None:
    if not tp.HasField("tensor_type"):
        return None
    dims = static_dims(tp)  # dim_param, unset and dim_value <= 0 are unknown (None)
    return TensorInfo(tp.tensor_type.elem_type, None if dims is None else tuple(dims))


class GraphIndex:
    """Structural index over ``model.graph`` (main graph only; subgraphs are opaque).

    Attributes:
        model: the indexed model (not copied; do not mutate while indexed).
        nodes: ``model.graph.node`` as a list; a node's *index* is its position here.
        producer: tensor name -> index of the node producing it.
        consumers: tensor name -> list of ``(node_index, input_index)`` using it.
        constants: names of tensors known before the first inference: initializers that
            are not graph inputs, ``Constant`` outputs, and outputs of nodes all of whose
            inputs are constant (weight preprocessing chains).
        graph_inputs: data inputs (graph inputs that are not initializers), in order.
        graph_outputs: names of graph outputs.
        info: tensor name -> :class:`TensorInfo` where known (graph I/O, initializers,
            ``value_info`` from shape inference, ``Constant`` values).
        topo: node indices in a topological order.
        compute_nodes: nodes that consume at least one non-constant tensor, in ``topo``
            order. Constant-producing nodes are "weights" and never belong to a region.

    Example::

        >>> g = GraphIndex(model)            # doctest: +SKIP
        >>> [g.nodes[i].op_type for i in g.compute_nodes]  # doctest: +SKIP
        ['Conv', 'Relu', 'Add']
    """

    def __init__(self, model: onnx.ModelProto, infer_shapes: bool = True, base_dir: str = ""):
        self.model = model
        self.base_dir = base_dir
        graph = model.graph
        if infer_shapes:
            graph = _inferred_graph(model)
        self.nodes: list[onnx.NodeProto] = list(model.graph.node)
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, node in enumerate(self.nodes):
            for out in node.output:
                if out:
                    self.producer[out] = i
            for j, name in enumerate(node.input):
                if name:
                    self.consumers[name].append((i, j))
        init_names = {t.name for t in model.graph.initializer}
        input_names = [v.name for v in model.graph.input]
        self.graph_inputs: list[str] = [n for n in input_names if n not in init_names]
        self.graph_outputs: set[str] = {v.name for v in model.graph.output}
        self.initializers: set[str] = init_names - set(input_names)

        self.info: dict[str, TensorInfo] = {}
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            ti = _info_from_type(vi.type)
            if ti is not None:
                self.info[vi.name] = ti
        for t in model.graph.initializer:
            self.info[t.name] = TensorInfo(t.data_type, tuple(t.dims))
        for node in self.nodes:
            if node.op_type == "Constant" and node.output:
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        self.info[node.output[0]] = TensorInfo(attr.t.data_type, tuple(attr.t.dims))

        self.topo: list[int] = self._toposort()
        self.constants: set[str] = set(self.initializers)
        self.constant_nodes: set[int] = set()
        for i in self.topo:
            node = self.nodes[i]
            if _has_subgraph(node):
                continue
            ins = [x for x in node.input if x]
            if node.op_type == "Constant" or (ins and all(x in self.constants for x in ins)):
                if node.op_type not in _NONDETERMINISTIC:
                    self.constants.update(o for o in node.output if o)
                    self.constant_nodes.add(i)
        self.compute_nodes: list[int] = [i for i in self.topo if i not in self.constant_nodes]
        self._compute_set = set(self.compute_nodes)

    # ------------------------------------------------------------------ queries
    def _toposort(self) -> list[int]:
        indeg = [0] * len(self.nodes)
        succ: dict[int, list[int]] = defaultdict(list)
        for i, node in enumerate(self.nodes):
            for name in node.input:
                p = self.producer.get(name)
                if name and p is not None and p != i:
                    indeg[i] += 1
                    succ[p].append(i)
        ready = deque(i for i in range(len(self.nodes)) if indeg[i] == 0)
        order: list[int] = []
        while ready:
            i = ready.popleft()
            order.append(i)
            for s in succ[i]:
                indeg[s] -= 1
                if indeg[s] == 0:
                    ready.append(s)
        if len(order) != len(self.nodes):
            raise ValueError("the ONNX graph has a cycle; it cannot be autotuned")
        return order

    def data_inputs(self, node_index: int) -> list[str]:
        """Non-empty, non-constant input tensor names of a node (duplicates removed)."""
        seen: list[str] = []
        for name in self.nodes[node_index].input:
            if name and name not in self.constants and name not in seen:
                seen.append(name)
        return seen

    def data_producers(self, node_index: int) -> list[int]:
        """Compute nodes producing this node's data inputs (in input order, unique)."""
        out: list[int] = []
        for name in self.data_inputs(node_index):
            p = self.producer.get(name)
            if p is not None and p in self._compute_set and p not in out:
                out.append(p)
        return out

    def data_consumers(self, node_index: int) -> list[int]:
        """Compute nodes consuming any output of this node (unique, in graph order)."""
        out: set[int] = set()
        for name in self.nodes[node_index].output:
            for c, _ in self.consumers.get(name, ()):
                if c in self._compute_set:
                    out.add(c)
        return sorted(out)

    def is_compute(self, node_index: int) -> bool:
        """True when the node consumes at least one non-constant tensor."""
        return node_index in self._compute_set

    def tensor_info(self, name: str) -> TensorInfo | None:
        """Known dtype/shape of a tensor, or ``None``."""
        return self.info.get(name)

    def is_shape_input(self, node_index: int, input_index: int) -> bool:
        """True when input ``input_index`` of the node carries a shape/axes/indices."""
        return input_index in SHAPE_INPUTS.get(self.nodes[node_index].op_type, frozenset())

    def constant_value(self, name: str):
        """The numpy value of an initializer or direct ``Constant`` output, else ``None``.

        External-data initializers are read relative to ``base_dir``.
        """
        from onnx import numpy_helper

        for t in self.model.graph.initializer:
            if t.name == name:
                return numpy_helper.to_array(t, base_dir=self.base_dir)
        p = self.producer.get(name)
        if p is not None and self.nodes[p].op_type == "Constant":
            for attr in self.nodes[p].attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    return numpy_helper.to_array(attr.t)
                if attr.name == "value_float":
                    import numpy as np

                    return np.asarray(attr.f, dtype=np.float32)
                if attr.name == "value_floats":
                    import numpy as np

                    return np.asarray(list(attr.floats), dtype=np.float32)
        if p is not None and self.nodes[p].op_type == "Identity":
            return self.constant_value(self.nodes[p].input[0])
        return None


_NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"})


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _inferred_graph(model: onnx.ModelProto) -> onnx.GraphProto:
    """Graph with ``value_info`` from ONNX shape inference (the input is not modified).

    Shape inference is best effort: a model it rejects is analysed without it, and
    tensors of unknown size are then treated as large (never skipped as tiny).
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
        return inferred.graph
    except Exception:  # noqa: BLE001 - inference is an optimisation, not a requirement
        return model.graph
