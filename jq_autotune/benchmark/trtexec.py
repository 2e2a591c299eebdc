"""TensorRT benchmark through the ``trtexec`` command-line tool (when installed).

Each run spawns ``trtexec --onnx=... --stronglyTyped`` and parses the median of the
``GPU Compute Time`` (or, failing that, ``Latency``) summary line. A shared timing cache
file makes repeated engine builds faster.

Example::

    >>> parse_trtexec_median("[I] GPU Compute Time: min = 0.9 ms, max = 1.4 ms, mean = 1 ms, median = 0.98 ms")
    0.98
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Mapping, Sequence

from .base import Benchmark, BenchmarkError, BenchmarkResult, BenchmarkUnavailable

_LINE = re.compile(r"(GPU Compute Time|Latency):.*?median\s*=\s*([0-9.eE+-]+)\s*ms")


def parse_trtexec_median(output: str) -> float:
    """Median latency (ms) from trtexec's performance summary.

    Raises:
        BenchmarkError: no summary line in ``output``.
    """
    found = {kind: float(value) for kind, value in _LINE.findall(output)}
    if "GPU Compute Time" in found:
        return found["GPU Compute Time"]
    if "Latency" in found:
        return found["Latency"]
    raise BenchmarkError("trtexec printed no latency summary (no 'median = X ms' line)")


class TrtExecBenchmark(Benchmark):
    """Times models with the ``trtexec`` binary.

    Args:
        input_shapes: concrete shape per input (for dynamic inputs, passed as ``--shapes``).
        warmup_ms / iterations: trtexec's ``--warmUp`` (milliseconds) and ``--iterations``.
        timing_cache: path of the shared timing cache file.
        executable: the trtexec binary (found on ``PATH`` by default).
        extra_args: more trtexec flags (e.g. ``--staticPlugins=libfoo.so``).

    Raises:
        BenchmarkUnavailable: trtexec is not on ``PATH``.
    """

    name = "trtexec"

    def __init__(self, input_shapes: Mapping[str, Sequence[int]] | None = None, warmup_ms: int = 200, iterations: int = 100, timing_cache: str | None = None, executable: str | None = None, extra_args: Sequence[str] = (), timeout_s: float = 1800):
        exe = executable or shutil.which("trtexec")
        if not exe:
            raise BenchmarkUnavailable("trtexec is not installed (not found on PATH)")
        self.exe = exe
        self.input_shapes = dict(input_shapes or {})
        self.warmup_ms = warmup_ms
        self.iterations = iterations
        self.timing_cache = timing_cache
        self.extra_args = list(extra_args)
        self.timeout_s = timeout_s

    def command(self, model_path: str | os.PathLike) -> list[str]:
        """The trtexec command line for one model."""
        cmd = [self.exe, f"--onnx={model_path}", "--stronglyTyped", f"--warmUp={self.warmup_ms}", f"--iterations={self.iterations}", "--noDataTransfers"]
        if self.input_shapes:
            cmd.append("--shapes=" + ",".join(f"{k}:{'x'.join(map(str, v))}" for k, v in self.input_shapes.items()))
        if self.timing_cache:
            cmd.append(f"--timingCacheFile={self.timing_cache}")
        return cmd + self.extra_args

    def run(self, model_path: str | os.PathLike) -> BenchmarkResult:
        try:
            proc = subprocess.run(self.command(model_path), capture_output=True, text=True, timeout=self.timeout_s)
        except subprocess.TimeoutExpired as e:
            raise BenchmarkError(f"trtexec timed out on {model_path}") from e
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-2000:]
            raise BenchmarkError(f"trtexec failed on {model_path} (exit {proc.returncode}):\n{tail}")
        median = parse_trtexec_median(proc.stdout)
        return BenchmarkResult(median, (median,), self.name)
