"""Build and time TensorRT engines from ONNX files through the TensorRT Python API (optional dependency).

Engines are built from *strongly typed* networks: precision comes from the graph's Q/DQ nodes and tensor types,
not from builder flags (TensorRT 11 has no other mode). An FP32 ONNX therefore runs its unquantized layers in
FP32; compare quantized engines against an FP16 graph. A timing cache file is read before and written after
each build, so repeated builds of similar graphs (an autotuner's schemes) skip kernel timing.

The flow is TensorRT's documented one: ``Builder`` -> network (``STRONGLY_TYPED``) -> ``OnnxParser.parse_from_file``
-> builder config (workspace limit, optimization level, timing cache, one optimization profile covering the
dynamic dimensions) -> ``build_serialized_network``. Timing deserializes the engine, binds device buffers
(NVIDIA's ``cuda-python``), runs ``warmup`` untimed executions and reports the median of ``iterations``
``execute_async_v3`` times measured between two CUDA events on one stream.

Importing this module never imports TensorRT; the functions that need it raise ``ImportError`` saying how to
install it. Nothing here has run on the machines this package was developed on (no TensorRT there): it is
written against the TensorRT 10 Python API reference.

Example:
  >>> opts = BuildOptions(timing_cache="trt.cache", profile={"input_0": ((1, 16), (8, 16), (32, 16))})
  >>> engine = build_engine("int8.onnx", "int8.engine", opts)
  >>> print(time_engine(engine, {"input_0": (8, 16)}).median_ms)
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from onnx_toolbox.shapes import static_dims

__all__ = ["BuildOptions", "TimingResult", "tensorrt_available", "cuda_python_available", "profile_shapes",
           "build_engine", "time_engine"]

_HINT = "install the optional extra: pip install 'jq-quant[tensorrt]' (TensorRT >= 10 and cuda-python, on a GPU host)"

# bytes per element of TensorRT I/O types (4-bit types pack two elements per byte)
_ITEMSIZE = {"FLOAT": 4, "HALF": 2, "BF16": 2, "INT8": 1, "UINT8": 1, "BOOL": 1, "INT32": 4, "INT64": 8,
             "FP8": 1, "E8M0": 1, "DOUBLE": 8, "FP4": 0.5, "INT4": 0.5}
_RANDOM_FILL = {"FLOAT": np.float32, "HALF": np.float16}

_loaded_plugin_libraries: set[str] = set()  # TensorRT's plugin registry is process-wide: load each library once


def tensorrt_available() -> bool:
    """True when ``import tensorrt`` works."""
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


def cuda_python_available() -> bool:
    """True when NVIDIA's ``cuda-python`` runtime bindings (needed by :func:`time_engine`) import."""
    try:
        _cudart()
    except ImportError:
        return False
    return True


def _trt():
    try:
        import tensorrt as trt
    except Exception as e:
        raise ImportError(f"TensorRT is not importable ({e}); {_HINT}") from None
    return trt


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise ImportError(f"cuda-python is not importable; {_HINT}") from None
    return cudart


