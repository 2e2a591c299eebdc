"""Autotuner configuration (defaults follow ModelOpt's Q/DQ autotuner).

Example::

    >>> cfg = Config(performance_threshold=1.05, default_quant_type="int8")
    >>> cfg.performance_threshold
    1.05
    >>> Config.for_mode("quick").schemes_per_region
    30
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

QUANT_TYPES = ("int8", "fp8")
MODES = {
    # mode: (schemes per region, warm-up runs, timing runs)
    "quick": (30, 10, 50),
    "default": (50, 50, 100),
    "extensive": (200, 50, 200),
}


@dataclass(frozen=True)
class Config:
    """Every knob of one autotuning run.

    Performance:
        performance_threshold: a pattern keeps its best scheme only when
            ``empty_latency / best_latency >= performance_threshold``; otherwise it
            keeps no Q/DQ at all (1.02 = the best must be 2 % faster).
    Quantization:
        default_quant_type: ``"int8"`` or ``"fp8"``.
        default_q_scale / default_q_zero_point: used for activations when no
            calibration is given (the resulting model is for latency only).
        reduce_range: INT8 weights in 7 bits (``|q| <= 64``). ``None`` = automatic: on for
            the ONNX Runtime backend on x86 CPUs without VNNI, whose u8s8 kernels add
            product pairs in a saturating int16 (see :mod:`jq_autotune.host_cpu`).
    Region search:
        maximum_sequence_region_size: cap on nodes in a merged sequence / refined child.
        minimum_topdown_search_size: regions with at least this many nodes are refined.
        convergence_max_steps / convergence_probe_steps: how far a divergence looks for
            its reconvergence (and how much further it explores escaping branches).
    Scheme generation:
        schemes_per_region: schemes measured per unique pattern (including the empty one).
        top_percent_to_mutate / minimum_schemes_to_mutate: mutation parents are the best
            ``max(ceil(top% * n), min(minimum, n))`` measured schemes.
        maximum_mutations: each mutation adds/removes 1..this many points per kind.
        maximum_generation_attempts: tries to find a new, diverse scheme before giving up.
        scheme_minimum_distance: Hamming distance a new scheme must keep from every
            measured one (relaxed to 1, i.e. merely unique, once attempts run out).
    Pattern cache:
        pattern_cache_minimum_distance / pattern_cache_max_entries_per_pattern.
    Accuracy guard (only when calibration samples are given):
        min_output_cosine: a scheme whose outputs on ``accuracy_samples`` calibration
            samples have a mean (worst-output) cosine similarity to FP32 below this is
            rejected as failed; 0 disables the guard.
    Reproducibility:
        seed: random seed; each pattern derives its own stream from it and its signature,
            so a resumed run generates the same schemes as an uninterrupted one.
    """

    verbose: bool = False
    performance_threshold: float = 1.02
    default_q_scale: float = 0.1
    default_q_zero_point: int = 0
    default_quant_type: str = "int8"
    reduce_range: bool | None = None
    maximum_sequence_region_size: int = 10
    minimum_topdown_search_size: int = 10
    convergence_max_steps: int = 10
    convergence_probe_steps: int = 3
    schemes_per_region: int = 50
    top_percent_to_mutate: float = 0.1
    minimum_schemes_to_mutate: int = 10
    maximum_mutations: int = 3
    maximum_generation_attempts: int = 100
    scheme_minimum_distance: int = 2
    pattern_cache_minimum_distance: int = 4
    pattern_cache_max_entries_per_pattern: int = 32
    min_output_cosine: float = 0.99
    accuracy_samples: int = 4
    warmup_runs: int = 50
    timing_runs: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.default_quant_type not in QUANT_TYPES:
            raise ValueError(
                f"default_quant_type={self.default_quant_type!r}: expected one of {', '.join(QUANT_TYPES)}"
            )
        if self.performance_threshold <= 0:
            raise ValueError("performance_threshold must be > 0")
        if self.default_q_scale <= 0:
            raise ValueError("default_q_scale must be > 0 (TensorRT and ONNX need positive scales)")
        if not 0.0 <= self.top_percent_to_mutate <= 1.0:
            raise ValueError("top_percent_to_mutate must be within [0, 1]")
        for name in ("maximum_sequence_region_size", "minimum_topdown_search_size", "schemes_per_region"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    @classmethod
    def for_mode(cls, mode: str, **overrides) -> "Config":
        """Config for ``quick`` / ``default`` / ``extensive`` (schemes, warm-up, timing runs)."""
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
        schemes, warmup, timing = MODES[mode]
        base = {"schemes_per_region": schemes, "warmup_runs": warmup, "timing_runs": timing}
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes) -> "Config":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
