"""Pattern signatures: structural identity of regions, independent of tensor names.

Two regions with the same signature have the same ops, attributes, wiring and child
structure, so a Q/DQ scheme found for one applies to the other. The signature is
deterministic (sha256, first 32 hex digits) and invariant to the operand order of
symmetric ops (``Add``, ``Mul``, ...): their inputs are recorded as a sorted multiset.

:func:`canonicalize` also fixes a *canonical order* of a region's direct nodes,
children, boundary inputs and outputs. Pattern-relative insertion points (see
:mod:`jq_autotune.insertion_points`) index into these orders, which is what makes them
resolvable on every region of the pattern.

Example::

    >>> view = canonicalize(region, graph)        # doctest: +SKIP
    >>> view.signature                             # doctest: +SKIP
    '3f0c...'                       # 32 hex digits
    >>> [graph.nodes[i].op_type for i in view.nodes]   # doctest: +SKIP
    ['Conv', 'Relu']
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import onnx

from .graph import GraphIndex
from .region import Region

SYMMETRIC_OPS = frozenset({"Add", "Mul", "Sum", "Max", "Min", "Mean", "And", "Or", "Xor", "Equal", "BitwiseAnd", "BitwiseOr", "BitwiseXor"})


def _digest(obj: object) -> str:
    return hashlib.sha256(repr(obj).encode()).hexdigest()[:32]


def _attr_value(attr: onnx.AttributeProto) -> object:
    t = onnx.AttributeProto
    if attr.type == t.FLOAT:
        return round(attr.f, 7)
    if attr.type == t.INT:
        return attr.i
    if attr.type == t.STRING:
        return attr.s.decode(errors="replace")
    if attr.type == t.FLOATS:
        return tuple(round(x, 7) for x in attr.floats)
    if attr.type == t.INTS:
        return tuple(attr.ints)
    if attr.type == t.STRINGS:
        return tuple(s.decode(errors="replace") for s in attr.strings)
    if attr.type == t.TENSOR:
        return ("tensor", attr.t.data_type, tuple(attr.t.dims))
    if attr.type == t.GRAPH:
        return ("graph", tuple(n.op_type for n in attr.g.node))
    if attr.type == t.GRAPHS:
        return ("graphs", tuple(tuple(n.op_type for n in g.node) for g in attr.graphs))
    return ("attr", attr.type)


def node_label(node: onnx.NodeProto) -> tuple:
    """Op identity of a node: domain, op type and sorted attributes (names excluded)."""
    attrs = tuple(sorted((a.name, _attr_value(a)) for a in node.attribute))
    return (node.domain or "", node.op_type, attrs)


@dataclass(frozen=True)
class CanonicalRegion:
    """A region seen through its pattern: signature plus canonical orders.

    Attributes:
        region: the region this view describes.
        signature: 32-hex pattern signature.
        nodes: direct node indices in canonical order.
        children: child views in canonical order.
        inputs: boundary input tensors in canonical order.
        outputs: boundary output tensors in canonical order.
    """

    region: Region
    signature: str
    nodes: tuple[int, ...]
    children: tuple["CanonicalRegion", ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass
class _Unit:
    kind: str  # "node" or "child"
    ref: object  # node index or CanonicalRegion
    label: tuple
    inputs: list[str]  # ordered tensor names ("" for absent optional inputs)
    outputs: list[str]
    symmetric: bool
    topo: int


def canonicalize(region: Region, graph: GraphIndex) -> CanonicalRegion:
    """Compute the signature and canonical orders of ``region`` (children first).

    Every direct node and every child is a *unit* with a label (op + attributes, or
    the child's signature) and ordered input/output tensors. Units get a forward hash
    (label + where each input comes from: another unit's output slot, the boundary, a
    constant or nothing) and a backward hash (which units consume each output). They
    are ordered by (depth from the boundary, forward hash, backward hash); the
    signature hashes that ordered description.
    """
    child_views = [canonicalize(c, graph) for c in region.children]
    units: list[_Unit] = []
    topo_pos = {n: k for k, n in enumerate(graph.topo)}
    for n in region.nodes:
        node = graph.nodes[n]
        units.append(
            _Unit("node", n, node_label(node), list(node.input), [o for o in node.output], node.op_type in SYMMETRIC_OPS and not node.domain, topo_pos[n])
        )
    for cv in child_views:
        first = min(topo_pos[n] for n in cv.region.all_nodes())
        units.append(_Unit("child", cv, ("region", cv.signature), list(cv.inputs), list(cv.outputs), False, first))

    produced_by: dict[str, tuple[int, int]] = {}
    for u_idx, u in enumerate(units):
        for slot, t in enumerate(u.outputs):
            if t:
                produced_by[t] = (u_idx, slot)
    consumed_by: dict[int, list[tuple[int, int, int]]] = {k: [] for k in range(len(units))}
    for u_idx, u in enumerate(units):
        for slot, t in enumerate(u.inputs):
            if t in produced_by:
                p, pslot = produced_by[t]
                consumed_by[p].append((pslot, u_idx, slot))

    order = sorted(range(len(units)), key=lambda k: units[k].topo)
    depth: dict[int, int] = {}
    def input_descs(k, key_of):
        """How each input of unit ``k`` is fed; producers named by ``key_of`` (sorted if symmetric)."""
        u = units[k]
        descs = []
        for t in u.inputs:
            if not t:
                descs.append(("none",))
            elif t in produced_by and produced_by[t][0] != k:
                p, pslot = produced_by[t]
                descs.append(("unit", key_of[p], pslot))
            elif t in graph.constants:
                descs.append(("const",))
            else:
                descs.append(("boundary",))
        return sorted(descs) if u.symmetric else descs

    fwd: dict[int, str] = {}
    for k in order:
        producers = [produced_by[t][0] for t in units[k].inputs
                     if t and t in produced_by and produced_by[t][0] != k]
        depth[k] = max((depth[p] + 1 for p in producers), default=0)
        fwd[k] = _digest((units[k].label, tuple(input_descs(k, fwd))))
    bwd: dict[int, str] = {}
    for k in reversed(order):
        u = units[k]
        outs = []
        for pslot, c, cslot in consumed_by[k]:
            outs.append((pslot, bwd[c], -1 if units[c].symmetric else cslot))
        external = tuple(slot for slot, t in enumerate(u.outputs) if t and t in region.outputs)
        bwd[k] = _digest((fwd[k], tuple(sorted(outs)), external))
    canon = sorted(range(len(units)), key=lambda k: (depth[k], fwd[k], bwd[k], units[k].topo))
    rank = {k: r for r, k in enumerate(canon)}

    description = [(units[k].label, tuple(input_descs(k, rank)), len(units[k].outputs)) for k in canon]

    # boundary tensors in canonical order: by first canonical consumer / producer
    def input_key(t: str) -> tuple:
        best = None
        for k in canon:
            u = units[k]
            for slot, x in enumerate(u.inputs):
                if x == t:
                    key = (rank[k], -1 if u.symmetric else slot)
                    best = key if best is None or key < best else best
        return best if best is not None else (len(canon), 0)

    def output_key(t: str) -> tuple:
        if t in produced_by:
            p, slot = produced_by[t]
            return (rank[p], slot)
        return (len(canon), 0)

    inputs = tuple(sorted(region.inputs, key=lambda t: (input_key(t), t)))
    outputs = tuple(sorted(region.outputs, key=lambda t: (output_key(t), t)))
    boundary = (
        tuple(input_key(t) for t in inputs),
        tuple(output_key(t) for t in outputs),
    )
    signature = _digest((region.type.value if region.type.value != "root" else "composite", tuple(description), boundary))
    nodes = tuple(units[k].ref for k in canon if units[k].kind == "node")
    children = tuple(units[k].ref for k in canon if units[k].kind == "child")
    return CanonicalRegion(region, signature, nodes, children, inputs, outputs)  # type: ignore[arg-type]


def pattern_signature(region: Region, graph: GraphIndex) -> str:
    """The 32-hex structural signature of ``region`` (see :func:`canonicalize`)."""
    return canonicalize(region, graph).signature
