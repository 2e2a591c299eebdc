"""Regions: the hierarchical subgraphs the autotuner optimizes one at a time.

A :class:`Region` is a set of graph nodes with a boundary. ``LEAF`` regions own nodes
directly; ``COMPOSITE`` regions own child regions (and possibly direct nodes); the one
``ROOT`` region owns the top-level regions of the whole graph.

Example::

    >>> r = Region(id=1, type=RegionType.LEAF, nodes={0, 1})
    >>> r.all_nodes()
    {0, 1}
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterator

from .graph import GraphIndex


class RegionType(enum.Enum):
    """Kind of region: atomic ``LEAF``, hierarchical ``COMPOSITE`` or the whole-graph ``ROOT``."""

    LEAF = "leaf"
    COMPOSITE = "composite"
    ROOT = "root"


@dataclass(eq=False)
class Region:
    """A subgraph with input/output boundary tensors.

    Regions are mutable while the search builds the tree (children are attached and
    boundaries computed afterwards) and are treated as read-only after that. Identity
    is the ``id``; two regions are never compared by content.

    Attributes:
        id: unique within one region tree.
        type: :class:`RegionType`.
        nodes: indices (into ``model.graph.node``) of nodes owned directly.
        children: child regions (COMPOSITE/ROOT only).
        parent: the enclosing region, ``None`` for the root.
        inputs: boundary input tensors (consumed inside, produced outside; weights excluded).
        outputs: boundary output tensors (produced inside, consumed outside or graph outputs).

    Example::

        >>> leaf = Region(1, RegionType.LEAF, nodes={3})
        >>> comp = Region(2, RegionType.COMPOSITE)
        >>> comp.add_child(leaf); leaf.parent is comp
        True
    """

    id: int
    type: RegionType
    nodes: set[int] = field(default_factory=set)
    children: list["Region"] = field(default_factory=list)
    parent: "Region | None" = None
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def add_child(self, child: "Region") -> None:
        """Attach ``child`` and set its parent to this region."""
        child.parent = self
        self.children.append(child)

    @property
    def level(self) -> int:
        """0 for a leaf, otherwise 1 + the deepest child's level."""
        if not self.children:
            return 0
        return 1 + max(c.level for c in self.children)

    def all_nodes(self) -> set[int]:
        """Direct nodes plus the nodes of all descendants."""
        out = set(self.nodes)
        for c in self.children:
            out |= c.all_nodes()
        return out

    def size(self) -> int:
        """Number of nodes owned directly or recursively."""
        return len(self.all_nodes())

    def walk(self) -> Iterator["Region"]:
        """This region and all its descendants, parents before children."""
        yield self
        for c in self.children:
            yield from c.walk()

    def compute_boundaries(self, graph: GraphIndex) -> None:
        """Set ``inputs``/``outputs`` from the node set (recursively for children).

        Inputs: tensors consumed by the region's nodes and not produced inside it
        (constants excluded: weights are not data flowing between regions).
        Outputs: tensors produced inside and consumed by a node outside, or graph outputs.
        Both lists keep first-seen order in the graph's topological order.
        """
        for c in self.children:
            c.compute_boundaries(graph)
        members = self.all_nodes()
        ordered = [i for i in graph.topo if i in members]
        produced = {o for i in ordered for o in graph.nodes[i].output if o}
        inputs: list[str] = []
        outputs: list[str] = []
        for i in ordered:
            for name in graph.nodes[i].input:
                if name and name not in produced and name not in graph.constants and name not in inputs:
                    inputs.append(name)
        for i in ordered:
            for name in graph.nodes[i].output:
                if not name:
                    continue
                outside = any(c not in members for c, _ in graph.consumers.get(name, ()))
                if (outside or name in graph.graph_outputs) and name not in outputs:
                    outputs.append(name)
        self.inputs, self.outputs = inputs, outputs

    def describe(self, graph: GraphIndex | None = None) -> str:
        """One-line summary, e.g. ``LEAF#3 nodes=4 in=1 out=1 [Conv, Relu, ...]``."""
        text = f"{self.type.name}#{self.id} nodes={self.size()} in={len(self.inputs)} out={len(self.outputs)}"
        if graph is not None and self.nodes:
            ops = [graph.nodes[i].op_type for i in graph.topo if i in self.nodes]
            shown = ", ".join(ops[:6]) + (", ..." if len(ops) > 6 else "")
            text += f" [{shown}]"
        return text
