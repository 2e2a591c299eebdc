"""ONNX Runtime benchmark (CPU provider by default, any installed provider by name).

Each run creates a session with full graph optimizations (so ONNX Runtime's Q/DQ
fusions apply), runs ``warmup`` inferences, then times ``repeats`` inferences one by
one and reports their median.

Example::

    >>> bench = OrtBenchmark(feeds, warmup=5, repeats=20)    # doctest: +SKIP
    >>> bench.run("model.onnx").median_ms                     # doctest: +SKIP
    1.84
"""

from __future__ import annotations

import os
import time
from typing import Mapping, Sequence

import numpy as np

from .base import Benchmark, BenchmarkError, BenchmarkResult, BenchmarkUnavailable


class OrtBenchmark(Benchmark):
    """Times models with ONNX Runtime.

    Args:
        feeds: input name -> array fed to every run.
        provider: execution provider name, e.g. ``CPUExecutionProvider``.
        warmup: untimed runs before timing.
        repeats: timed runs; the median is reported.
        intra_op_threads: ONNX Runtime intra-op threads (0 = its default).

    Raises:
        BenchmarkUnavailable: the provider is not available in this ONNX Runtime.
    """

    name = "ort"

    def __init__(self, feeds: Mapping[str, np.ndarray], provider: str = "CPUExecutionProvider", warmup: int = 10, repeats: int = 50, intra_op_threads: int = 1):
        import onnxruntime as ort

        available = ort.get_available_providers()
        if provider not in available:
            raise BenchmarkUnavailable(f"ONNX Runtime provider {provider!r} is not available (available: {', '.join(available)})")
        self.ort = ort
        self.feeds = dict(feeds)
        self.provider = provider
        self.warmup = warmup
        self.repeats = max(1, repeats)
        self.intra_op_threads = intra_op_threads
        self.name = f"ort:{provider.replace('ExecutionProvider', '')}"

    def session(self, model_path: str | os.PathLike):
        """An optimized session for the model: ``ORT_ENABLE_ALL`` (ORT's default, so its Q/DQ fusions apply)
        and ORT's default ``session.qdq_matmulnbits_accuracy_level`` (4; it only matters for blocked INT4
        weights fused into ``MatMulNBits``, which autotune never writes: its Q/DQ are INT8 or FP8)."""
        so = self.ort.SessionOptions()
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = self.intra_op_threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        return self.ort.InferenceSession(str(model_path), so, providers=[self.provider])

    def run(self, model_path: str | os.PathLike) -> BenchmarkResult:
        try:
            sess = self.session(model_path)
            names = {i.name for i in sess.get_inputs()}
            feeds = {k: v for k, v in self.feeds.items() if k in names}
            for _ in range(self.warmup):
                sess.run(None, feeds)
            samples: list[float] = []
            for _ in range(self.repeats):
                t0 = time.perf_counter()
                sess.run(None, feeds)
                samples.append((time.perf_counter() - t0) * 1e3)
        except Exception as e:  # noqa: BLE001 - ORT raises many exception types
            raise BenchmarkError(f"ONNX Runtime could not run {model_path}: {e}") from e
        return BenchmarkResult.from_samples(samples, self.name)


def available_providers() -> Sequence[str]:
    """Execution providers of the installed ONNX Runtime."""
    import onnxruntime as ort

    return ort.get_available_providers()
