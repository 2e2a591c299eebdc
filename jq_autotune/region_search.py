"""Combined region search: partition a graph into a tree of regions to optimize.

The search runs in three phases over the *compute* nodes (nodes reading at least one
non-constant tensor; weight-only subgraphs belong to no region):

1. **Bottom-up partition.** Nodes are visited in topological order. An unassigned node
   starts a region which then grows forward: through a *divergence* (a node whose
   outputs feed several nodes) when all branches *reconverge* within
   ``convergence_max_steps`` forward steps (exploring ``convergence_probe_steps`` further
   to see branches that escape), absorbing every node between the divergence and the
   convergence; and along *chains* (the single consumer whose data inputs all come from
   the region). A divergence whose branches never reconverge ends the region.
2. **Sequence merging.** Neighbouring regions that form a one-to-one sequence (all of
   A's outputs go only to B, all of B's inputs come only from A) are merged while the
   merged size stays within ``maximum_sequence_region_size``.
3. **Top-down refinement.** Regions of at least ``minimum_topdown_search_size`` nodes
   become COMPOSITE: their nodes are split into LEAF children that each start at a
   boundary op (Conv, ConvTranspose, Gemm, MatMul, pooling, Resize) and extend over the
   following non-boundary nodes fed only from that child, capped at
   ``maximum_sequence_region_size`` nodes; the children are then sequence-merged as in 2.

Boundaries (inputs/outputs) are computed as in the specification (see
:meth:`jq_autotune.region.Region.compute_boundaries`). :func:`profiling_order` lists LEAF
regions first, then composites from the innermost level outwards.

Example::

    >>> from jq_autotune.graph import GraphIndex
    >>> root = CombinedRegionSearch(GraphIndex(model)).search()   # doctest: +SKIP
    >>> [r.type.name for r in profiling_order(root)]               # doctest: +SKIP
    ['LEAF', 'LEAF', 'COMPOSITE']
"""

from __future__ import annotations

from collections import deque
from itertools import count

from .config import Config
from .graph import GraphIndex
from .region import Region, RegionType

BOUNDARY_OPS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "AveragePool",
        "MaxPool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Resize",
    }
)


