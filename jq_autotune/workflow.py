"""End-to-end autotuning run: files, calibration, benchmarks, progress, resume.

:func:`jq_autotune` is what ``python -m jq_autotune`` calls. Output directory layout::

    baseline.onnx               FP32 model as measured (after preprocessing)
    optimized_final.onnx        best placement with calibrated (or default) scales
    autotuner_state.yaml        progress, saved after every region (resume reads it)
    pattern_cache.yaml          best diverse schemes per pattern (seed for later runs)
    measurements.csv            one line per benchmark
    latency_per_scheme.png      plot of every measured scheme
    candidate.onnx              the model of the scheme measured last (scratch)

Example::

    >>> report = autotune("model.onnx", "out", Config.for_mode("quick"))   # doctest: +SKIP
    >>> print(report.table())                                               # doctest: +SKIP
"""

from __future__ import annotations

import csv
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import onnx

from .accuracy import AccuracyGuard
from .autotuner import QDQAutotuner
from .benchmark import Benchmark, BenchmarkError, make_benchmark, random_inputs
from .cache import PatternCache
from .calibration import (
    LATENCY_ONLY_WARNING,
    calibrate_ranges,
    is_scales_file,
    load_calibration_inputs,
    load_scales_file,
    params_from_ranges,
)
from .config import Config
from .model_io import ModelWriter, load_model, resolve_input_shapes
from .plot import plot_latencies
from .qdq import get_quantized_tensors
from .rules import placement_rules

log = logging.getLogger("autotune")

STATE_FILE = "autotuner_state.yaml"
CACHE_FILE = "pattern_cache.yaml"


@dataclass
class AutotuneReport:
    """Outcome of a run (also printed as the final table)."""

    output_dir: Path
    backend: str
    baseline_ms: float
    final_ms: float
    baseline_noise: float | None
    regions_total: int
    regions_profiled: int
    unique_patterns: int
    patterns_with_qdq: int
    benchmarks_run: int
    qdq_tensors: int
    calibrated: bool
    resumed: bool
    rejected_for_accuracy: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.baseline_ms / self.final_ms if self.final_ms > 0 else float("nan")

    def table(self) -> str:
        """The final summary table (plain text)."""
        rows = [
            ("backend", self.backend),
            ("baseline latency (no Q/DQ)", f"{self.baseline_ms:.3f} ms"),
            ("best latency (optimized)", f"{self.final_ms:.3f} ms"),
            ("speedup", f"{self.speedup:.3f}x"),
            ("run-to-run noise (baseline)", "n/a" if self.baseline_noise is None else f"{100 * self.baseline_noise:.1f} %"),
            ("regions profiled / total", f"{self.regions_profiled} / {self.regions_total}"),
            ("unique patterns (with Q/DQ)", f"{self.unique_patterns} ({self.patterns_with_qdq})"),
            ("quantized activation tensors", str(self.qdq_tensors)),
            ("benchmarks run", str(self.benchmarks_run)),
            ("schemes rejected (accuracy)", str(self.rejected_for_accuracy)),
            ("scales", "calibrated" if self.calibrated else "DEFAULT (latency only)"),
            ("resumed from state", "yes" if self.resumed else "no"),
        ]
        w = max(len(k) for k, _ in rows)
        line = "+" + "-" * (w + 2) + "+" + "-" * 28 + "+"
        body = [f"| {k:<{w}} | {v:<26} |" for k, v in rows]
        return "\n".join([line, *body, line])


