"""Insertion points: pattern-relative, resolved on every matching region, merged; skip rules."""

from graphs import residual_cnn, skip_specimen, two_blocks_add

from jq_autotune.graph import GraphIndex
from jq_autotune.insertion_points import (
    ChildRegionInputInsertionPoint,
    NodeInputInsertionPoint,
    RegionOutputInsertionPoint,
    ResolvedInsertionPoint,
    candidate_points,
    edge_skip_reason,
    merge_resolved,
    point_from_dict,
    point_to_dict,
    resolve_points,
    tensor_skip_reason,
)
from jq_autotune.pattern import canonicalize
from jq_autotune.rules import placement_rules
from test_pattern import block_regions


def test_one_point_resolves_to_different_tensors_on_two_matching_regions():
    g, (a, b) = block_regions(two_blocks_add(swap_second=True))
    va, vb = canonicalize(a, g), canonicalize(b, g)
    assert va.signature == vb.signature
    add_index = [g.nodes[i].op_type for i in va.nodes].index("Add")
    mm_index = [g.nodes[i].op_type for i in va.nodes].index("MatMul")
    points = [NodeInputInsertionPoint(mm_index, 0)]
    resolved = resolve_points(points, [va, vb], g)
    assert {r.tensor for r in resolved} == {"x", g.nodes[vb.nodes[mm_index]].input[0]}
    assert len(resolved) == 2
    # the Add's LeakyRelu operand is slot 0 in block one and slot 1 in block two (swapped),
    # yet both blocks share the pattern and its points
    def leaky_slot(add):
        return next(k for k, t in enumerate(add.input) if t in g.producer and g.nodes[g.producer[t]].op_type == "LeakyRelu")

    leaky_slots = {leaky_slot(g.nodes[v.nodes[add_index]]) for v in (va, vb)}
    assert leaky_slots == {0, 1}


def test_region_output_absorbs_edges_of_the_same_tensor_and_duplicates_merge():
    merged = merge_resolved(
        [
            ResolvedInsertionPoint("t", 3, 0),
            ResolvedInsertionPoint("t", 4, 1),
            ResolvedInsertionPoint("t", None, None),
            ResolvedInsertionPoint("u", 5, 0),
            ResolvedInsertionPoint("u", 5, 0),
        ]
    )
    assert merged == frozenset({ResolvedInsertionPoint("t", None, None), ResolvedInsertionPoint("u", 5, 0)})


def test_points_round_trip_through_dicts():
    for p in (NodeInputInsertionPoint(2, 1), ChildRegionInputInsertionPoint(0, 3), RegionOutputInsertionPoint(None, 0), RegionOutputInsertionPoint(1, 2)):
        assert point_from_dict(point_to_dict(p)) == p


def test_skip_rules():
    g = GraphIndex(skip_specimen())
    by_op = {g.nodes[i].op_type: i for i in g.topo}
    conv, relu, reshape, gather = by_op["Conv"], by_op["Relu"], by_op["Reshape"], by_op["Gather"]
    assert "constant" in tensor_skip_reason(g.nodes[conv].input[1], g)  # weight
    assert "constant" in tensor_skip_reason(g.nodes[conv].input[2], g)  # bias
    assert "not a float" in tensor_skip_reason("idx", g)  # int64 indices
    assert "tiny" in tensor_skip_reason("small", g)  # 4 elements
    assert edge_skip_reason(g.nodes[conv].output[0], relu, 0, g).startswith("inside fusible Conv->Relu")
    assert "copy/shape op" in edge_skip_reason(g.nodes[relu].output[0], reshape, 0, g)
    assert edge_skip_reason(g.nodes[reshape].input[1], reshape, 1, g) is not None  # shape input
    assert edge_skip_reason("x", conv, 0, g) is None  # the one good place
    assert tensor_skip_reason(g.nodes[gather].output[0], g) is None


def test_backends_get_different_candidate_sets():
    g = GraphIndex(residual_cnn(blocks=1))
    from jq_autotune.region_search import CombinedRegionSearch
    from jq_autotune.config import Config

    root = CombinedRegionSearch(g, Config(minimum_topdown_search_size=4, maximum_sequence_region_size=3)).search()
    leaves = [r for r in root.walk() if not r.children]
    ort, trt = placement_rules("ort", "int8"), placement_rules("tensorrt", "int8")
    ort_kinds, trt_kinds = set(), set()
    for leaf in leaves:
        v = canonicalize(leaf, g)
        ort_kinds |= {p.kind for p in candidate_points(v, g, ort)}
        trt_kinds |= {p.kind for p in candidate_points(v, g, trt)}
    assert "region_output" in ort_kinds  # the output Q after Conv that ORT's fusion needs
    assert "region_output" not in trt_kinds  # TensorRT: Q/DQ on inputs only
    assert "node_input" in trt_kinds
