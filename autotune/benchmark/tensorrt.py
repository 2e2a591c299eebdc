"""TensorRT benchmark through the TensorRT Python API (when ``tensorrt`` is installed).

Follows TensorRT's documented flow: ``Builder`` -> strongly typed network ->
``OnnxParser.parse_from_file`` -> builder config (workspace limit, shared timing cache,
one optimization profile fixing dynamic inputs to the given shapes) ->
``build_serialized_network`` -> ``Runtime.deserialize_cuda_engine`` -> execution
context -> ``set_input_shape``/``set_tensor_address`` -> ``execute_async_v3``, timed
with CUDA events; the median of ``repeats`` runs is reported. Device memory and events
come from NVIDIA's ``cuda-python`` bindings.

TensorRT is not installed on the machines this package was developed on; this backend
was written against the documented API and has not been exercised here.

Example::

    >>> bench = TensorRTBenchmark({"x": (1, 3, 224, 224)})   # doctest: +SKIP
    >>> bench.run("model.onnx").median_ms                      # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from .base import Benchmark, BenchmarkError, BenchmarkResult, BenchmarkUnavailable


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise BenchmarkUnavailable("the TensorRT benchmark needs NVIDIA's cuda-python package") from e
    return cudart


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BenchmarkError(f"CUDA runtime error {err}")
    return rest[0] if len(rest) == 1 else rest


class TensorRTBenchmark(Benchmark):
    """Builds and times TensorRT engines in-process.

    Args:
        input_shapes: concrete shape per input (used for the optimization profile).
        warmup / repeats: untimed and timed executions.
        timing_cache: file the shared timing cache is loaded from and saved to.
        workspace_bytes: builder workspace limit.
        plugin_libraries: shared libraries with custom plugins to load first.

    Raises:
        BenchmarkUnavailable: ``tensorrt`` or ``cuda-python`` is missing.
    """

    name = "tensorrt"

    def __init__(self, input_shapes: Mapping[str, Sequence[int]] | None = None, warmup: int = 10, repeats: int = 50, timing_cache: str | None = None, workspace_bytes: int = 4 << 30, plugin_libraries: Sequence[str] = ()):
        try:
            import tensorrt as trt
        except ImportError as e:
            raise BenchmarkUnavailable("TensorRT's Python package 'tensorrt' is not installed") from e
        self.trt = trt
        self.cudart = _cudart()
        self.input_shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()}
        self.warmup = warmup
        self.repeats = max(1, repeats)
        self.timing_cache_path = timing_cache
        self.workspace_bytes = workspace_bytes
        self.logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self.logger, "")
        self.builder = trt.Builder(self.logger)
        self.runtime = trt.Runtime(self.logger)
        for lib in plugin_libraries:
            self.builder.get_plugin_registry().load_library(lib)
        config = self.builder.create_builder_config()
        blob = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
        self.timing_cache = config.create_timing_cache(blob)

    def _build(self, model_path: str | os.PathLike):
        trt = self.trt
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = self.builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(model_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BenchmarkError(f"TensorRT could not parse {model_path}: {errors}")
        config = self.builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        config.set_timing_cache(self.timing_cache, False)
        profile = self.builder.create_optimization_profile()
        dynamic = False
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            if any(d < 0 for d in tensor.shape):
                shape = self.input_shapes.get(tensor.name)
                if shape is None:
                    raise BenchmarkError(f"input {tensor.name} is dynamic: give its shape (--input-shapes)")
                profile.set_shape(tensor.name, shape, shape, shape)
                dynamic = True
        if dynamic:
            config.add_optimization_profile(profile)
        serialized = self.builder.build_serialized_network(network, config)
        if serialized is None:
            raise BenchmarkError(f"TensorRT failed to build an engine for {model_path}")
        return self.runtime.deserialize_cuda_engine(serialized)

    def run(self, model_path: str | os.PathLike) -> BenchmarkResult:
        trt, cudart = self.trt, self.cudart
        engine = self._build(model_path)
        context = engine.create_execution_context()
        buffers = []
        stream = _check(cudart.cudaStreamCreate())
        start, end = _check(cudart.cudaEventCreate()), _check(cudart.cudaEventCreate())
        try:
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT and name in self.input_shapes:
                    context.set_input_shape(name, self.input_shapes[name])
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                shape = context.get_tensor_shape(name)
                count = 1
                for d in shape:
                    count *= max(int(d), 1)
                itemsize = trt.nptype(engine.get_tensor_dtype(name))().itemsize if engine.get_tensor_dtype(name) != trt.DataType.FP4 else 1
                ptr = _check(cudart.cudaMalloc(max(count * itemsize, 1)))
                buffers.append(ptr)
                context.set_tensor_address(name, int(ptr))
            for _ in range(self.warmup):
                context.execute_async_v3(stream)
            _check(cudart.cudaStreamSynchronize(stream))
            samples = []
            for _ in range(self.repeats):
                _check(cudart.cudaEventRecord(start, stream))
                context.execute_async_v3(stream)
                _check(cudart.cudaEventRecord(end, stream))
                _check(cudart.cudaEventSynchronize(end))
                samples.append(float(_check(cudart.cudaEventElapsedTime(start, end))))
        finally:
            for ptr in buffers:
                cudart.cudaFree(ptr)
            cudart.cudaEventDestroy(start)
            cudart.cudaEventDestroy(end)
            cudart.cudaStreamDestroy(stream)
        return BenchmarkResult.from_samples(samples, self.name)

    def close(self) -> None:
        if self.timing_cache_path:
            Path(self.timing_cache_path).write_bytes(bytes(self.timing_cache.serialize()))
