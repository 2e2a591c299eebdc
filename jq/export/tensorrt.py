"""Build and time TensorRT engines from exported ONNX graphs (optional: ``pip install jq-quant[tensorrt]``).

TensorRT 10+ builds *strongly typed* networks here: precision comes from the graph's Q/DQ nodes and tensor
types, not from builder flags (TensorRT 11 has no other mode). An FP32 ONNX therefore runs its unquantized
layers in FP32; compare quantized engines against an FP16 graph (``jq.export.to_onnx_float(...,
float_dtype="float16")``). A timing cache file is read before and written after each build, so repeated builds
of similar graphs skip kernel timing.

The flow is the TensorRT Python API's: ``Builder`` -> network (``STRONGLY_TYPED``) -> ``OnnxParser.parse`` ->
builder config (workspace, optimization level, timing cache, one optimization profile covering dynamic
dimensions) -> ``build_serialized_network``; timing deserializes the engine, binds device buffers
(``cuda-python``) and takes the median of ``execute_async_v3`` times between CUDA events.

Nothing here runs without TensorRT and a GPU. Importing this module never imports TensorRT.

Example:
  >>> opts = BuildOptions(timing_cache="trt.cache", profile={"input_0": ((1, 16), (8, 16), (32, 16))})
  >>> engine = build_engine("int8.onnx", "int8.engine", opts)
  >>> print(time_engine(engine, {"input_0": (8, 16)}).median_ms)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

__all__ = ["BuildOptions", "TimingResult", "tensorrt_available", "profile_shapes", "build_engine", "time_engine"]

_HINT = "install the optional extra: pip install 'jq-quant[tensorrt]' (TensorRT >= 10 and cuda-python, on a GPU host)"


def tensorrt_available() -> bool:
    """True when ``import tensorrt`` works."""
    try:
        import tensorrt  # noqa: F401
    except Exception:
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
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise ImportError(f"cuda-python is not importable; {_HINT}") from None
    return cudart


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """Options of :func:`build_engine`.

    Attributes:
      workspace_bytes: workspace memory pool limit (None: TensorRT's default).
      optimization_level: builder optimization level 0-5.
      timing_cache: path of a timing cache file, read if present and written after the build.
      strongly_typed: build a strongly typed network (required by TensorRT 11; keep True for Q/DQ graphs).
      profile: ``{input: (min_shape, opt_shape, max_shape)}`` for inputs with dynamic dimensions.
      dynamic_dim: ``(min, opt, max)`` used for dynamic dimensions of inputs not in ``profile``.
      verbose: TensorRT's verbose log.
    """

    workspace_bytes: int | None = 1 << 30
    optimization_level: int = 3
    timing_cache: str | os.PathLike | None = None
    strongly_typed: bool = True
    profile: Mapping[str, tuple] | None = None
    dynamic_dim: tuple[int, int, int] = (1, 8, 32)
    verbose: bool = False

    def __post_init__(self):
        if not 0 <= self.optimization_level <= 5:
            raise ValueError(f"optimization_level must be in 0..5, got {self.optimization_level}")
        lo, opt, hi = self.dynamic_dim
        if not 1 <= lo <= opt <= hi:
            raise ValueError(f"dynamic_dim must be (min, opt, max) with 1 <= min <= opt <= max, got {self.dynamic_dim}")


@dataclasses.dataclass(frozen=True)
class TimingResult:
    """Latency of an engine over ``iterations`` runs (milliseconds) and the input shapes used."""

    median_ms: float
    mean_ms: float
    min_ms: float
    p90_ms: float
    iterations: int
    shapes: dict


def profile_shapes(model, options: BuildOptions = BuildOptions()) -> dict[str, tuple[tuple, tuple, tuple]]:
    """``{input: (min, opt, max)}`` for every graph input with a dynamic dimension (``options.profile`` first,
    then ``options.dynamic_dim`` for each symbolic dimension).

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
        dims = inp.type.tensor_type.shape.dim
        static = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if inp.name in given:
            mn, opt, mx = (tuple(int(v) for v in s) for s in given[inp.name])
            for s in (mn, opt, mx):
                if len(s) != len(static) or any(a is not None and a != b for a, b in zip(static, s)):
                    raise ValueError(f"profile shape {s} for input {inp.name!r} does not match its shape {static}")
            out[inp.name] = (mn, opt, mx)
        elif any(d is None for d in static):
            out[inp.name] = tuple(tuple(options.dynamic_dim[k] if d is None else d for d in static) for k in range(3))
    return out


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike | None = None,
                 options: BuildOptions = BuildOptions(), **overrides) -> bytes:
    """Build a serialized TensorRT engine from an ONNX file.

    Args:
      onnx_path: the ONNX model (Q/DQ graph from :func:`jq.export.to_onnx`, or an FP16 baseline).
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
    builder = trt.Builder(logger)
    flags = 0
    if opts.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
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
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.exists() else b"")
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
    err = result[0] if isinstance(result, tuple) else result
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return result[1] if isinstance(result, tuple) and len(result) == 2 else result


def time_engine(engine: bytes | str | os.PathLike, input_shapes: Mapping[str, tuple] | None = None, *,
                iterations: int = 100, warmup: int = 10, seed: int = 0) -> TimingResult:
    """Median latency of a serialized engine on random inputs (CUDA events around ``execute_async_v3``).

    Args:
      engine: engine bytes or a path to an engine file.
      input_shapes: shapes for inputs with dynamic dimensions (default: the profile's opt shapes).
      iterations, warmup: timed and untimed runs.
    """
    trt, cudart = _trt(), _cudart()
    data = Path(engine).read_bytes() if isinstance(engine, (str, os.PathLike)) else engine
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    eng = runtime.deserialize_cuda_engine(data)
    ctx = eng.create_execution_context()
    rng = np.random.default_rng(seed)
    stream = _check(cudart.cudaStreamCreate())
    buffers, shapes = [], {}
    try:
        for i in range(eng.num_io_tensors):
            name = eng.get_tensor_name(i)
            if eng.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                shape = tuple(input_shapes[name]) if input_shapes and name in input_shapes else tuple(
                    eng.get_tensor_profile_shape(name, 0)[1] if -1 in tuple(eng.get_tensor_shape(name))
                    else eng.get_tensor_shape(name))
                ctx.set_input_shape(name, shape)
                shapes[name] = shape
        for i in range(eng.num_io_tensors):
            name = eng.get_tensor_name(i)
            shape = tuple(ctx.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(eng.get_tensor_dtype(name)))
            nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
            ptr = _check(cudart.cudaMalloc(nbytes))
            buffers.append(ptr)
            if eng.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                host = (rng.standard_normal(shape) if dtype.kind == "f" else np.zeros(shape)).astype(dtype)
                _check(cudart.cudaMemcpy(ptr, host.ctypes.data, nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
            ctx.set_tensor_address(name, int(ptr))
        start, end = _check(cudart.cudaEventCreate()), _check(cudart.cudaEventCreate())
        for _ in range(warmup):
            ctx.execute_async_v3(int(stream))
        _check(cudart.cudaStreamSynchronize(stream))
        times = []
        for _ in range(iterations):
            _check(cudart.cudaEventRecord(start, stream))
            ctx.execute_async_v3(int(stream))
            _check(cudart.cudaEventRecord(end, stream))
            _check(cudart.cudaEventSynchronize(end))
            times.append(float(_check(cudart.cudaEventElapsedTime(start, end))))
    finally:
        for ptr in buffers:
            cudart.cudaFree(ptr)
        cudart.cudaStreamDestroy(stream)
    t = np.asarray(times)
    return TimingResult(float(np.median(t)), float(t.mean()), float(t.min()), float(np.percentile(t, 90)),
                        iterations, shapes)
