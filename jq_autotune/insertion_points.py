"""Pattern-relative Q/DQ insertion points, their resolution, and the skip rules.

Three kinds of point address a region *through its pattern* (indices into the
canonical orders of :class:`jq_autotune.pattern.CanonicalRegion`), so one point means the
structurally same place in every region sharing the pattern:

* :class:`NodeInputInsertionPoint` — input ``input_index`` of canonical direct node
  ``node_index`` (a Q/DQ on that edge only).
* :class:`ChildRegionInputInsertionPoint` — canonical input ``input_index`` of child
  ``region_index`` (a Q/DQ on every edge into that child from this tensor).
* :class:`RegionOutputInsertionPoint` — canonical output ``output_index`` of child
  ``region_index``, or of the region itself when ``region_index`` is ``None`` (a Q/DQ
  on the tensor for all its consumers).

:func:`resolve_points` turns points into :class:`ResolvedInsertionPoint` (tensor name
plus the consuming edge, or ``None`` for all consumers), merged and de-duplicated.
:func:`candidate_points` lists the points worth searching; it skips non-float tensors,
tiny tensors (< 8 elements), weights/biases/BN parameters (constants), shape/axes
inputs, inputs of copy-only ops and edges inside fusible Conv->BN->ReLU chains.

Example::

    >>> p = NodeInputInsertionPoint(node_index=0, input_index=0)
    >>> point_from_dict(point_to_dict(p)) == p
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Union

from .graph import GraphIndex
from .pattern import CanonicalRegion
from .rules import COPY_OPS, FUSED_EDGES, MIN_ELEMENTS, PlacementRules


@dataclass(frozen=True, order=True)
class NodeInputInsertionPoint:
    """Q/DQ on input ``input_index`` of the canonical direct node ``node_index``.

    Example::

        >>> NodeInputInsertionPoint(2, 0).kind
        'node_input'
    """

    node_index: int
    input_index: int

    @property
    def kind(self) -> str:
        return "node_input"


@dataclass(frozen=True, order=True)
class ChildRegionInputInsertionPoint:
    """Q/DQ on canonical input ``input_index`` of canonical child ``region_index``.

    Example::

        >>> ChildRegionInputInsertionPoint(1, 0).kind
        'child_input'
    """

    region_index: int
    input_index: int

    @property
    def kind(self) -> str:
        return "child_input"


@dataclass(frozen=True)
class RegionOutputInsertionPoint:
    """Q/DQ on canonical output ``output_index`` of child ``region_index`` (or of the
    region itself when ``region_index`` is ``None``), for all consumers of the tensor.

    Example::

        >>> RegionOutputInsertionPoint(None, 0).kind
        'region_output'
    """

    region_index: int | None
    output_index: int

    @property
    def kind(self) -> str:
        return "region_output"


InsertionPoint = Union[NodeInputInsertionPoint, ChildRegionInputInsertionPoint, RegionOutputInsertionPoint]


@dataclass(frozen=True, order=True)
class ResolvedInsertionPoint:
    """A concrete Q/DQ location: ``tensor`` on the edge into ``node`` (graph node index)
    at ``input_index``, or on every consumer edge when ``node`` is ``None``.

    Example::

        >>> ResolvedInsertionPoint("x", None, None).is_tensor_level
        True
    """

    tensor: str
    node: int | None
    input_index: int | None

    @property
    def is_tensor_level(self) -> bool:
        return self.node is None


def point_sort_key(p: InsertionPoint) -> tuple:
    """Total order over points of all kinds (for deterministic serialization)."""
    if isinstance(p, NodeInputInsertionPoint):
        return (0, p.node_index, p.input_index)
    if isinstance(p, ChildRegionInputInsertionPoint):
        return (1, p.region_index, p.input_index)
    return (2, -1 if p.region_index is None else p.region_index, p.output_index)


def point_to_dict(p: InsertionPoint) -> dict:
    """YAML-friendly form, e.g. ``{'kind': 'node_input', 'node': 2, 'input': 0}``."""
    if isinstance(p, NodeInputInsertionPoint):
        return {"kind": "node_input", "node": p.node_index, "input": p.input_index}
    if isinstance(p, ChildRegionInputInsertionPoint):
        return {"kind": "child_input", "region": p.region_index, "input": p.input_index}
    return {"kind": "region_output", "region": p.region_index, "output": p.output_index}


def point_from_dict(d: dict) -> InsertionPoint:
    """Inverse of :func:`point_to_dict`. Raises ``ValueError`` on an unknown kind."""
    kind = d.get("kind")
    if kind == "node_input":
        return NodeInputInsertionPoint(int(d["node"]), int(d["input"]))
    if kind == "child_input":
        return ChildRegionInputInsertionPoint(int(d["region"]), int(d["input"]))
    if kind == "region_output":
        region = d.get("region")
        return RegionOutputInsertionPoint(None if region is None else int(region), int(d["output"]))
    raise ValueError(f"unknown insertion point kind {kind!r}")


# ---------------------------------------------------------------- resolution
def resolve_point(p: InsertionPoint, view: CanonicalRegion, graph: GraphIndex) -> list[ResolvedInsertionPoint]:
    """Concrete locations of one point in one region (empty if it does not apply there)."""
    if isinstance(p, NodeInputInsertionPoint):
        if p.node_index >= len(view.nodes):
            return []
        n = view.nodes[p.node_index]
        node = graph.nodes[n]
        if p.input_index >= len(node.input) or not node.input[p.input_index]:
            return []
        return [ResolvedInsertionPoint(node.input[p.input_index], n, p.input_index)]
    if isinstance(p, ChildRegionInputInsertionPoint):
        if p.region_index >= len(view.children):
            return []
        child = view.children[p.region_index]
        if p.input_index >= len(child.inputs):
            return []
        tensor = child.inputs[p.input_index]
        members = child.region.all_nodes()
        return [ResolvedInsertionPoint(tensor, c, j) for c, j in graph.consumers.get(tensor, ()) if c in members]
    target = view if p.region_index is None else (view.children[p.region_index] if p.region_index < len(view.children) else None)
    if target is None or p.output_index >= len(target.outputs):
        return []
    return [ResolvedInsertionPoint(target.outputs[p.output_index], None, None)]


def resolve_points(points: Iterable[InsertionPoint], views: Iterable[CanonicalRegion], graph: GraphIndex) -> frozenset[ResolvedInsertionPoint]:
    """Resolve points on every region view, merge and de-duplicate.

    A tensor-level location (all consumers) absorbs the edge locations of the same
    tensor, so each tensor gets at most one Q and one DQ per consuming edge.
    """
    out: set[ResolvedInsertionPoint] = set()
    points = list(points)
    for view in views:
        for p in points:
            out.update(resolve_point(p, view, graph))
    return merge_resolved(out)


def merge_resolved(points: Iterable[ResolvedInsertionPoint]) -> frozenset[ResolvedInsertionPoint]:
    """Drop edge locations of tensors that also have a tensor-level location."""
    points = set(points)
    whole = {p.tensor for p in points if p.is_tensor_level}
    return frozenset(p for p in points if p.is_tensor_level or p.tensor not in whole)


# ---------------------------------------------------------------- skip rules
def tensor_skip_reason(tensor: str, graph: GraphIndex) -> str | None:
    """Why a tensor can never carry a Q/DQ, or ``None`` when it can."""
    if not tensor:
        return "absent optional input"
    if tensor in graph.constants:
        return "constant (weight, bias or BN parameter)"
    info = graph.tensor_info(tensor)
    if info is None:
        return "unknown element type"
    if not info.is_float:
        return "not a float tensor"
    if info.numel is not None and info.numel < MIN_ELEMENTS:
        return f"tiny tensor ({info.numel} elements)"
    return None


def edge_skip_reason(tensor: str, node: int, input_index: int, graph: GraphIndex) -> str | None:
    """Why the edge ``tensor -> node[input_index]`` is not a candidate, or ``None``."""
    reason = tensor_skip_reason(tensor, graph)
    if reason:
        return reason
    consumer = graph.nodes[node]
    if graph.is_shape_input(node, input_index):
        return "shape/axes/indices input"
    if consumer.op_type in COPY_OPS:
        return f"input of copy/shape op {consumer.op_type}"
    p = graph.producer.get(tensor)
    if p is not None and (graph.nodes[p].op_type, consumer.op_type) in FUSED_EDGES:
        if len(graph.consumers.get(tensor, ())) == 1:
            return f"inside fusible {graph.nodes[p].op_type}->{consumer.op_type}"
    return None


def tensor_level_skip_reason(tensor: str, graph: GraphIndex) -> str | None:
    """Skip reason for an all-consumers location: the tensor's own reason, or every
    consuming edge being skipped (e.g. only copy ops read it), or no consumer at all."""
    reason = tensor_skip_reason(tensor, graph)
    if reason:
        return reason
    edges = graph.consumers.get(tensor, ())
    if not edges:
        return "graph output without consumers"
    if all(edge_skip_reason(tensor, c, j, graph) for c, j in edges):
        return "no consumer can use a Q/DQ"
    return None


def candidate_points(view: CanonicalRegion, graph: GraphIndex, rules: PlacementRules) -> list[InsertionPoint]:
    """All searchable points of a region (from its canonical view), in canonical order.

    Leaves offer node inputs (and, under ONNX Runtime rules, their own outputs);
    composites offer child inputs, child outputs and the inputs of direct nodes.
    """
    points: list[InsertionPoint] = []
    for k, n in enumerate(view.nodes):
        for j, t in enumerate(graph.nodes[n].input):
            if t and edge_skip_reason(t, n, j, graph) is None:
                points.append(NodeInputInsertionPoint(k, j))
    for c, child in enumerate(view.children):
        members = child.region.all_nodes()
        for j, t in enumerate(child.inputs):
            edges = [(n, i) for n, i in graph.consumers.get(t, ()) if n in members]
            if edges and any(edge_skip_reason(t, n, i, graph) is None for n, i in edges):
                points.append(ChildRegionInputInsertionPoint(c, j))
        for j, t in enumerate(child.outputs):
            if tensor_level_skip_reason(t, graph) is None:
                points.append(RegionOutputInsertionPoint(c, j))
    if rules.region_output_points and not view.children:
        for j, t in enumerate(view.outputs):
            if tensor_level_skip_reason(t, graph) is None:
                points.append(RegionOutputInsertionPoint(None, j))
    return points