def autotune(
    model_path: str | Path,
    output_dir: str | Path,
    config: Config | None = None,
    backend: str = "ort",
    benchmark: Benchmark | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    calibration_data: str | Path | None = None,
    pattern_cache: str | Path | None = None,
    qdq_baseline: str | Path | None = None,
    node_filter: Sequence[str] | None = None,
    provider: str = "CPUExecutionProvider",
    threads: int = 1,
    timing_cache: str | None = None,
    plugin_libraries: Sequence[str] = (),
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> AutotuneReport:
    """Autotune ``model_path`` and write results into ``output_dir`` (see module doc).

    Raises:
        jq_autotune.model_io.ModelError: unreadable model.
        ValueError: bad input shapes, calibration data, cache, filter or state file.
        jq_autotune.benchmark.BenchmarkUnavailable: the backend is not installed.
        KeyboardInterrupt: after saving the state, so a rerun resumes.
    """
    from tqdm import tqdm

    config = config or Config()
    out = Path(output_dir)
    rules = placement_rules(backend, config.default_quant_type, config.reduce_range)
    model, base_dir = load_model(model_path)

    samples = None
    scales_file = calibration_data is not None and is_scales_file(calibration_data)
    if calibration_data is not None and not scales_file:
        samples = load_calibration_inputs(calibration_data)
    shapes = resolve_input_shapes(model, input_shapes or {}, samples[0] if samples else None)

    tuner = QDQAutotuner(model, base_dir, config, rules, shapes, node_filter)
    out.mkdir(parents=True, exist_ok=True)
    # one writer: scheme models and results share the (copied) external data files
    final_writer = work = ModelWriter(out, base_dir, tuner.model)
    for note in tuner.notes:
        echo(f"[autotune] preprocessing: {note}")
    if rules.weight_qmax != 127:
        why = "requested" if config.reduce_range else "ONNX Runtime's u8s8 kernels saturate int16 pair sums on this x86 CPU without VNNI"
        echo(f"[autotune] INT8 weights use 7 bits (|q| <= {rules.weight_qmax}): {why}; --reduce-range off keeps 8 bits")
    baseline_path = final_writer.save(tuner.model, "baseline.onnx")

    # scales: calibration > jq scales file > default (latency only)
    if samples is not None:
        echo(f"[autotune] calibrating {len(samples)} sample(s) with ONNX Runtime (MinMax) on the FP32 model")
        ranges = calibrate_ranges(baseline_path, samples)
        tuner.params = params_from_ranges(ranges, rules, None, config.default_q_scale, config.default_q_zero_point)
    elif scales_file:
        ranges, explicit = load_scales_file(calibration_data)  # type: ignore[arg-type]
        tuner.params = params_from_ranges(ranges, rules, explicit, config.default_q_scale, config.default_q_zero_point)
        echo(f"[autotune] using {len(ranges) + len(explicit)} scales from {calibration_data}")
    else:
        banner = "!" * 100
        echo(f"{banner}\n{LATENCY_ONLY_WARNING.format(scale=config.default_q_scale, zp=config.default_q_zero_point)}\n{banner}")

    # time with a real sample when it has the tuned shapes, else with random data
    if samples and all(tuple(samples[0][k].shape) == tuple(v) for k, v in shapes.items() if k in samples[0]):
        feeds = dict(samples[0])
    else:
        feeds = random_inputs(tuner.model, shapes, seed=config.seed)
    bench = benchmark or make_benchmark(backend, feeds, config.warmup_runs, config.timing_runs, provider, threads, timing_cache, plugin_libraries)

    guard = None
    if samples is not None and config.min_output_cosine > 0:
        guard = AccuracyGuard(baseline_path, samples[: max(1, config.accuracy_samples)], config.min_output_cosine)
        echo(f"[autotune] accuracy guard: schemes need mean output cosine >= {config.min_output_cosine} to FP32 on {len(guard.samples)} calibration sample(s)")

    if pattern_cache:
        tuner.initialize(pattern_cache=PatternCache.load(pattern_cache, config.pattern_cache_minimum_distance, config.pattern_cache_max_entries_per_pattern))
    if qdq_baseline:
        qpath = Path(qdq_baseline)
        if not qpath.is_file():
            raise ValueError(f"--qdq-baseline model not found: {qpath}")
        seeded = tuner.import_qdq_baseline(get_quantized_tensors(onnx.load(str(qpath), load_external_data=False)))
        echo(f"[autotune] imported Q/DQ placement from {qpath}: seeds for {seeded} pattern(s)")

    state_path = out / STATE_FILE
    resumed = False
    if state_path.exists():
        tuner.load_state(state_path)
        resumed = True
        done = sum(1 for p in tuner.state.patterns.values() if p.complete)
        echo(f"[autotune] resuming from {state_path}: {done} pattern(s) already complete")

    csv_path = out / "measurements.csv"
    new_csv = not csv_path.exists()
    with open(csv_path, "a", newline="") as fcsv:
        writer = csv.writer(fcsv)
        if new_csv:
            writer.writerow(["pattern", "region", "scheme", "points", "latency_ms", "success", "note"])

        def measure(label: str, scheme) -> tuple[float, bool, str]:
            path = work.save(tuner.build_model(True), "candidate.onnx")
            if guard is not None and not scheme.is_empty:
                ok, score = guard.accepts(path)
                if not ok:  # inaccurate: never timed, never kept
                    return float("inf"), False, f"rejected: output cosine {score:.4f} < {guard.min_cosine}"
            try:
                res = bench.run(path)
                return res.median_ms, True, ""
            except BenchmarkError as e:
                log.warning("benchmark failed for %s: %s", label, e)
                return float("inf"), False, f"benchmark failed: {str(e).splitlines()[0][:200]}"

        try:
            if tuner.state.baseline_latency_ms is None:
                runs = [bench.run(baseline_path).median_ms for _ in range(3)]
                med = statistics.median(runs)
                tuner.submit_baseline(med, (max(runs) - min(runs)) / med if med > 0 else None)
                tuner.state.benchmarks_run += 3
                tuner.save_state(state_path)
            echo(f"[autotune] baseline {tuner.state.baseline_latency_ms:.3f} ms on {bench.name}; {len(tuner.regions)} regions, {len(tuner.patterns)} unique patterns")

            for k, region in enumerate(tuner.regions):
                sig = tuner.signature_of(region)
                label = f"region {k + 1}/{len(tuner.regions)} ({region.type.name.lower()} #{region.id}, pattern {sig[:8]})"
                if not tuner.candidates[sig]:
                    ps = tuner.state.pattern(sig)
                    if not ps.complete:
                        ps.complete, ps.best, ps.speedup = True, None, None
                    continue
                if not tuner.set_profile_region(region, commit=False):
                    continue
                bar = tqdm(total=config.schemes_per_region, desc=label, disable=not progress, leave=False, unit="scheme")
                ps = tuner.state.pattern(sig)
                try:
                    while (scheme := tuner.generate()) is not None:
                        latency, ok, note = measure(label, scheme)
                        rejected = note.startswith("rejected")
                        tuner.submit(latency, ok, benchmarked=not rejected)
                        tuner.state.accuracy_rejections += int(rejected)
                        writer.writerow([sig, region.id, scheme.hash, len(scheme), f"{latency:.4f}", ok, note])
                        fcsv.flush()
                        best = min((r.latency_ms for r in ps.results if r.success), default=float("nan"))
                        bar.n = len(ps.results)
                        bar.set_postfix(best_ms=f"{best:.3f}")
                        bar.refresh()
                finally:
                    bar.close()
                tuner.commit_current()
                tuner.current = None
                tuner.save_state(state_path)
                tuner.pattern_cache.save(out / CACHE_FILE)
                chosen = "no Q/DQ" if ps.best is None or ps.best.is_empty else f"{len(ps.best)} point(s), {ps.speedup:.3f}x"
                echo(f"[autotune] {label}: {len(ps.results)} schemes measured -> {chosen}")
        except KeyboardInterrupt:
            tuner.save_state(state_path)
            echo(f"[autotune] interrupted: state saved to {state_path}; rerun the same command to resume")
            raise

    final_model = tuner.build_model(True)
    final_path = final_writer.save(final_model, "optimized_final.onnx")
    # baseline and final measured alternately, so both see the same machine conditions
    base_runs, final_runs = [], []
    for _ in range(3):
        base_runs.append(bench.run(baseline_path).median_ms)
        final_runs.append(bench.run(final_path).median_ms)
    tuner.state.benchmarks_run += 6
    tuner.state.final_latency_ms = statistics.median(final_runs)
    baseline_ms = statistics.median(base_runs)
    tuner.save_state(state_path)
    tuner.pattern_cache.save(out / CACHE_FILE)
    bench.close()
    plot = plot_latencies(tuner.state, out / "latency_per_scheme.png", title=f"{Path(model_path).name} on {bench.name}")
    if plot is None:
        echo("[autotune] matplotlib not installed: latency plot skipped")

    patterns_qdq = sum(1 for p in tuner.state.patterns.values() if p.best is not None and not p.best.is_empty)
    n_tensors = len({p.tensor for p in tuner.resolved_points(include_current=False)})
    report = AutotuneReport(
        output_dir=out,
        backend=bench.name,
        baseline_ms=baseline_ms,
        final_ms=tuner.state.final_latency_ms,
        baseline_noise=tuner.state.baseline_noise,
        regions_total=len(tuner.regions),
        regions_profiled=sum(1 for r in tuner.regions if tuner.candidates[tuner.signature_of(r)]),
        unique_patterns=len(tuner.patterns),
        patterns_with_qdq=patterns_qdq,
        benchmarks_run=tuner.state.benchmarks_run,
        qdq_tensors=n_tensors,
        calibrated=tuner.params.calibrated,
        resumed=resumed,
        rejected_for_accuracy=tuner.state.accuracy_rejections,
        notes=list(tuner.notes),
    )
    echo(report.table())
    if not tuner.params.calibrated:
        echo("[autotune] WARNING: default scales were used; optimized_final.onnx is for latency only.")
    return report

