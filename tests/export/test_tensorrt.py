"""TensorRT engine building and timing (onnx_toolbox.tensorrt, re-exported by jq.export).

TensorRT cannot be installed on the machines these tests run on (no registry they reach ships it), so the
tests that build or time an engine skip with that reason; only the pure-Python parts run everywhere.
"""

import numpy as np
import pytest

import jq.export
from onnx_toolbox.tensorrt import BuildOptions, profile_shapes, tensorrt_available

needs_trt = pytest.mark.skipif(not tensorrt_available(), reason="TensorRT is not installed (optional extra "
                                                                 "jq-quant[tensorrt]; needs a GPU host)")


def test_profile_shapes_for_the_dynamic_batch(zoo, tmp_path):
    res = zoo.export("transformer", "INT8_DEFAULT_CFG")
    assert profile_shapes(res.proto) == {"input_0": ((1, 8), (8, 8), (32, 8))}
    opts = BuildOptions(profile={"input_0": ((2, 8), (4, 8), (16, 8))})
    assert profile_shapes(res.proto, opts) == {"input_0": ((2, 8), (4, 8), (16, 8))}
    with pytest.raises(ValueError, match="does not match"):
        profile_shapes(res.proto, BuildOptions(profile={"input_0": ((2, 9), (4, 9), (16, 9))}))
    static = jq.export.export(zoo.qm("cnn", "INT8_DEFAULT_CFG"), (zoo.model("cnn")[2][0],), dynamic_batch=False)
    assert profile_shapes(static.proto) == {}


def test_build_options_validation():
    with pytest.raises(ValueError, match="optimization_level"):
        BuildOptions(optimization_level=7)
    with pytest.raises(ValueError, match="dynamic_dim"):
        BuildOptions(dynamic_dim=(4, 2, 8))


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed: the missing-TensorRT error is not reachable")
def test_clear_error_without_tensorrt(tmp_path):
    with pytest.raises(ImportError, match=r"pip install 'jq-quant\[tensorrt\]'"):
        jq.export.build_engine(tmp_path / "missing.onnx")
    with pytest.raises(ImportError, match="TensorRT"):
        jq.export.time_engine(b"")


@needs_trt
@pytest.mark.parametrize("preset", ["INT8_DEFAULT_CFG", "FP8_DEFAULT_CFG"])
def test_build_and_time_engine(zoo, tmp_path, preset):
    path = tmp_path / "model.onnx"
    qm = zoo.qm("transformer", preset)
    jq.export.to_onnx(qm, (zoo.model("transformer")[2][0],), path)
    cache = tmp_path / "timing.cache"
    engine = jq.export.build_engine(path, tmp_path / "model.engine", BuildOptions(timing_cache=cache))
    assert engine and cache.exists() and (tmp_path / "model.engine").read_bytes() == engine
    t = jq.export.time_engine(engine, {"input_0": (4, 8)}, iterations=20, warmup=5)
    assert t.median_ms > 0 and t.iterations == 20 and t.shapes == {"input_0": (4, 8)}
    assert np.isfinite(t.p90_ms)


@needs_trt
def test_fp16_baseline_engine(zoo, tmp_path):
    m, params, calib, _ = zoo.model("cnn")
    path = tmp_path / "fp16.onnx"
    jq.export.to_onnx_float(params, m.apply, (calib[0],), path, float_dtype="float16")
    assert jq.export.build_engine(path)