@dataclasses.dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """Options of :func:`build_engine`.

    Attributes:
      workspace_bytes: workspace memory pool limit (None: TensorRT's default).
      optimization_level: builder optimization level 0-5.
      timing_cache: path of a timing cache file, read if present and written after the build.
      strongly_typed: build a strongly typed network (required by TensorRT 11; keep True for Q/DQ graphs).
      profile: ``{input: (min_shape, opt_shape, max_shape)}`` for inputs with dynamic dimensions.
      dynamic_dim: ``(min, opt, max)`` used for dynamic dimensions of inputs not in ``profile``.
      plugin_libraries: shared libraries with TensorRT plugins, loaded (once per process) before parsing.
      verbose: TensorRT's verbose log.
    """

    workspace_bytes: int | None = 1 << 30
    optimization_level: int = 3
    timing_cache: str | os.PathLike | None = None
    strongly_typed: bool = True
    profile: Mapping[str, tuple] | None = None
    dynamic_dim: tuple[int, int, int] = (1, 8, 32)
    plugin_libraries: tuple[str, ...] = ()
    verbose: bool = False

    def __post_init__(self):
        if not 0 <= self.optimization_level <= 5:
            raise ValueError(f"optimization_level must be in 0..5, got {self.optimization_level}")
        lo, opt, hi = self.dynamic_dim
        if not 1 <= lo <= opt <= hi:
            raise ValueError(f"dynamic_dim must be (min, opt, max) with 1 <= min <= opt <= max, got {self.dynamic_dim}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TimingResult:
    """Latency of an engine over ``iterations`` runs (milliseconds), the samples, and the input shapes used."""

    median_ms: float
    mean_ms: float
    min_ms: float
    p90_ms: float
    iterations: int
    shapes: dict
    samples_ms: tuple[float, ...] = ()

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], shapes: dict) -> "TimingResult":
        """Statistics of ``samples_ms`` (at least one)."""
        t = np.asarray(samples_ms, np.float64)
        if t.size == 0:
            raise ValueError("no timing samples")
        return cls(median_ms=float(np.median(t)), mean_ms=float(t.mean()), min_ms=float(t.min()),
                   p90_ms=float(np.percentile(t, 90)), iterations=int(t.size), shapes=dict(shapes),
                   samples_ms=tuple(float(s) for s in t))


def profile_shapes(model, options: BuildOptions = BuildOptions()) -> dict[str, tuple[tuple, tuple, tuple]]:
    """``{input: (min, opt, max)}`` for every graph input with a dynamic dimension.

    ``options.profile`` gives the shapes of named inputs (checked against the static dimensions); other
    dynamic inputs get ``options.dynamic_dim`` in each dynamic dimension. A dimension is dynamic when it is
    a ``dim_param``, unset, or a ``dim_value <= 0`` (see :mod:`onnx_toolbox.shapes`). Fully static inputs are
    left out (a profile names dynamic inputs only).

    Example:
      >>> profile_shapes("model.onnx")      # an input ("batch", 16)
      {'input_0': ((1, 16), (8, 16), (32, 16))}
    """
    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(os.fspath(model), load_external_data=False)
    given = dict(options.profile or {})
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        static = static_dims(inp.type) or []
        dynamic = any(d is None for d in static)
        if inp.name in given:
            mn, opt, mx = (tuple(int(v) for v in s) for s in given[inp.name])
            for s in (mn, opt, mx):
                if len(s) != len(static) or any(a is not None and a != b for a, b in zip(static, s)):
                    raise ValueError(f"profile shape {s} for input {inp.name!r} does not match its shape {static}")
            if dynamic:
                out[inp.name] = (mn, opt, mx)
        elif dynamic:
            out[inp.name] = tuple(tuple(options.dynamic_dim[k] if d is None else d for d in static) for k in range(3))
    return out


def _load_plugins(trt, logger, libraries: Sequence[str]) -> None:
    trt.init_libnvinfer_plugins(logger, "")
    for lib in libraries:
        if os.fspath(lib) not in _loaded_plugin_libraries:
            trt.get_plugin_registry().load_library(os.fspath(lib))
            _loaded_plugin_libraries.add(os.fspath(lib))


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike | None = None,
                 options: BuildOptions = BuildOptions(), **overrides) -> bytes:
    """Build a serialized TensorRT engine from an ONNX file.

    Args:
      onnx_path: the ONNX model (a Q/DQ graph or an FP16 baseline); external data next to it is read.
      engine_path: where to write the engine (None: only return it).
      options: :class:`BuildOptions`; keyword ``overrides`` replace single fields.

    Returns:
      The serialized engine bytes.

    Raises:
      ImportError: TensorRT is not installed (the message says how to install it).
      RuntimeError: the parser or builder failed (parser errors are listed).
    """
    trt = _trt()
    opts = dataclasses.replace(options, **overrides) if overrides else options
    logger = trt.Logger(trt.Logger.VERBOSE if opts.verbose else trt.Logger.WARNING)
    _load_plugins(trt, logger, opts.plugin_libraries)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if opts.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n" + "\n".join(errors))
    config = builder.create_builder_config()
    if opts.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_bytes))
    config.builder_optimization_level = opts.optimization_level
    cache_path = Path(opts.timing_cache) if opts.timing_cache is not None else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    shapes = profile_shapes(os.fspath(onnx_path), opts)
    if shapes:
        profile = builder.create_optimization_profile()
        for name, (mn, opt, mx) in shapes.items():
            profile.set_shape(name, mn, opt, mx)
        config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    if cache_path is not None:
        cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
    data = bytes(memoryview(engine))
    if engine_path is not None:
        Path(engine_path).write_bytes(data)
    return data


