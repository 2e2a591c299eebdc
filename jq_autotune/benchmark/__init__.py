"""Pluggable latency benchmarks: ONNX Runtime, TensorRT Python API, trtexec.

Example::

    >>> from jq_autotune.benchmark import make_benchmark
    >>> bench = make_benchmark("ort", feeds={"x": x}, warmup=5, repeats=20)   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .base import Benchmark, BenchmarkError, BenchmarkResult, BenchmarkUnavailable, random_inputs
from .ort import OrtBenchmark

__all__ = [
    "Benchmark",
    "BenchmarkError",
    "BenchmarkResult",
    "BenchmarkUnavailable",
    "OrtBenchmark",
    "make_benchmark",
    "random_inputs",
]


def make_benchmark(
    kind: str,
    feeds: Mapping[str, np.ndarray],
    warmup: int = 10,
    repeats: int = 50,
    provider: str = "CPUExecutionProvider",
    threads: int = 1,
    timing_cache: str | None = None,
    plugin_libraries: Sequence[str] = (),
) -> Benchmark:
    """Create the ``ort`` / ``tensorrt`` / ``trtexec`` benchmark.

    Raises:
        ValueError: unknown kind.
        BenchmarkUnavailable: the backend is not installed here.
    """
    shapes = {k: tuple(v.shape) for k, v in feeds.items()}
    if kind == "ort":
        return OrtBenchmark(feeds, provider=provider, warmup=warmup, repeats=repeats, intra_op_threads=threads)
    if kind == "tensorrt":
        from .tensorrt import TensorRTBenchmark

        return TensorRTBenchmark(shapes, warmup=warmup, repeats=repeats, timing_cache=timing_cache, plugin_libraries=plugin_libraries)
    if kind == "trtexec":
        from .trtexec import TrtExecBenchmark

        extra = [f"--staticPlugins={lib}" for lib in plugin_libraries]
        return TrtExecBenchmark(shapes, warmup_ms=max(1, warmup) * 10, iterations=repeats, timing_cache=timing_cache, extra_args=extra)
    raise ValueError(f"unknown benchmark {kind!r}: expected ort, tensorrt or trtexec")
