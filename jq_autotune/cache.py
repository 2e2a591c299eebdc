"""Pattern cache: the best diverse schemes per pattern signature, kept in YAML.

A cache from one run seeds the next (the cached schemes of a pattern are measured
right after the empty scheme). Adding a scheme keeps the cache diverse: when it is
within ``minimum_distance`` (Hamming) of a cached scheme of the same pattern, only the
faster of the two stays; each pattern keeps at most ``max_entries`` schemes, fastest
first (0 = unlimited).

File layout::

    version: 1
    patterns:
      <signature>:
        schemes:
          - latency_ms: 1.23
            insertion_points: [{kind: node_input, node: 0, input: 0}, ...]

Example::

    >>> cache = PatternCache(minimum_distance=4, max_entries=32)
    >>> cache.add_scheme("abc", InsertionScheme.empty(), 1.0)
    True
    >>> len(cache.get_schemes("abc"))
    1
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from .insertion_points import point_from_dict, point_to_dict
from .scheme import InsertionScheme, hamming


@dataclass(frozen=True)
class CachedScheme:
    """A cached scheme and the latency it had when it was stored."""

    scheme: InsertionScheme
    latency_ms: float


class PatternCache:
    """Signature -> diverse best schemes (see module docstring).

    Example::

        >>> c = PatternCache(); c.save("cache.yaml"); PatternCache.load("cache.yaml").patterns()   # doctest: +SKIP
        []
    """

    def __init__(self, minimum_distance: int = 4, max_entries: int = 32):
        self.minimum_distance = minimum_distance
        self.max_entries = max_entries
        self._entries: dict[str, list[CachedScheme]] = {}

    def patterns(self) -> list[str]:
        """Signatures with at least one cached scheme."""
        return sorted(k for k, v in self._entries.items() if v)

    def get_schemes(self, signature: str) -> list[InsertionScheme]:
        """Cached schemes of a pattern, fastest first."""
        return [c.scheme for c in self._entries.get(signature, [])]

    def entries(self, signature: str) -> list[CachedScheme]:
        """Cached schemes with their stored latencies, fastest first."""
        return list(self._entries.get(signature, []))

    def add_scheme(self, signature: str, scheme: InsertionScheme, latency_ms: float) -> bool:
        """Add a measured scheme; returns whether the cache kept it."""
        entries = self._entries.setdefault(signature, [])
        for e in entries:
            if e.scheme == scheme:
                if latency_ms < e.latency_ms:
                    entries.remove(e)
                    break
                return False
        close = [e for e in entries if hamming(e.scheme, scheme) < self.minimum_distance]
        if any(e.latency_ms <= latency_ms for e in close):
            return False
        for e in close:
            entries.remove(e)
        entries.append(CachedScheme(scheme, float(latency_ms)))
        entries.sort(key=lambda e: e.latency_ms)
        if self.max_entries > 0:
            del entries[self.max_entries :]
        return any(e.scheme == scheme for e in entries)

    def merge(self, other: "PatternCache") -> None:
        """Add every entry of ``other`` under this cache's diversity rules."""
        for sig in other.patterns():
            for e in other.entries(sig):
                self.add_scheme(sig, e.scheme, e.latency_ms)

    def to_dict(self) -> dict:
        return {
            "version": 1,
            "minimum_distance": self.minimum_distance,
            "max_entries": self.max_entries,
            "patterns": {
                sig: {
                    "schemes": [
                        {"latency_ms": e.latency_ms, "insertion_points": [point_to_dict(p) for p in e.scheme.sorted_points()]}
                        for e in self._entries[sig]
                    ]
                }
                for sig in self.patterns()
            },
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the cache as YAML (atomically: a crash never leaves half a file)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, minimum_distance: int | None = None, max_entries: int | None = None) -> "PatternCache":
        """Read a cache file. Raises ``ValueError`` on a malformed file."""
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"pattern cache {path} is not valid YAML: {e}") from e
        if not isinstance(data, dict) or not isinstance(data.get("patterns", {}), dict):
            raise ValueError(f"pattern cache {path}: expected a mapping with a 'patterns' mapping")
        cache = cls(
            minimum_distance if minimum_distance is not None else int(data.get("minimum_distance", 4)),
            max_entries if max_entries is not None else int(data.get("max_entries", 32)),
        )
        for sig, entry in data.get("patterns", {}).items():
            for s in entry.get("schemes", []):
                scheme = InsertionScheme.of(point_from_dict(p) for p in s.get("insertion_points", []))
                cache.add_scheme(str(sig), scheme, float(s.get("latency_ms", float("inf"))))
        return cache