def _check(result):
    """Unpack a cuda-python ``(err, *values)`` result, raising on a CUDA error."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA runtime error {err}")
    return rest[0] if len(rest) == 1 else rest


def time_engine(engine: bytes | str | os.PathLike, input_shapes: Mapping[str, Sequence[int]] | None = None, *,
                iterations: int = 100, warmup: int = 10, seed: int = 0) -> TimingResult:
    """Median latency of a serialized engine on random inputs (CUDA events around ``execute_async_v3``).

    Args:
      engine: engine bytes or a path to an engine file.
      input_shapes: shapes of inputs with dynamic dimensions (default: the profile's opt shapes).
      iterations, warmup: timed and untimed executions (``iterations >= 1``).
      seed: seed of the random FP32/FP16 inputs (other input types are zero-filled).

    Raises:
      ImportError: TensorRT or cuda-python is missing.
      RuntimeError: the engine cannot be deserialized or a CUDA call fails.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    trt, cudart = _trt(), _cudart()
    data = Path(engine).read_bytes() if isinstance(engine, (str, os.PathLike)) else engine
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    eng = trt.Runtime(logger).deserialize_cuda_engine(data)
    if eng is None:
        raise RuntimeError("TensorRT could not deserialize the engine (built with another TensorRT version?)")
    ctx = eng.create_execution_context()
    rng = np.random.default_rng(seed)
    names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
    inputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    shapes = {}
    for name in inputs:
        declared = tuple(eng.get_tensor_shape(name))
        if input_shapes and name in input_shapes:
            shape = tuple(int(d) for d in input_shapes[name])
        elif -1 in declared:
            shape = tuple(eng.get_tensor_profile_shape(name, 0)[1])
        else:
            shape = declared
        ctx.set_input_shape(name, shape)
        shapes[name] = shape
    stream = _check(cudart.cudaStreamCreate())
    start, end = _check(cudart.cudaEventCreate()), _check(cudart.cudaEventCreate())
    buffers, times = [], []
    try:
        for name in names:
            shape = tuple(ctx.get_tensor_shape(name))
            kind = eng.get_tensor_dtype(name).name
            nbytes = max(1, math.ceil(math.prod(max(int(d), 0) for d in shape) * _ITEMSIZE.get(kind, 8)))
            ptr = _check(cudart.cudaMalloc(nbytes))
            buffers.append(ptr)
            if name in shapes and kind in _RANDOM_FILL:
                host = np.ascontiguousarray(rng.standard_normal(shape).astype(_RANDOM_FILL[kind]))
                _check(cudart.cudaMemcpy(ptr, host.ctypes.data, host.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
            else:
                _check(cudart.cudaMemset(ptr, 0, nbytes))
            ctx.set_tensor_address(name, int(ptr))
        for _ in range(warmup):
            ctx.execute_async_v3(int(stream))
        _check(cudart.cudaStreamSynchronize(stream))
        for _ in range(iterations):
            _check(cudart.cudaEventRecord(start, stream))
            if not ctx.execute_async_v3(int(stream)):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the log above)")
            _check(cudart.cudaEventRecord(end, stream))
            _check(cudart.cudaEventSynchronize(end))
            times.append(float(_check(cudart.cudaEventElapsedTime(start, end))))
    finally:
        for ptr in buffers:
            cudart.cudaFree(ptr)
        cudart.cudaEventDestroy(start)
        cudart.cudaEventDestroy(end)
        cudart.cudaStreamDestroy(stream)
    return TimingResult.from_samples(times, shapes)
