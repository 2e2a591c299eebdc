"""Insertion schemes and their generation for one pattern.

A scheme is a set of pattern-relative insertion points. For each pattern the
:class:`SchemeGenerator` proposes, in this order:

1. the **empty scheme** (no Q/DQ) — the baseline every other scheme is compared to;
2. **seed schemes** — from the pattern cache, from an imported Q/DQ model, then the
   backend's rule seeds — restricted to the pattern's candidate points;
3. **mutations** of a random parent among the best measured schemes (the top
   ``top_percent_to_mutate``, at least ``minimum_schemes_to_mutate``): for each kind of
   point, add or remove 1..``maximum_mutations`` points.

Every proposal is new by hash; mutations must also keep a Hamming distance of
``scheme_minimum_distance`` from all measured schemes (relaxed to plain uniqueness
when ``maximum_generation_attempts`` tries fail). :func:`select_best` applies the
performance threshold: a pattern keeps no Q/DQ unless its best scheme beats the empty
one by ``performance_threshold``.

Example::

    >>> s = InsertionScheme.of([NodeInputInsertionPoint(0, 0)])
    >>> hamming(s, InsertionScheme.empty())
    1
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .config import Config
from .insertion_points import InsertionPoint, point_sort_key, point_to_dict


@dataclass(frozen=True)
class InsertionScheme:
    """An immutable set of pattern-relative insertion points.

    Example::

        >>> a = InsertionScheme.of([NodeInputInsertionPoint(1, 0), NodeInputInsertionPoint(0, 0)])
        >>> a == InsertionScheme.of([NodeInputInsertionPoint(0, 0), NodeInputInsertionPoint(1, 0)])
        True
    """

    points: frozenset = field(default_factory=frozenset)

    @classmethod
    def of(cls, points: Iterable[InsertionPoint]) -> "InsertionScheme":
        return cls(frozenset(points))

    @classmethod
    def empty(cls) -> "InsertionScheme":
        return cls(frozenset())

    @property
    def is_empty(self) -> bool:
        return not self.points

    def sorted_points(self) -> list[InsertionPoint]:
        return sorted(self.points, key=point_sort_key)

    @property
    def hash(self) -> str:
        """Order-independent fingerprint (16 hex digits) used for de-duplication."""
        text = repr([tuple(sorted(point_to_dict(p).items(), key=str)) for p in self.sorted_points()])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.points)


def hamming(a: InsertionScheme, b: InsertionScheme) -> int:
    """Number of points in exactly one of the two schemes."""
    return len(a.points ^ b.points)


@dataclass(frozen=True)
class SchemeResult:
    """One measurement: a scheme, its whole-model latency and whether it ran.

    Example::

        >>> SchemeResult(InsertionScheme.empty(), 1.5, True).latency_ms
        1.5
    """

    scheme: InsertionScheme
    latency_ms: float
    success: bool = True


def select_best(results: Sequence[SchemeResult], threshold: float) -> tuple[InsertionScheme, float | None]:
    """The scheme a pattern keeps and its speed-up over the empty scheme.

    Returns ``(best, speedup)``. ``best`` is the empty scheme when no non-empty scheme
    reaches ``empty_latency / latency >= threshold`` (or when the empty scheme was never
    measured successfully, in which case nothing can be trusted and speedup is None).
    """
    empty = [r for r in results if r.scheme.is_empty and r.success]
    if not empty:
        return InsertionScheme.empty(), None
    base = empty[0].latency_ms
    ok = [r for r in results if r.success and not r.scheme.is_empty and math.isfinite(r.latency_ms)]
    if not ok:
        return InsertionScheme.empty(), 1.0
    best = min(ok, key=lambda r: r.latency_ms)
    speedup = base / best.latency_ms if best.latency_ms > 0 else float("inf")
    if speedup >= threshold:
        return best.scheme, speedup
    return InsertionScheme.empty(), 1.0


class SchemeGenerator:
    """Proposes the next scheme to measure for one pattern (see module docstring).

    Args:
        candidates: the pattern's searchable points.
        config: generation knobs.
        rng: the pattern's random stream.
        seeds: seed schemes in priority order (cache, import, rules).

    Example::

        >>> gen = SchemeGenerator([NodeInputInsertionPoint(0, 0)], Config(), random.Random(0))
        >>> gen.propose([]).is_empty
        True
    """

    def __init__(self, candidates: Sequence[InsertionPoint], config: Config, rng: random.Random, seeds: Sequence[InsertionScheme] = ()):
        self.candidates = sorted(set(candidates), key=point_sort_key)
        self.config = config
        self.rng = rng
        allowed = set(self.candidates)
        self.seeds: list[InsertionScheme] = []
        seen = {InsertionScheme.empty().hash}
        for s in seeds:
            kept = InsertionScheme.of(p for p in s.points if p in allowed)
            if not kept.is_empty and kept.hash not in seen:
                seen.add(kept.hash)
                self.seeds.append(kept)
        self._kinds: dict[str, list[InsertionPoint]] = {}
        for p in self.candidates:
            self._kinds.setdefault(p.kind, []).append(p)

    def propose(self, measured: Sequence[SchemeResult]) -> InsertionScheme | None:
        """The next scheme, or ``None`` when no new scheme can be found."""
        seen = {r.scheme.hash for r in measured}
        empty = InsertionScheme.empty()
        if empty.hash not in seen:
            return empty
        for s in self.seeds:
            if s.hash not in seen:
                return s
        if not self.candidates:
            return None
        parents = self._parents(measured)
        for min_dist in (max(1, self.config.scheme_minimum_distance), 1):
            for _ in range(self.config.maximum_generation_attempts):
                child = self._mutate(self.rng.choice(parents))
                if child.hash in seen:
                    continue
                if min_dist > 1 and any(hamming(child, r.scheme) < min_dist for r in measured):
                    continue
                return child
        return None

    def _parents(self, measured: Sequence[SchemeResult]) -> list[InsertionScheme]:
        ok = sorted((r for r in measured if r.success and math.isfinite(r.latency_ms)), key=lambda r: r.latency_ms)
        if not ok:
            return [InsertionScheme.empty()]
        n = len(ok)
        top = max(math.ceil(self.config.top_percent_to_mutate * n), min(self.config.minimum_schemes_to_mutate, n))
        return [r.scheme for r in ok[:top]]

    def _mutate(self, parent: InsertionScheme) -> InsertionScheme:
        points = set(parent.points)
        changed = False
        kinds = sorted(self._kinds)
        self.rng.shuffle(kinds)
        for kind in kinds:
            pool = self._kinds[kind]
            # each kind is touched with probability 1/2, but at least one kind is
            if changed and self.rng.random() < 0.5:
                continue
            for _ in range(self.rng.randint(1, max(1, self.config.maximum_mutations))):
                inside = [p for p in pool if p in points]
                outside = [p for p in pool if p not in points]
                if outside and (not inside or self.rng.random() < 0.5):
                    points.add(self.rng.choice(outside))
                elif inside:
                    points.discard(self.rng.choice(inside))
                changed = True
        return InsertionScheme.of(points)
