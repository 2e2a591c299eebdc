"""TensorRT build and timing (onnx_toolbox.tensorrt): the pure-Python parts everywhere, engines where TensorRT is.

TensorRT cannot be installed on the machines these tests run on (no registry they reach ships it), so the tests
that build or time an engine skip with that reason.
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_toolbox.tensorrt import (
    BuildOptions,
    TimingResult,
    build_engine,
    profile_shapes,
    tensorrt_available,
    time_engine,
)

needs_trt = pytest.mark.skipif(not tensorrt_available(), reason="TensorRT is not installed (optional extra "
                                                                 "jq-quant[tensorrt]; needs a GPU host)")


def _matmul(batch_dim, path=None):
    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float16)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [batch_dim, 16]),
                           helper.make_tensor_value_info("mask", TensorProto.FLOAT16, [2, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [batch_dim, 8])],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if path is not None:
        onnx.save(m, path)
    return m


@pytest.mark.parametrize("batch_dim", ["batch", -1, 0])
def test_profile_covers_every_kind_of_dynamic_dimension_and_skips_static_inputs(batch_dim):
    m = _matmul(batch_dim)
    assert profile_shapes(m) == {"x": ((1, 16), (8, 16), (32, 16))}
    opts = BuildOptions(profile={"x": ((2, 16), (4, 16), (6, 16)), "mask": ((2, 16),) * 3})
    assert profile_shapes(m, opts) == {"x": ((2, 16), (4, 16), (6, 16))}  # "mask" is static: checked, left out
    with pytest.raises(ValueError, match="does not match"):
        profile_shapes(m, BuildOptions(profile={"mask": ((3, 16),) * 3}))


def test_static_model_needs_no_profile():
    assert profile_shapes(_matmul(4)) == {}


def test_options_are_validated_and_keyword_only():
    with pytest.raises(ValueError, match="optimization_level"):
        BuildOptions(optimization_level=6)
    with pytest.raises(ValueError, match="dynamic_dim"):
        BuildOptions(dynamic_dim=(0, 1, 2))
    with pytest.raises(TypeError):
        BuildOptions(1 << 20)


def test_timing_statistics_from_samples():
    t = TimingResult.from_samples([1.0, 3.0, 2.0, 10.0], {"x": (1, 16)})
    assert (t.median_ms, t.mean_ms, t.min_ms, t.iterations) == (2.5, 4.0, 1.0, 4)
    assert t.p90_ms == pytest.approx(np.percentile([1.0, 3.0, 2.0, 10.0], 90))
    assert t.samples_ms == (1.0, 3.0, 2.0, 10.0) and t.shapes == {"x": (1, 16)}
    with pytest.raises(ValueError, match="no timing samples"):
        TimingResult.from_samples([], {})


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed: the missing-TensorRT error is not reachable")
def test_clear_error_without_tensorrt(tmp_path):
    with pytest.raises(ImportError, match=r"pip install 'jq-quant\[tensorrt\]'"):
        build_engine(tmp_path / "missing.onnx")
    with pytest.raises(ImportError, match="TensorRT"):
        time_engine(b"")


@needs_trt
def test_build_with_a_timing_cache_and_time(tmp_path):  # pragma: no cover - needs a GPU with TensorRT
    path = tmp_path / "mm.onnx"
    _matmul("batch", path)
    cache = tmp_path / "timing.cache"
    engine = build_engine(path, tmp_path / "mm.engine", BuildOptions(timing_cache=cache))
    assert cache.stat().st_size > 0 and (tmp_path / "mm.engine").read_bytes() == engine
    t = time_engine(tmp_path / "mm.engine", {"x": (4, 16)}, iterations=10, warmup=2)
    assert t.iterations == 10 and len(t.samples_ms) == 10 and t.median_ms > 0 and t.shapes["x"] == (4, 16)
