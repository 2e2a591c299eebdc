"""Pattern signatures: deterministic, symmetric-op invariant, attribute and structure sensitive."""

from graphs import long_chain, two_blocks_add

from jq_autotune.config import Config
from jq_autotune.graph import GraphIndex
from jq_autotune.pattern import canonicalize
from jq_autotune.region import Region, RegionType
from jq_autotune.region_search import CombinedRegionSearch


def block_regions(model):
    """One LEAF region per (MatMul, LeakyRelu, Add) block of ``two_blocks_add``."""
    g = GraphIndex(model)
    matmuls = [i for i in g.topo if g.nodes[i].op_type == "MatMul"]
    regions = []
    for k, m in enumerate(matmuls):
        leaky = g.consumers[g.nodes[m].output[0]][0][0]
        add = g.consumers[g.nodes[leaky].output[0]][0][0]
        r = Region(k + 1, RegionType.LEAF, nodes={m, leaky, add})
        r.compute_boundaries(g)
        regions.append(r)
    return g, regions


def test_equal_blocks_share_a_signature_of_32_hex_digits():
    g, (a, b) = block_regions(two_blocks_add())
    sa, sb = canonicalize(a, g).signature, canonicalize(b, g).signature
    assert sa == sb
    assert len(sa) == 32 and int(sa, 16) >= 0


def test_signature_is_invariant_under_add_operand_swap():
    g1, (_, b1) = block_regions(two_blocks_add(swap_second=False))
    g2, (_, b2) = block_regions(two_blocks_add(swap_second=True))
    assert canonicalize(b1, g1).signature == canonicalize(b2, g2).signature


def test_signature_is_sensitive_to_attributes():
    g, (a, b) = block_regions(two_blocks_add(alpha2=0.3))
    assert canonicalize(a, g).signature != canonicalize(b, g).signature


def test_signature_is_deterministic_across_independent_analyses():
    sigs = set()
    for _ in range(3):
        g, (a, _) = block_regions(two_blocks_add())
        sigs.add(canonicalize(a, g).signature)
    assert len(sigs) == 1


def test_canonical_node_order_maps_structurally_equal_nodes():
    g, (a, b) = block_regions(two_blocks_add(swap_second=True))
    va, vb = canonicalize(a, g), canonicalize(b, g)
    assert [g.nodes[i].op_type for i in va.nodes] == [g.nodes[i].op_type for i in vb.nodes] == ["MatMul", "LeakyRelu", "Add"]
    assert set(va.nodes).isdisjoint(vb.nodes)


def test_composite_signature_includes_child_structure():
    cfg = Config(maximum_sequence_region_size=3, minimum_topdown_search_size=4)
    g6 = GraphIndex(long_chain(n_layers=6))
    g5 = GraphIndex(long_chain(n_layers=5))
    c6 = CombinedRegionSearch(g6, cfg).search().children[0]
    c5 = CombinedRegionSearch(g5, cfg).search().children[0]
    assert c6.type is c5.type is RegionType.COMPOSITE
    v6, v5 = canonicalize(c6, g6), canonicalize(c5, g5)
    # every child of both composites is the same (MatMul, Add, Relu) leaf pattern ...
    assert len({c.signature for c in v6.children + v5.children}) == 1
    # ... but the composites differ in how many children they nest
    assert v6.signature != v5.signature
