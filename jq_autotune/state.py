"""Autotuning state: everything measured so far, saved after every region.

The state file (``autotuner_state.yaml`` in the output directory) records the model's
structural fingerprint, the baseline latency, and for every pattern the measured
schemes and whether its search finished. A run that finds a state file for the same
model and settings resumes: finished patterns are not measured again, the schemes
already measured for an unfinished pattern are reused, and the baseline is kept.
Writes are atomic (temporary file + ``os.replace``), so even ``SIGKILL`` leaves either
the previous or the new state, never a torn file.

Example::

    >>> st = AutotuneState(model_fingerprint="f", settings={})
    >>> st.pattern("sig").results.append(SchemeResult(InsertionScheme.empty(), 1.0))
    >>> st.save("state.yaml"); AutotuneState.load("state.yaml").pattern("sig").results[0].latency_ms  # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .insertion_points import point_from_dict, point_to_dict
from .scheme import InsertionScheme, SchemeResult


@dataclass
class PatternState:
    """Measurements of one pattern. ``complete`` once its search has finished."""

    results: list[SchemeResult] = field(default_factory=list)
    complete: bool = False
    best: InsertionScheme | None = None
    speedup: float | None = None
    region_ids: list[int] = field(default_factory=list)


@dataclass
class AutotuneState:
    """Serializable progress of one autotuning run (see module docstring)."""

    model_fingerprint: str
    settings: dict
    baseline_latency_ms: float | None = None
    baseline_noise: float | None = None
    patterns: dict[str, PatternState] = field(default_factory=dict)
    final_latency_ms: float | None = None
    benchmarks_run: int = 0
    accuracy_rejections: int = 0

    def pattern(self, signature: str) -> PatternState:
        """The (possibly new) state of a pattern."""
        return self.patterns.setdefault(signature, PatternState())

    def to_dict(self) -> dict:
        def num(x: float | None):
            return None if x is None else (float(x) if math.isfinite(x) else "inf")

        return {
            "version": 1,
            "model_fingerprint": self.model_fingerprint,
            "settings": self.settings,
            "baseline_latency_ms": num(self.baseline_latency_ms),
            "baseline_noise": num(self.baseline_noise),
            "final_latency_ms": num(self.final_latency_ms),
            "benchmarks_run": self.benchmarks_run,
            "accuracy_rejections": self.accuracy_rejections,
            "patterns": {
                sig: {
                    "complete": ps.complete,
                    "region_ids": list(ps.region_ids),
                    "speedup": num(ps.speedup),
                    "best": None if ps.best is None else [point_to_dict(p) for p in ps.best.sorted_points()],
                    "schemes": [
                        {
                            "latency_ms": num(r.latency_ms),
                            "success": r.success,
                            "insertion_points": [point_to_dict(p) for p in r.scheme.sorted_points()],
                        }
                        for r in ps.results
                    ],
                }
                for sig, ps in self.patterns.items()
            },
        }

    def save(self, path: str | os.PathLike) -> None:
        """Atomically write the state as YAML."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(yaml.safe_dump(self.to_dict(), sort_keys=False))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AutotuneState":
        """Read a state file. Raises ``ValueError`` when it is malformed."""
        try:
            data = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"state file {path} is not valid YAML: {e}") from e
        if not isinstance(data, dict) or "model_fingerprint" not in data:
            raise ValueError(f"state file {path} is not an autotuner state")

        def num(x) -> float | None:
            return None if x is None else float(x)

        st = cls(str(data["model_fingerprint"]), dict(data.get("settings") or {}))
        st.baseline_latency_ms = num(data.get("baseline_latency_ms"))
        st.baseline_noise = num(data.get("baseline_noise"))
        st.final_latency_ms = num(data.get("final_latency_ms"))
        st.benchmarks_run = int(data.get("benchmarks_run", 0))
        st.accuracy_rejections = int(data.get("accuracy_rejections", 0))
        for sig, entry in (data.get("patterns") or {}).items():
            ps = st.pattern(str(sig))
            ps.complete = bool(entry.get("complete"))
            ps.region_ids = [int(x) for x in entry.get("region_ids", [])]
            ps.speedup = num(entry.get("speedup"))
            if entry.get("best") is not None:
                ps.best = InsertionScheme.of(point_from_dict(p) for p in entry["best"])
            for s in entry.get("schemes", []):
                scheme = InsertionScheme.of(point_from_dict(p) for p in s.get("insertion_points", []))
                ps.results.append(SchemeResult(scheme, float(s["latency_ms"]), bool(s.get("success", True))))
        return st
