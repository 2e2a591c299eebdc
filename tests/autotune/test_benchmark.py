"""Benchmarks: a real ONNX Runtime measurement, trtexec output parsing, TensorRT availability."""

import importlib.util
import shutil

import numpy as np
import onnx
import pytest
from graphs import residual_cnn

from jq_autotune.benchmark import BenchmarkError, BenchmarkResult, BenchmarkUnavailable, OrtBenchmark, make_benchmark, random_inputs
from jq_autotune.benchmark.trtexec import TrtExecBenchmark, parse_trtexec_median

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_TRTEXEC = shutil.which("trtexec") is not None


def test_ort_benchmark_on_a_tiny_model(tmp_path):
    model = residual_cnn(blocks=1, batch=1)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    feeds = random_inputs(model, {"x": (1, 3, 16, 16)})
    bench = OrtBenchmark(feeds, warmup=2, repeats=15, intra_op_threads=1)
    res = bench.run(path)
    assert res.backend == "ort:CPU"
    assert len(res.samples_ms) == 15 and all(s > 0 for s in res.samples_ms)
    assert min(res.samples_ms) <= res.median_ms <= max(res.samples_ms)
    assert res.noise >= 0
    (tmp_path / "bad.onnx").write_bytes(b"junk")
    with pytest.raises(BenchmarkError):
        bench.run(tmp_path / "bad.onnx")


def test_unknown_provider_is_unavailable():
    with pytest.raises(BenchmarkUnavailable, match="not available"):
        OrtBenchmark({}, provider="NoSuchExecutionProvider")


def test_result_statistics():
    r = BenchmarkResult.from_samples([1.0, 2.0, 3.0, 4.0, 100.0], "x")
    assert r.median_ms == 3.0
    assert r.noise > 1  # the outlier shows in the spread, not in the median


def test_random_inputs_are_valid_indices_for_integer_inputs():
    model = onnx.helper.make_model(
        onnx.helper.make_graph([], "g", [onnx.helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["b", "s"])], [])
    )
    feeds = random_inputs(model, {"ids": (2, 7)})
    assert feeds["ids"].dtype == np.int64 and feeds["ids"].shape == (2, 7) and set(np.unique(feeds["ids"])) <= {0, 1}


def test_trtexec_summary_parsing():
    out = """
[I] Latency: min = 1.50 ms, max = 2.0 ms, mean = 1.6 ms, median = 1.55 ms, percentile(90%) = 1.7 ms
[I] GPU Compute Time: min = 0.9 ms, max = 1.4 ms, mean = 1.0 ms, median = 0.98 ms, percentile(90%) = 1.1 ms
"""
    assert parse_trtexec_median(out) == 0.98
    assert parse_trtexec_median(out.splitlines()[1]) == 1.55
    with pytest.raises(BenchmarkError):
        parse_trtexec_median("no summary")


@pytest.mark.skipif(HAS_TRTEXEC, reason="trtexec is installed: the unavailability path cannot be observed")
def test_trtexec_missing_is_reported():
    with pytest.raises(BenchmarkUnavailable, match="trtexec is not installed"):
        TrtExecBenchmark({"x": (1, 3, 16, 16)})


def test_trtexec_command_line():
    bench = TrtExecBenchmark({"x": (1, 3, 8, 8)}, warmup_ms=100, iterations=20, timing_cache="tc.cache", executable="trtexec")
    cmd = bench.command("m.onnx")
    assert cmd[:3] == ["trtexec", "--onnx=m.onnx", "--stronglyTyped"]
    assert "--shapes=x:1x3x8x8" in cmd and "--timingCacheFile=tc.cache" in cmd and "--iterations=20" in cmd


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed")
def test_tensorrt_missing_is_reported():
    with pytest.raises(BenchmarkUnavailable, match="tensorrt"):
        make_benchmark("tensorrt", {"x": np.zeros((1, 3, 8, 8), np.float32)})


@pytest.mark.skipif(not HAS_TRT, reason="TensorRT (Python package 'tensorrt') is not installed on this machine")
def test_tensorrt_benchmark_runs(tmp_path):  # pragma: no cover - needs a GPU with TensorRT
    model = residual_cnn(blocks=1, batch=1)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    bench = make_benchmark("tensorrt", random_inputs(model, {"x": (1, 3, 16, 16)}), warmup=2, repeats=5)
    assert bench.run(path).median_ms > 0


@pytest.mark.skipif(not HAS_TRTEXEC, reason="trtexec is not installed on this machine")
def test_trtexec_benchmark_runs(tmp_path):  # pragma: no cover - needs a GPU with TensorRT
    model = residual_cnn(blocks=1, batch=1)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    bench = make_benchmark("trtexec", random_inputs(model, {"x": (1, 3, 16, 16)}), warmup=2, repeats=5)
    assert bench.run(path).median_ms > 0
