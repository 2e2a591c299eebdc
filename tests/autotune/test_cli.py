"""CLI: exit codes 0 / 1 / 130, clear errors, the final table, and jq_autotune.inspect."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import onnx
from graphs import residual_cnn

from jq_autotune.cli import main
from jq_autotune.inspect import main as inspect_main
from jq_autotune.state import AutotuneState

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--schemes-per-region", "3", "--warmup-runs", "1", "--timing-runs", "3", "--no-progress"]


def model_file(tmp_path, **kw):
    path = tmp_path / "m.onnx"
    onnx.save(residual_cnn(**kw), path)
    return path


def test_success_prints_the_summary_table_and_exits_0(tmp_path, capsys):
    path = model_file(tmp_path, blocks=1, batch=1)
    rc = main(["--model", str(path), "--output", str(tmp_path / "out"), "--mode", "quick", *FAST])
    out = capsys.readouterr().out
    assert rc == 0
    assert "baseline latency" in out and "speedup" in out and "unique patterns" in out and "benchmarks run" in out
    assert "LATENCY MEASUREMENT ONLY" in out  # loud note without calibration data
    assert (tmp_path / "out" / "optimized_final.onnx").exists()
    assert (tmp_path / "out" / "latency_per_scheme.png").exists()


def test_bad_model_path_exits_1(tmp_path, capsys):
    rc = main(["--model", str(tmp_path / "missing.onnx"), "--output", str(tmp_path / "out")])
    assert rc == 1
    assert "model file not found" in capsys.readouterr().err


def test_unknown_quant_type_exits_1(tmp_path, capsys):
    rc = main(["--model", str(model_file(tmp_path)), "--output", str(tmp_path / "o"), "--quant-type", "int3"])
    assert rc == 1
    assert "unknown --quant-type 'int3'" in capsys.readouterr().err


def test_malformed_input_shapes_exit_1(tmp_path, capsys):
    rc = main(["--model", str(model_file(tmp_path)), "--output", str(tmp_path / "o"), "--input-shapes", "x:1xBx16"])
    assert rc == 1
    assert "malformed --input-shapes" in capsys.readouterr().err


def test_dynamic_input_without_shapes_exits_1(tmp_path, capsys):
    rc = main(["--model", str(model_file(tmp_path, batch="N")), "--output", str(tmp_path / "o")])
    assert rc == 1
    assert "--input-shapes x:Nx3x16x16" in capsys.readouterr().err


def test_node_filter_matching_nothing_exits_1(tmp_path, capsys):
    rc = main(["--model", str(model_file(tmp_path, batch=1)), "--output", str(tmp_path / "o"), "--node-filter", "nothing_*", *FAST])
    assert rc == 1
    assert "matches no node" in capsys.readouterr().err


def test_unavailable_backend_exits_1(tmp_path, capsys):
    import importlib.util
    import shutil

    if importlib.util.find_spec("tensorrt") is not None or shutil.which("trtexec"):
        import pytest

        pytest.skip("TensorRT is installed here")
    rc = main(["--model", str(model_file(tmp_path, batch=1)), "--output", str(tmp_path / "o"), "--benchmark", "trtexec", *FAST])
    assert rc == 1
    assert "trtexec is not installed" in capsys.readouterr().err


def test_sigint_exits_130_with_state_saved(tmp_path):
    """SIGINT inside the tuning loop: exit 130, state saved. The worker parks the benchmark once the first
    pattern is saved and says so on stdout; the signal is sent only then, so a fast run cannot finish first."""
    path = model_file(tmp_path, blocks=3, channels=8, hw=16, batch=1)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "tests" / "autotune" / "sigint_worker.py"), "--model", str(path), "--output", str(out), *FAST]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:  # blocks until the worker parks (or exits: then the loop ends)
        seen.append(line)
        if line.strip() == "PARKED":
            break
    assert seen and seen[-1].strip() == "PARKED", f"the run ended before the first pattern was saved:\n{''.join(seen)}"
    proc.send_signal(signal.SIGINT)
    try:
        rest, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        rest, err = proc.communicate()
        raise AssertionError(f"no exit 120 s after SIGINT; worker said:\n{''.join(seen)}{rest}\n{err[-2000:]}") from None
    assert proc.returncode == 130, err
    assert "[autotune] interrupted: state saved" in rest  # raised inside the tuning loop
    assert "interrupted (exit 130); state saved" in err
    st = AutotuneState.load(out / "autotuner_state.yaml")
    assert st.baseline_latency_ms and any(p.complete for p in st.patterns.values())
    assert not all(p.complete for p in st.patterns.values()), "interrupted with every pattern done"


def test_inspect_prints_the_region_tree(tmp_path, capsys):
    rc = inspect_main(["--model", str(model_file(tmp_path, blocks=2, batch=1)), "--points"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.splitlines()[0].startswith("ROOT#0")
    assert "LEAF#" in out and "pattern=" in out and "unique patterns" in out and "candidate point(s)" in out
    assert inspect_main(["--model", str(tmp_path / "none.onnx")]) == 1


def test_legacy_minus_one_batch_dimension_is_dynamic(tmp_path, capsys):
    """Several exporters write a free batch dimension as ``dim_value: -1``; like ``dim_param`` it is dynamic
    (it used to fail with "dimension 0 is 2 but the model fixes it to -1")."""
    import numpy as np
    import onnxruntime as ort

    path = model_file(tmp_path, blocks=1, batch=-1)
    dim = onnx.load(path).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.HasField("dim_value") and dim.dim_value == -1  # saved the legacy way
    rc = main(["--model", str(path), "--output", str(tmp_path / "o1")])
    assert rc == 1 and "dynamic dimensions ['-1']; pass --input-shapes x:Nx3x16x16" in capsys.readouterr().err
    rc = main(["--model", str(path), "--output", str(tmp_path / "out"), "--input-shapes", "x:2x3x16x16", *FAST])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "speedup" in captured.out
    final = tmp_path / "out" / "optimized_final.onnx"
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    (y,) = ort.InferenceSession(str(final), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert y.shape == (2, 10)
