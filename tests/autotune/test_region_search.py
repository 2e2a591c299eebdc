"""Region search: bottom-up partition, sequence merging, top-down refinement, boundaries."""

from graphs import diverging_outputs, long_chain, reconverging_branches, residual_cnn

from jq_autotune.config import Config
from jq_autotune.graph import GraphIndex
from jq_autotune.region import RegionType
from jq_autotune.region_search import BOUNDARY_OPS, CombinedRegionSearch, profiling_order


def ops(graph, nodes):
    return [graph.nodes[i].op_type for i in graph.topo if i in nodes]


def test_residual_block_is_absorbed_between_divergence_and_convergence():
    g = GraphIndex(residual_cnn(blocks=1))
    search = CombinedRegionSearch(g, Config(minimum_topdown_search_size=100))
    parts = search.partition()
    # stem Relu diverges (conv branch + skip) and reconverges at the Add: one region
    assert len(parts) == 1
    assert ops(g, parts[0]) == ["Conv", "Relu", "Conv", "Relu", "Conv", "Add", "Relu", "GlobalAveragePool", "Flatten", "Gemm"]
    relu = next(i for i in g.topo if g.nodes[i].op_type == "Relu")
    conv_node, between = search.find_convergence(relu)
    assert g.nodes[conv_node].op_type == "Add"
    assert ops(g, between) == ["Conv", "Relu", "Conv"]


def test_reconverging_branches_form_one_region_and_boundaries_are_the_graph_io():
    g = GraphIndex(reconverging_branches())
    root = CombinedRegionSearch(g).search()
    assert [c.type for c in root.children] == [RegionType.LEAF]
    leaf = root.children[0]
    assert sorted(ops(g, leaf.nodes)) == sorted(["Relu", "Sigmoid", "Tanh", "Exp", "Add", "Neg"])
    assert leaf.inputs == ["x"] and leaf.outputs == ["y"]


def test_branches_that_never_reconverge_split_the_graph():
    g = GraphIndex(diverging_outputs())
    search = CombinedRegionSearch(g)
    relu = g.topo[0]
    assert search.find_convergence(relu) is None
    parts = search.partition()
    assert sorted(ops(g, p)[0] for p in parts) == ["Relu", "Sigmoid", "Tanh"]


def test_long_chain_is_refined_top_down_into_children_that_start_at_boundary_ops():
    g = GraphIndex(long_chain(n_layers=8))  # 24 nodes in one chain
    cfg = Config(maximum_sequence_region_size=4, minimum_topdown_search_size=10)
    root = CombinedRegionSearch(g, cfg).search()
    assert len(root.children) == 1
    comp = root.children[0]
    assert comp.type is RegionType.COMPOSITE
    assert comp.size() == 24
    assert all(c.type is RegionType.LEAF for c in comp.children)
    assert all(len(c.nodes) <= 4 for c in comp.children)
    for c in comp.children:
        assert ops(g, c.nodes)[0] in BOUNDARY_OPS
    # children partition the composite exactly
    assert set().union(*(c.nodes for c in comp.children)) == comp.all_nodes()
    assert sum(len(c.nodes) for c in comp.children) == 24
    # child boundaries chain: each child's input is the previous child's output
    for a, b in zip(comp.children, comp.children[1:]):
        assert a.outputs == b.inputs


def test_sequence_merging_respects_the_size_limit():
    g = GraphIndex(long_chain(n_layers=8))
    search = CombinedRegionSearch(g, Config(maximum_sequence_region_size=6))
    singles = [{i} for i in g.compute_nodes]
    merged = search.merge_sequences(singles, 6)
    assert [len(m) for m in merged] == [6, 6, 6, 6]
    assert search.merge_sequences(singles, 100) == [set(g.compute_nodes)]


def test_small_regions_stay_leaves_and_leaves_are_profiled_first():
    g = GraphIndex(long_chain(n_layers=8))
    root = CombinedRegionSearch(g, Config(maximum_sequence_region_size=6)).search()
    order = profiling_order(root)
    kinds = [r.type for r in order]
    assert RegionType.ROOT not in kinds
    first_composite = kinds.index(RegionType.COMPOSITE)
    assert all(k is RegionType.LEAF for k in kinds[:first_composite])
    assert all(k is RegionType.COMPOSITE for k in kinds[first_composite:])


def test_region_tree_navigation_and_recursive_nodes():
    g = GraphIndex(long_chain(n_layers=8))
    root = CombinedRegionSearch(g, Config(maximum_sequence_region_size=4)).search()
    comp = root.children[0]
    assert root.type is RegionType.ROOT and comp.parent is root
    assert all(c.parent is comp for c in comp.children)
    assert comp.nodes == set() and comp.all_nodes() == set(g.compute_nodes)
    assert comp.level == 1 and comp.children[0].level == 0
    assert root.inputs == ["x"] and root.outputs == ["y"]


def test_constant_weight_nodes_belong_to_no_region():
    m = residual_cnn(blocks=1, constant_weights=True)
    g = GraphIndex(m)
    root = CombinedRegionSearch(g).search()
    covered = root.all_nodes()
    constants = [i for i, n in enumerate(g.nodes) if n.op_type == "Constant"]
    assert constants and not covered & set(constants)
    assert covered == set(g.compute_nodes)
    # weights are not boundary inputs
    assert root.inputs == ["x"]
