"""End-to-end runs with the deterministic cost-model benchmark: resume after SIGKILL,
pattern cache warm start, Q/DQ baseline import, node filter, calibration, plot."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from fakes import CostModelBenchmark, structure_hash
from graphs import residual_cnn

from jq_autotune.autotuner import NodeFilterError
from jq_autotune.cache import PatternCache
from jq_autotune.config import Config
from jq_autotune.state import AutotuneState
from jq_autotune.workflow import autotune

HERE = Path(__file__).resolve().parent
CFG = Config(schemes_per_region=8, warmup_runs=1, timing_runs=3, seed=3)


def quiet(model_path, out, **kw):
    kw.setdefault("benchmark", CostModelBenchmark())
    return autotune(model_path, out, kw.pop("config", CFG), progress=False, echo=lambda s: None, **kw)


@pytest.fixture()
def cnn(tmp_path):
    path = tmp_path / "cnn.onnx"
    onnx.save(residual_cnn(blocks=2, batch=1), path)
    return path


def test_run_finds_the_fused_placement_and_writes_every_artifact(cnn, tmp_path):
    report = quiet(cnn, tmp_path / "out")
    out = tmp_path / "out"
    for name in ("baseline.onnx", "optimized_final.onnx", "autotuner_state.yaml", "pattern_cache.yaml", "measurements.csv", "latency_per_scheme.png"):
        assert (out / name).exists(), name
    assert (out / "latency_per_scheme.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.speedup > 1.5  # cost model: fused convs are 4x cheaper
    assert report.unique_patterns < report.regions_total  # repeated blocks share patterns
    assert not report.calibrated
    rows = (out / "measurements.csv").read_text().splitlines()
    assert len(rows) - 1 == report.benchmarks_run - 9  # minus 3 baseline + 6 final runs
    assert "speedup" in report.table() and "benchmarks run" in report.table()


def test_resume_after_sigkill_does_not_remeasure_saved_regions(cnn, tmp_path):
    worker = HERE / "resume_worker.py"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # reference: an uninterrupted run
    ref_log = tmp_path / "ref.log"
    subprocess.run([sys.executable, str(worker), str(cnn), str(tmp_path / "ref"), str(ref_log), "0"], check=True, env=env, timeout=120)
    ref_calls = ref_log.read_text().split()

    # interrupted run: SIGKILL while the worker waits in its first measurement after saving a region
    out, log1 = tmp_path / "run", tmp_path / "run1.log"
    proc = subprocess.Popen([sys.executable, str(worker), str(cnn), str(out), str(log1), "park"], env=env,
                            stdout=subprocess.PIPE, text=True)
    state_file = out / "autotuner_state.yaml"
    said = proc.stdout.readline()  # blocks until the worker parks (or exits: then "")
    proc.send_signal(signal.SIGKILL)
    proc.stdout.close()
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert said.strip() == "PARKED", "the worker ended before saving a region"
    saved = AutotuneState.load(state_file)  # what is on disk at the kill
    done = {sig: len(p.results) for sig, p in saved.patterns.items() if p.complete}
    assert done and len(done) < sum(1 for p in AutotuneState.load(tmp_path / "ref" / "autotuner_state.yaml").patterns.values() if p.results)

    # restart: finishes, measuring only what was not saved
    log2 = tmp_path / "run2.log"
    subprocess.run([sys.executable, str(worker), str(cnn), str(out), str(log2), "0"], check=True, env=env, timeout=120)
    calls2 = log2.read_text().split()
    assert len(calls2) == len(ref_calls) - 3 - sum(done.values())  # no baseline, no saved scheme
    final_ref = AutotuneState.load(tmp_path / "ref" / "autotuner_state.yaml")
    final = AutotuneState.load(state_file)
    assert {s: p.best for s, p in final.patterns.items()} == {s: p.best for s, p in final_ref.patterns.items()}
    assert structure_hash(onnx.load(out / "optimized_final.onnx")) == structure_hash(onnx.load(tmp_path / "ref" / "optimized_final.onnx"))


def test_rerun_after_completion_measures_nothing_new(cnn, tmp_path):
    quiet(cnn, tmp_path / "out")
    bench = CostModelBenchmark()
    report = quiet(cnn, tmp_path / "out", benchmark=bench)
    assert report.resumed and bench.calls == 6  # only the final baseline/optimized comparison


def test_state_from_other_settings_is_refused(cnn, tmp_path):
    quiet(cnn, tmp_path / "out")
    with pytest.raises(ValueError, match="other settings"):
        quiet(cnn, tmp_path / "out", config=CFG.replace(schemes_per_region=9))


def test_pattern_cache_seeds_are_measured_right_after_the_empty_scheme(cnn, tmp_path):
    quiet(cnn, tmp_path / "first")
    cache = PatternCache.load(tmp_path / "first" / "pattern_cache.yaml")
    assert cache.patterns()
    state = AutotuneState.load(tmp_path / "first" / "autotuner_state.yaml")
    sig = cache.patterns()[0]
    quiet(cnn, tmp_path / "second", pattern_cache=tmp_path / "first" / "pattern_cache.yaml")
    second = AutotuneState.load(tmp_path / "second" / "autotuner_state.yaml").pattern(sig)
    assert second.results[0].scheme.is_empty
    assert second.results[1].scheme == cache.get_schemes(sig)[0]
    assert second.best == state.pattern(sig).best


def test_qdq_baseline_import_seeds_the_search(cnn, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": x}])

        def get_next(self):
            return next(self.it, None)

    qdq = tmp_path / "qdq.onnx"
    quantize_static(str(cnn), str(qdq), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    quiet(cnn, tmp_path / "out", qdq_baseline=qdq)
    st = AutotuneState.load(tmp_path / "out" / "autotuner_state.yaml")
    # some pattern measured an imported (non-empty) scheme as its first seed
    assert any(len(p.results) > 1 and not p.results[1].scheme.is_empty for p in st.patterns.values())


def test_node_filter(cnn, tmp_path):
    with pytest.raises(NodeFilterError, match="matches no node"):
        quiet(cnn, tmp_path / "a", node_filter=["does_not_exist*"])
    everything = quiet(cnn, tmp_path / "all")
    report = quiet(cnn, tmp_path / "b", node_filter=["Gemm"])
    # the leaf holding the Gemm and the composite around it; nothing else
    assert report.regions_total == 2 < everything.regions_total
    assert report.benchmarks_run < everything.benchmarks_run


def test_calibrated_run_is_accurate(cnn, tmp_path):
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((8, 1, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=xs)
    report = quiet(cnn, tmp_path / "out", calibration_data=tmp_path / "calib.npz")
    assert report.calibrated
    ref = ort.InferenceSession(str(cnn), providers=["CPUExecutionProvider"])
    opt = ort.InferenceSession(str(tmp_path / "out" / "optimized_final.onnx"), providers=["CPUExecutionProvider"])
    n_q = sum(n.op_type == "QuantizeLinear" for n in onnx.load(tmp_path / "out" / "optimized_final.onnx").graph.node)
    assert n_q >= 3
    for x in xs:
        a, b = ref.run(None, {"x": x})[0], opt.run(None, {"x": x})[0]
        cos = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
        assert cos > 0.99


def test_ragged_calibration_samples(tmp_path):
    from jq_autotune.calibration import load_calibration_inputs

    np.savez(tmp_path / "r.npz", ids__0=np.zeros((1, 5), np.int64), ids__1=np.zeros((1, 9), np.int64))
    samples = load_calibration_inputs(tmp_path / "r.npz")
    assert [s["ids"].shape for s in samples] == [(1, 5), (1, 9)]
    with pytest.raises(ValueError, match="not found"):
        load_calibration_inputs(tmp_path / "missing.npz")


def test_accuracy_guard_rejects_schemes_that_drift_from_fp32(cnn, tmp_path):
    xs = np.random.default_rng(0).standard_normal((4, 1, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=xs)
    # an impossible bar: every Q/DQ scheme is rejected untimed, the model keeps no Q/DQ
    strict = quiet(cnn, tmp_path / "strict", calibration_data=tmp_path / "calib.npz", config=CFG.replace(min_output_cosine=0.999999999))
    final = onnx.load(tmp_path / "strict" / "optimized_final.onnx")
    assert not any(n.op_type == "QuantizeLinear" for n in final.graph.node)
    assert strict.rejected_for_accuracy > 0
    notes = (tmp_path / "strict" / "measurements.csv").read_text()
    assert "rejected: output cosine" in notes
    # the guard off: the same run keeps Q/DQ
    loose = quiet(cnn, tmp_path / "loose", calibration_data=tmp_path / "calib.npz", config=CFG.replace(min_output_cosine=0.0))
    assert loose.rejected_for_accuracy == 0 and loose.qdq_tensors > 0


def test_output_cosine():
    from jq_autotune.accuracy import output_cosine

    a = [np.array([1.0, 2.0]), np.zeros(3)]
    assert output_cosine(a, a) == pytest.approx(1.0)
    assert output_cosine(a, [np.array([2.0, 4.0]), np.zeros(3)]) == pytest.approx(1.0)
    assert output_cosine(a, [np.array([-1.0, -2.0]), np.zeros(3)]) == pytest.approx(-1.0)
    assert output_cosine(a, [np.array([1.0, 2.0]), np.ones(3)]) == 0.0
