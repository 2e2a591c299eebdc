"""TensorRT benchmark through the TensorRT Python API (when ``tensorrt`` and ``cuda-python`` are installed).

Each model is built and timed by :mod:`onnx_toolbox.tensorrt` (the implementation ``jq.export`` uses too):
a strongly typed network, one optimization profile that fixes every dynamic input to the tuned shape
(``min = opt = max``), a timing cache shared by all builds of the run (the ``--timing-cache`` file, or a
temporary one), and the median of ``repeats`` executions timed with CUDA events after ``warmup`` untimed ones.

TensorRT is not installed on the machines this package was developed on; this backend was written against
the documented API and has not been exercised here.

Example::

    >>> bench = TensorRTBenchmark({"x": (1, 3, 224, 224)})   # doctest: +SKIP
    >>> bench.run("model.onnx").median_ms                      # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

from onnx_toolbox.tensorrt import BuildOptions, build_engine, cuda_python_available, tensorrt_available, time_engine

from .base import Benchmark, BenchmarkError, BenchmarkResult, BenchmarkUnavailable


class TensorRTBenchmark(Benchmark):
    """Builds and times TensorRT engines in-process.

    Args:
        input_shapes: concrete shape per input (dynamic inputs are fixed to it in the optimization profile).
        warmup / repeats: untimed and timed executions.
        timing_cache: file the shared timing cache is read from and written to (None: a temporary file).
        workspace_bytes: builder workspace limit.
        plugin_libraries: shared libraries with custom plugins to load first.

    Raises:
        BenchmarkUnavailable: ``tensorrt`` or ``cuda-python`` is missing.
    """

    name = "tensorrt"

    def __init__(self, input_shapes: Mapping[str, Sequence[int]] | None = None, warmup: int = 10, repeats: int = 50, timing_cache: str | None = None, workspace_bytes: int = 4 << 30, plugin_libraries: Sequence[str] = ()):
        if not tensorrt_available():
            raise BenchmarkUnavailable("TensorRT's Python package 'tensorrt' is not installed")
        if not cuda_python_available():
            raise BenchmarkUnavailable("the TensorRT benchmark needs NVIDIA's cuda-python package")
        self.input_shapes = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
        self.warmup = warmup
        self.repeats = max(1, repeats)
        self._scratch = None if timing_cache else tempfile.TemporaryDirectory(prefix="autotune_trt_")
        cache = timing_cache or str(Path(self._scratch.name) / "timing.cache")
        self.options = BuildOptions(workspace_bytes=workspace_bytes, timing_cache=cache,
                                    plugin_libraries=tuple(str(p) for p in plugin_libraries),
                                    profile={k: (s, s, s) for k, s in self.input_shapes.items()})

    def run(self, model_path: str | os.PathLike) -> BenchmarkResult:
        try:
            engine = build_engine(model_path, None, self.options)
            timing = time_engine(engine, self.input_shapes, iterations=self.repeats, warmup=self.warmup)
        except (RuntimeError, ValueError) as e:
            raise BenchmarkError(f"TensorRT could not build or run {model_path}: {e}") from e
        return BenchmarkResult.from_samples(timing.samples_ms, self.name)

    def close(self) -> None:
        """The timing cache file is written after every build; a temporary one is deleted here."""
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None
