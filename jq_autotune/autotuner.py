"""The Q/DQ autotuner: regions, patterns, scheme generation, export and state.

:class:`QDQAutotuner` follows the seed's low-level API::

    tuner = QDQAutotuner(model, config=Config(), rules=placement_rules("ort", "int8"),
                         input_shapes={"x": (1, 3, 224, 224)})
    tuner.initialize(config, pattern_cache)
    tuner.submit_baseline(bench.run(tuner.export_onnx("baseline.onnx", insert_qdq=False)).median_ms)
    for region in tuner.regions:
        tuner.set_profile_region(region, commit=True)
        while (scheme := tuner.generate()) is not None:
            path = tuner.export_onnx("candidate.onnx", insert_qdq=True)
            tuner.submit(bench.run(path).median_ms)
    tuner.set_profile_region(None, commit=True)
    tuner.export_onnx("optimized_final.onnx", insert_qdq=True)

A scheme being profiled is applied to *every* region of the current pattern (the
signal is then as strong as the pattern is frequent), on top of the committed best
schemes of the patterns profiled before. High-level orchestration (files, progress
bars, resume) lives in :mod:`jq_autotune.workflow`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import random
from pathlib import Path
from typing import Sequence

import onnx

from .cache import PatternCache
from .config import Config
from .graph import GraphIndex
from .insertion_points import (
    InsertionPoint,
    ResolvedInsertionPoint,
    candidate_points,
    merge_resolved,
    resolve_point,
    resolve_points,
)
from .model_io import ModelWriter, fingerprint, preprocess, with_static_inputs
from .pattern import CanonicalRegion, canonicalize
from .qdq import QuantParams, QuantizedTensor, WeightQuantizer, insert_qdq
from .region import Region
from .region_search import CombinedRegionSearch, profiling_order
from .rules import WEIGHTED_OPS, PlacementRules, placement_rules
from .scheme import InsertionScheme, SchemeGenerator, SchemeResult, select_best
from .state import AutotuneState, PatternState


class NodeFilterError(ValueError):
    """A node filter matched no node of the model."""


class QDQAutotuner:
    """Region/pattern-based Q/DQ placement search over one ONNX model.

    Args:
        model: the FP32 model (loaded without external data is fine).
        base_dir: directory external data is relative to.
        config: :class:`Config`.
        rules: backend placement rules (default: ONNX Runtime, ``config.default_quant_type``).
        input_shapes: concrete shape per data input (for shape inference / skip rules).
        node_filter: wildcard patterns over node names or op types; only regions with a
            matching node are profiled (``None``: all regions).

    Attributes:
        model: the preprocessed FP32 model every scheme is built on.
        notes: what preprocessing changed.
        root: the region tree; ``regions``: regions to profile, LEAF first.
        views: region id -> canonical view; ``patterns``: signature -> views.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        base_dir: str = "",
        config: Config | None = None,
        rules: PlacementRules | None = None,
        input_shapes: dict[str, tuple[int, ...]] | None = None,
        node_filter: Sequence[str] | None = None,
    ):
        self.config = config or Config()
        self.rules = rules or placement_rules("ort", self.config.default_quant_type, self.config.reduce_range)
        self.base_dir = base_dir
        self.model, self.notes = preprocess(model, base_dir, self.rules.min_opset, self.rules.clean_gemm)
        analysis = with_static_inputs(self.model, input_shapes or {})
        self.graph = GraphIndex(analysis, infer_shapes=True, base_dir=base_dir)
        self.root: Region = CombinedRegionSearch(self.graph, self.config).search()
        all_regions = profiling_order(self.root)
        self.views: dict[int, CanonicalRegion] = {}
        for r in all_regions:
            self.views[r.id] = canonicalize(r, self.graph)
        self.regions: list[Region] = self._filter(all_regions, node_filter)
        self.patterns: dict[str, list[CanonicalRegion]] = {}
        for r in self.regions:
            v = self.views[r.id]
            self.patterns.setdefault(v.signature, []).append(v)
        self.candidates: dict[str, list[InsertionPoint]] = {
            sig: candidate_points(views[0], self.graph, self.rules) for sig, views in self.patterns.items()
        }
        self.params = QuantParams(self.config.default_q_scale, self.config.default_q_zero_point)
        self.weights = WeightQuantizer(self.graph, self.rules)
        self.state = AutotuneState(fingerprint(self.model), self.settings())
        self.pattern_cache = PatternCache(self.config.pattern_cache_minimum_distance, self.config.pattern_cache_max_entries_per_pattern)
        self.imported: dict[str, QuantizedTensor] = {}
        self.current: Region | None = None
        self._generator: SchemeGenerator | None = None
        self._replay: dict[str, SchemeResult] = {}
        self._pending: InsertionScheme | None = None

    # ------------------------------------------------------------- setup
    def settings(self) -> dict:
        """Settings that must match for a saved state to be resumed."""
        c = self.config
        settings = {
            "backend": self.rules.backend,
            "quant_type": self.rules.quant_type,
            "schemes_per_region": c.schemes_per_region,
            "performance_threshold": c.performance_threshold,
            "seed": c.seed,
            "maximum_sequence_region_size": c.maximum_sequence_region_size,
            "minimum_topdown_search_size": c.minimum_topdown_search_size,
            "min_output_cosine": c.min_output_cosine,
            "accuracy_samples": c.accuracy_samples,
        }
        if self.rules.weight_qmax != 127:  # listed only when not the default, so older state files still match
            settings["weight_qmax"] = self.rules.weight_qmax
        return settings

    def _filter(self, regions: list[Region], patterns: Sequence[str] | None) -> list[Region]:
        if not patterns:
            return regions
        matched = {
            i
            for i in self.graph.compute_nodes
            if any(fnmatch.fnmatchcase(self.graph.nodes[i].name, p) or fnmatch.fnmatchcase(self.graph.nodes[i].op_type, p) for p in patterns)
        }
        if not matched:
            raise NodeFilterError(f"the node filter {list(patterns)} matches no node of the model")
        return [r for r in regions if r.all_nodes() & matched]

    def initialize(self, config: Config | None = None, pattern_cache: PatternCache | None = None) -> None:
        """Set the config (optional) and a pattern cache whose schemes seed the search."""
        if config is not None and config != self.config:
            self.config = config
        if pattern_cache is not None:
            self.pattern_cache.merge(pattern_cache)

    def import_qdq_baseline(self, quantized: dict[str, QuantizedTensor]) -> int:
        """Seed each pattern with the points an existing Q/DQ model quantizes.

        ``quantized`` comes from :func:`jq_autotune.qdq.get_quantized_tensors`. Returns the
        number of patterns that received a seed.
        """
        self.imported = dict(quantized)
        return sum(1 for sig in self.patterns if not self.imported_scheme(sig).is_empty)

    def imported_scheme(self, signature: str) -> InsertionScheme:
        """The imported placement expressed as a scheme of ``signature`` (maybe empty)."""
        if not self.imported:
            return InsertionScheme.empty()
        view = self.patterns[signature][0]
        keep = []
        for p in self.candidates[signature]:
            resolved = resolve_point(p, view, self.graph)
            if resolved and all(self._is_imported(r) for r in resolved):
                keep.append(p)
        return InsertionScheme.of(keep)

    def _is_imported(self, r: ResolvedInsertionPoint) -> bool:
        q = self.imported.get(r.tensor)
        if q is None:
            return False
        if r.node is None:
            return True
        name = self.graph.nodes[r.node].name
        return not name or name in q.consumers

    def rule_seeds(self, signature: str) -> list[InsertionScheme]:
        """Backend rule seeds: the fusion-friendly placement, then every candidate.

        ONNX Runtime: data inputs *and* outputs of Conv/MatMul/Gemm (QLinear* fusions
        need the output Q). TensorRT: data inputs of Conv/MatMul/Gemm only.
        """
        view = self.patterns[signature][0]
        g = self.graph
        chosen = []
        for p in self.candidates[signature]:
            for r in resolve_point(p, view, g):
                consumer_ops = {g.nodes[c].op_type for c, _ in g.consumers.get(r.tensor, ())} if r.node is None else {g.nodes[r.node].op_type}
                producer = g.producer.get(r.tensor)
                from_weighted = producer is not None and g.nodes[producer].op_type in WEIGHTED_OPS
                if consumer_ops & WEIGHTED_OPS or (self.rules.backend == "ort" and from_weighted):
                    chosen.append(p)
                    break
        seeds = [InsertionScheme.of(chosen), InsertionScheme.of(self.candidates[signature])]
        return [s for s in seeds if not s.is_empty]

    # ------------------------------------------------------------- profiling loop
    def signature_of(self, region: Region) -> str:
        return self.views[region.id].signature

    def submit_baseline(self, latency_ms: float, noise: float | None = None) -> None:
        """Record the latency of the model without Q/DQ."""
        self.state.baseline_latency_ms = latency_ms
        self.state.baseline_noise = noise

    def set_profile_region(self, region: Region | None, commit: bool = True) -> bool:
        """Finish the current region (committing its pattern's best scheme when
        ``commit``) and start profiling ``region``. Returns False when ``region``'s
        pattern is already complete (nothing to measure)."""
        if commit and self.current is not None:
            self.commit_current()
        self.current = region
        self._generator = None
        self._pending = None
        if region is None:
            return False
        sig = self.signature_of(region)
        ps = self.state.pattern(sig)
        ps.region_ids = sorted({v.region.id for v in self.patterns[sig]})
        if ps.complete:
            return False
        seeds = list(self.pattern_cache.get_schemes(sig)) + [self.imported_scheme(sig)] + self.rule_seeds(sig)
        rng = random.Random(int(hashlib.sha256(f"{self.config.seed}:{sig}".encode()).hexdigest()[:16], 16))
        self._generator = SchemeGenerator(self.candidates[sig], self.config, rng, seeds)
        # schemes measured before an interruption are replayed, not re-measured
        self._replay = {r.scheme.hash: r for r in ps.results}
        ps.results = []
        return True

    def generate(self) -> InsertionScheme | None:
        """The next scheme to measure for the current pattern, or ``None`` when done."""
        if self._generator is None or self.current is None:
            return None
        ps = self.state.pattern(self.signature_of(self.current))
        while len(ps.results) < self.config.schemes_per_region:
            scheme = self._generator.propose(ps.results)
            if scheme is None:
                return None
            if scheme.hash in self._replay:
                ps.results.append(self._replay.pop(scheme.hash))
                continue
            self._pending = scheme
            return scheme
        return None

    def submit(self, latency_ms: float, success: bool = True, benchmarked: bool = True) -> None:
        """Record the measurement of the scheme returned by :meth:`generate`.

        ``benchmarked=False`` records a scheme rejected without timing it (accuracy guard).
        """
        if self._pending is None or self.current is None:
            raise RuntimeError("submit() without a pending scheme from generate()")
        ps = self.state.pattern(self.signature_of(self.current))
        ps.results.append(SchemeResult(self._pending, float(latency_ms), bool(success)))
        if benchmarked:
            self.state.benchmarks_run += 1
        self._pending = None

    def commit_current(self) -> PatternState | None:
        """Select the current pattern's best scheme (threshold applied) and mark it complete."""
        if self.current is None:
            return None
        ps = self.state.pattern(self.signature_of(self.current))
        if not ps.complete:
            ps.best, ps.speedup = select_best(ps.results, self.config.performance_threshold)
            ps.complete = True
            for r in ps.results:
                if r.success and not r.scheme.is_empty:
                    self.pattern_cache.add_scheme(self.signature_of(self.current), r.scheme, r.latency_ms)
        return ps

    # ------------------------------------------------------------- export
    def resolved_points(self, include_current: bool = True) -> frozenset[ResolvedInsertionPoint]:
        """Concrete Q/DQ locations: committed best schemes (+ the pending scheme)."""
        out: set[ResolvedInsertionPoint] = set()
        for sig, views in self.patterns.items():
            ps = self.state.patterns.get(sig)
            if ps is not None and ps.complete and ps.best is not None:
                out |= resolve_points(ps.best.points, views, self.graph)
        if include_current and self._pending is not None and self.current is not None:
            sig = self.signature_of(self.current)
            out |= resolve_points(self._pending.points, self.patterns[sig], self.graph)
        return merge_resolved(out)

    def build_model(self, insert_qdq_nodes: bool = True) -> onnx.ModelProto:
        """The FP32 model, or the model with the current Q/DQ placement."""
        if not insert_qdq_nodes:
            return self.model
        return insert_qdq(self.model, self.graph, self.resolved_points(), self.params, self.rules, self.weights)

    def export_onnx(self, path: str | os.PathLike | None, insert_qdq: bool = True, writer: ModelWriter | None = None) -> Path | bytes:
        """Write the model (see :meth:`build_model`) to ``path``; bytes when ``path`` is None."""
        model = self.build_model(insert_qdq)
        if path is None:
            return model.SerializeToString()
        path = Path(path)
        writer = writer or ModelWriter(path.parent, self.base_dir, self.model)
        return writer.save(model, path.name)

    # ------------------------------------------------------------- state
    def save_state(self, path: str | os.PathLike) -> None:
        """Write the progress (atomically).

        Measurements of the current pattern that were loaded from an earlier state but
        not replayed yet are written too, so an interrupted resume loses nothing.
        """
        pending = list(self._replay.values()) if self.current is not None else []
        if not pending:
            self.state.save(path)
            return
        ps = self.state.pattern(self.signature_of(self.current))
        kept = ps.results
        ps.results = kept + pending
        try:
            self.state.save(path)
        finally:
            ps.results = kept

    def load_state(self, path: str | os.PathLike) -> bool:
        """Resume from ``path`` if it belongs to this model and settings.

        Returns True when loaded. Raises ``ValueError`` when the file is for another model
        or other settings (delete it or choose another output directory).
        """
        saved = AutotuneState.load(path)
        if saved.model_fingerprint != self.state.model_fingerprint:
            raise ValueError(f"state file {path} belongs to a different model; use another --output or delete it")
        if saved.settings != self.state.settings:
            diff = {k: (saved.settings.get(k), v) for k, v in self.state.settings.items() if saved.settings.get(k) != v}
            raise ValueError(f"state file {path} was written with other settings {diff}; use another --output or delete it")
        self.state = saved
        return True

    def region_tree_lines(self) -> list[str]:
        """Indented description of the region tree with signatures (for inspection)."""
        lines: list[str] = []

        def visit(r: Region, depth: int) -> None:
            sig = self.views[r.id].signature[:8] if r.id in self.views else "-"
            lines.append("  " * depth + f"{r.describe(self.graph)} pattern={sig}")
            for c in r.children:
                visit(c, depth + 1)

        visit(self.root, 0)
        return lines


__all__ = ["NodeFilterError", "QDQAutotuner"]
