"""The benchmark interface every backend implements.

Example::

    >>> class Fixed(Benchmark):
    ...     name = "fixed"
    ...     def run(self, model_path):
    ...         return BenchmarkResult.from_samples([1.0, 1.2, 1.1], self.name)
    >>> Fixed().run("m.onnx").median_ms
    1.1
"""

from __future__ import annotations

import abc
import os
import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import onnx


class BenchmarkError(RuntimeError):
    """A model could not be built or run by the backend (the scheme counts as failed)."""


class BenchmarkUnavailable(RuntimeError):
    """The backend is not installed or has no device here."""


@dataclass(frozen=True)
class BenchmarkResult:
    """Latency samples of one model on one backend.

    ``noise`` is the relative spread of the samples, (p90 - p10) / median.
    """

    median_ms: float
    samples_ms: tuple[float, ...]
    backend: str

    @classmethod
    def from_samples(cls, samples: Sequence[float], backend: str) -> "BenchmarkResult":
        if not samples:
            raise BenchmarkError("no timing samples")
        return cls(float(statistics.median(samples)), tuple(float(s) for s in samples), backend)

    @property
    def noise(self) -> float:
        if len(self.samples_ms) < 2 or self.median_ms <= 0:
            return 0.0
        p10, p90 = np.percentile(self.samples_ms, [10, 90])
        return float((p90 - p10) / self.median_ms)


class Benchmark(abc.ABC):
    """Measures the latency of an ONNX model file.

    Implementations raise :class:`BenchmarkError` for a model they cannot run and
    :class:`BenchmarkUnavailable` (at construction) when the backend is missing.
    """

    name: str = "benchmark"

    @abc.abstractmethod
    def run(self, model_path: str | os.PathLike) -> BenchmarkResult:
        """Median latency (ms) and samples of one inference of ``model_path``."""

    def close(self) -> None:
        """Release backend resources (timing caches are flushed here)."""


def random_inputs(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], seed: int = 0) -> dict[str, np.ndarray]:
    """Feed dict of random data with the given shapes and the inputs' element types.

    Integer inputs get 0/1 values (valid indices for any embedding, valid masks).
    """
    from onnx.helper import tensor_dtype_to_np_dtype

    rng = np.random.default_rng(seed)
    init = {t.name for t in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in init:
            continue
        dtype = tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        shape = tuple(shapes[vi.name])
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = np.ones(shape, dtype)
        else:
            feeds[vi.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds
