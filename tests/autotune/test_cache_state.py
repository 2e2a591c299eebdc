"""Pattern cache (YAML, diversity, capacity) and state files (round trip, atomic)."""

import math

import pytest

from jq_autotune.cache import PatternCache
from jq_autotune.insertion_points import ChildRegionInputInsertionPoint as C
from jq_autotune.insertion_points import NodeInputInsertionPoint as P
from jq_autotune.insertion_points import RegionOutputInsertionPoint as O
from jq_autotune.scheme import InsertionScheme, SchemeResult
from jq_autotune.state import AutotuneState


def S(*pts):
    return InsertionScheme.of(pts)


def test_cache_yaml_round_trip(tmp_path):
    cache = PatternCache(minimum_distance=1, max_entries=8)
    cache.add_scheme("sigA", S(P(0, 0), C(1, 0), O(None, 0)), 1.5)
    cache.add_scheme("sigA", S(P(1, 0)), 2.5)
    cache.add_scheme("sigB", S(O(2, 1)), 0.7)
    path = tmp_path / "cache.yaml"
    cache.save(path)
    loaded = PatternCache.load(path)
    assert loaded.patterns() == ["sigA", "sigB"]
    assert loaded.get_schemes("sigA") == cache.get_schemes("sigA")
    assert [e.latency_ms for e in loaded.entries("sigA")] == [1.5, 2.5]
    assert loaded.get_schemes("sigB") == [S(O(2, 1))]
    assert "insertion_points" in path.read_text()


def test_cache_diversity_filter_keeps_the_faster_of_two_close_schemes():
    cache = PatternCache(minimum_distance=4, max_entries=32)
    base = S(P(0, 0), P(1, 0), P(2, 0))
    assert cache.add_scheme("s", base, 2.0)
    close_slower = S(P(0, 0), P(1, 0))  # distance 1
    assert not cache.add_scheme("s", close_slower, 3.0)
    close_faster = S(P(0, 0), P(1, 0), P(2, 0), P(3, 0))  # distance 1, faster: replaces
    assert cache.add_scheme("s", close_faster, 1.0)
    far = S(P(5, 0), P(6, 0), P(7, 0), P(8, 0))  # distance 8: kept alongside
    assert cache.add_scheme("s", far, 5.0)
    assert cache.get_schemes("s") == [close_faster, far]


def test_cache_keeps_at_most_max_entries_fastest_first():
    cache = PatternCache(minimum_distance=1, max_entries=3)
    for k in range(6):
        cache.add_scheme("s", S(P(k, 0)), 10.0 - k)
    assert [e.latency_ms for e in cache.entries("s")] == [5.0, 6.0, 7.0]


def test_malformed_cache_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("patterns: [1, 2")
    with pytest.raises(ValueError, match="not valid YAML"):
        PatternCache.load(bad)


def test_state_round_trip(tmp_path):
    st = AutotuneState("fp", {"backend": "ort"}, baseline_latency_ms=3.0, baseline_noise=0.02)
    ps = st.pattern("sig")
    ps.results += [SchemeResult(S(), 3.0), SchemeResult(S(P(0, 0)), 2.0), SchemeResult(S(O(None, 0)), math.inf, False)]
    ps.complete, ps.best, ps.speedup, ps.region_ids = True, S(P(0, 0)), 1.5, [3, 7]
    path = tmp_path / "state.yaml"
    st.save(path)
    back = AutotuneState.load(path)
    assert back.baseline_latency_ms == 3.0 and back.settings == {"backend": "ort"}
    bp = back.pattern("sig")
    assert bp.complete and bp.best == S(P(0, 0)) and bp.speedup == 1.5 and bp.region_ids == [3, 7]
    assert [r.scheme for r in bp.results] == [r.scheme for r in ps.results]
    assert bp.results[2].success is False and math.isinf(bp.results[2].latency_ms)
    assert not (tmp_path / "state.yaml.tmp").exists()  # written atomically