class CombinedRegionSearch:
    """Builds the region tree of one graph (see the module docstring for the algorithm).

    Args:
        graph: the indexed graph.
        config: region-search knobs (``maximum_sequence_region_size``,
            ``minimum_topdown_search_size``, ``convergence_max_steps``,
            ``convergence_probe_steps``).

    Example::

        >>> root = CombinedRegionSearch(graph, Config()).search()   # doctest: +SKIP
        >>> root.type
        <RegionType.ROOT: 'root'>
    """

    def __init__(self, graph: GraphIndex, config: Config | None = None):
        self.graph = graph
        self.config = config or Config()
        self._ids = count(1)
        self._pos = {n: k for k, n in enumerate(graph.compute_nodes)}

    # ------------------------------------------------------------------ public
    def search(self) -> Region:
        """Run all three phases and return the ROOT region (boundaries computed)."""
        parts = self.partition()
        parts = self.merge_sequences(parts, self.config.maximum_sequence_region_size)
        top: list[Region] = []
        for nodes in parts:
            top.append(self._refine(nodes))
        root = Region(0, RegionType.ROOT)
        for r in top:
            root.add_child(r)
        root.compute_boundaries(self.graph)
        return root

    # ------------------------------------------------------------ phase 1
    def partition(self) -> list[set[int]]:
        """Bottom-up divergence/convergence + chain partition of the compute nodes."""
        assigned: set[int] = set()
        regions: list[set[int]] = []
        for start in self.graph.compute_nodes:
            if start in assigned:
                continue
            region = {start}
            assigned.add(start)
            cur = start
            while True:
                consumers = self.graph.data_consumers(cur)
                if len(consumers) > 1:
                    span = self.find_convergence(cur, assigned)
                    if span is None:
                        break
                    conv, between = span
                    region |= between | {conv}
                    assigned |= between | {conv}
                    cur = conv
                    continue
                nxt = self._chain_successor(cur, region, assigned)
                if nxt is None:
                    break
                region.add(nxt)
                assigned.add(nxt)
                cur = nxt
            regions.append(region)
        return regions

    def find_convergence(self, node: int, assigned: set[int] | None = None) -> tuple[int, set[int]] | None:
        """The first node where all branches leaving ``node`` meet again, and the nodes between.

        Returns ``(convergence_node, nodes_strictly_between)`` or ``None`` when the
        branches do not reconverge within ``convergence_max_steps`` steps, when a branch
        leaves the window or reaches a graph output, or when a node in between already
        belongs to another region.
        """
        g = self.graph
        assigned = assigned or set()
        limit = self.config.convergence_max_steps
        horizon = limit + self.config.convergence_probe_steps
        depth = {node: 0}
        queue = deque([node])
        while queue:
            n = queue.popleft()
            if depth[n] >= horizon:
                continue
            for c in g.data_consumers(n):
                if c not in depth:
                    depth[c] = depth[n] + 1
                    queue.append(c)
        candidates = sorted((c for c in depth if c != node and depth[c] <= limit), key=self._pos.__getitem__)
        for cand in candidates:
            # nodes of the window that reach the candidate (backwards inside the window)
            between: set[int] = set()
            stack = [p for p in g.data_producers(cand) if p in depth]
            while stack:
                p = stack.pop()
                if p in between or p == node:
                    continue
                between.add(p)
                stack.extend(q for q in g.data_producers(p) if q in depth)
            span = between | {node, cand}
            if not set(g.data_consumers(node)) <= span:
                continue
            closed = True
            for m in between | {node}:
                if any(o in g.graph_outputs for o in g.nodes[m].output):
                    closed = False
                    break
                if not set(g.data_consumers(m)) <= span:
                    closed = False
                    break
            if not closed:
                continue
            if (between | {cand}) & assigned:
                return None
            return cand, between
        return None

    def _chain_successor(self, node: int, region: set[int], assigned: set[int]) -> int | None:
        g = self.graph
        consumers = g.data_consumers(node)
        if len(consumers) != 1 or any(o in g.graph_outputs for o in g.nodes[node].output):
            return None
        nxt = consumers[0]
        if nxt in assigned:
            return None
        if not all(p in region for p in g.data_producers(nxt)):
            return None
        # a graph input feeding the successor makes it a join with the outside world
        if any(t in g.graph_inputs for t in g.data_inputs(nxt)):
            return None
        return nxt

    # ------------------------------------------------------------ phase 2
    def merge_sequences(self, groups: list[set[int]], max_size: int) -> list[set[int]]:
        """Merge one-to-one neighbouring groups while the merged size is ``<= max_size``.

        A group A merges with B when every data consumer outside A lies in B, every data
        producer of B outside B lies in A, and no output of A is a graph output.
        """
        g = self.graph
        groups = [set(x) for x in groups]
        changed = True
        while changed:
            changed = False
            owner = {n: k for k, grp in enumerate(groups) for n in grp}
            for a, grp_a in enumerate(groups):
                succ = {owner[c] for n in grp_a for c in g.data_consumers(n) if owner.get(c, a) != a}
                if len(succ) != 1:
                    continue
                b = succ.pop()
                grp_b = groups[b]
                pred = {owner[p] for n in grp_b for p in g.data_producers(n) if owner.get(p, b) != b}
                if pred != {a} or len(grp_a) + len(grp_b) > max_size:
                    continue
                if any(o in g.graph_outputs for n in grp_a for o in g.nodes[n].output):
                    continue
                if any(t in g.graph_inputs for n in grp_b for t in g.data_inputs(n)):
                    continue
                groups[a] = grp_a | grp_b
                del groups[b]
                changed = True
                break
        groups.sort(key=lambda grp: min(self._pos[n] for n in grp))
        return groups

    # ------------------------------------------------------------ phase 3
    def _refine(self, nodes: set[int]) -> Region:
        if len(nodes) < self.config.minimum_topdown_search_size:
            return Region(next(self._ids), RegionType.LEAF, nodes=set(nodes))
        groups = self.split_at_boundary_ops(nodes)
        groups = self.merge_sequences(groups, self.config.maximum_sequence_region_size)
        if len(groups) <= 1:
            return Region(next(self._ids), RegionType.LEAF, nodes=set(nodes))
        comp = Region(next(self._ids), RegionType.COMPOSITE)
        for grp in groups:
            comp.add_child(Region(next(self._ids), RegionType.LEAF, nodes=grp))
        return comp

    def split_at_boundary_ops(self, nodes: set[int]) -> list[set[int]]:
        """Split a node set into groups that start at boundary ops (see module doc)."""
        g = self.graph
        max_size = self.config.maximum_sequence_region_size
        owner: dict[int, int] = {}
        groups: list[set[int]] = []
        for n in (i for i in g.compute_nodes if i in nodes):
            producers = {owner[p] for p in g.data_producers(n) if p in owner}
            inside = [p for p in g.data_producers(n) if p in nodes]
            join = len(producers) == 1 and len(inside) == len([p for p in inside if p in owner])
            if g.nodes[n].op_type not in BOUNDARY_OPS and join:
                k = producers.pop()
                if len(groups[k]) < max_size:
                    groups[k].add(n)
                    owner[n] = k
                    continue
            owner[n] = len(groups)
            groups.append({n})
        return groups


def search_regions(graph: GraphIndex, config: Config | None = None) -> Region:
    """Shorthand for ``CombinedRegionSearch(graph, config).search()``."""
    return CombinedRegionSearch(graph, config).search()


def profiling_order(root: Region) -> list[Region]:
    """Regions to profile: every LEAF first (graph order), then composites by level.

    The ROOT itself is never profiled: its children cover the whole graph.
    """
    leaves = [r for r in root.walk() if r.type is RegionType.LEAF]
    composites = [r for r in root.walk() if r.type is RegionType.COMPOSITE]
    composites.sort(key=lambda r: r.level)
    return leaves + composites
