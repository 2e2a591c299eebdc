"""Scheme generation: empty first, seeds next, unique diverse mutations, threshold."""

import random

from jq_autotune.config import Config
from jq_autotune.insertion_points import NodeInputInsertionPoint as P
from jq_autotune.insertion_points import RegionOutputInsertionPoint as O
from jq_autotune.scheme import InsertionScheme, SchemeGenerator, SchemeResult, hamming, select_best

CANDIDATES = [P(i, 0) for i in range(8)] + [O(None, 0), O(None, 1)]


def run(gen, n, cost=lambda s: 10.0 - 0.1 * len(s)):
    measured = []
    for _ in range(n):
        s = gen.propose(measured)
        if s is None:
            break
        measured.append(SchemeResult(s, cost(s)))
    return measured


def test_empty_scheme_first_then_seeds_in_order():
    seed_a = InsertionScheme.of([P(0, 0), P(1, 0)])
    seed_b = InsertionScheme.of([O(None, 0), P(99, 0)])  # P(99, 0) is not a candidate: dropped
    gen = SchemeGenerator(CANDIDATES, Config(), random.Random(0), [seed_a, seed_b, seed_a])
    measured = run(gen, 3)
    assert measured[0].scheme.is_empty
    assert measured[1].scheme == seed_a
    assert measured[2].scheme == InsertionScheme.of([O(None, 0)])


def test_mutations_are_unique_by_hash_and_keep_the_diversity_distance():
    cfg = Config(scheme_minimum_distance=2)
    gen = SchemeGenerator(CANDIDATES, cfg, random.Random(1))
    measured = run(gen, 40)
    assert len(measured) == 40
    hashes = [r.scheme.hash for r in measured]
    assert len(set(hashes)) == len(hashes)
    # while the space is large, every new scheme is >= 2 points away from all earlier ones
    for k in range(1, 12):
        assert min(hamming(measured[k].scheme, m.scheme) for m in measured[:k]) >= 2


def test_mutation_parents_are_the_best_schemes():
    # schemes containing P(0, 0) are fast: the search should keep finding them
    cost = lambda s: 5.0 if P(0, 0) in s.points else 10.0  # noqa: E731
    gen = SchemeGenerator(CANDIDATES, Config(minimum_schemes_to_mutate=3), random.Random(2))
    measured = run(gen, 30, cost)
    later = measured[15:]
    assert sum(P(0, 0) in r.scheme.points for r in later) > len(later) / 2


def test_small_space_is_exhausted_then_generation_stops():
    gen = SchemeGenerator([P(0, 0), P(1, 0)], Config(), random.Random(0))
    measured = run(gen, 50)
    assert len(measured) == 4  # {}, {a}, {b}, {a, b}
    assert gen.propose(measured) is None


def test_same_seed_same_sequence():
    a = [r.scheme.hash for r in run(SchemeGenerator(CANDIDATES, Config(), random.Random(7)), 20)]
    b = [r.scheme.hash for r in run(SchemeGenerator(CANDIDATES, Config(), random.Random(7)), 20)]
    assert a == b


def test_performance_threshold_keeps_no_qdq_below_it():
    empty = SchemeResult(InsertionScheme.empty(), 10.0)
    small_gain = SchemeResult(InsertionScheme.of([P(0, 0)]), 9.9)  # 1.0101x
    big_gain = SchemeResult(InsertionScheme.of([P(1, 0)]), 9.0)  # 1.111x
    failed = SchemeResult(InsertionScheme.of([P(2, 0)]), 1.0, success=False)
    assert select_best([empty, small_gain, failed], 1.02) == (InsertionScheme.empty(), 1.0)
    best, speedup = select_best([empty, small_gain, big_gain], 1.02)
    assert best == big_gain.scheme and abs(speedup - 10 / 9) < 1e-9
    assert select_best([empty, small_gain], 1.0)[0] == small_gain.scheme
