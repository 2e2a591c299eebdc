"""autotune needs no JAX: its CLI and a tiny tuning run work in a process where jax cannot be imported."""

import onnx
from graphs import residual_cnn

from tests.onnx_toolbox.blocked_imports import run_without


def test_autotune_cli_help_and_a_tiny_run_without_jax(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(residual_cnn(blocks=1, batch=1), model)
    res = run_without(f"""
        import contextlib, io
        import jq_autotune, jq_autotune.cli, jq_autotune.workflow, jq_autotune.benchmark.tensorrt
        from jq_autotune.cli import main

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                main(["--help"])
            except SystemExit as e:
                assert e.code == 0
        assert "--model" in out.getvalue()
        rc = main(["--model", {str(model)!r}, "--output", {str(tmp_path / "out")!r}, "--schemes-per-region", "2",
                   "--warmup-runs", "1", "--timing-runs", "2", "--no-progress"])
        assert rc == 0
    """)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "NO_BLOCKED_IMPORTS" in res.stdout and "speedup" in res.stdout
    assert (tmp_path / "out" / "optimized_final.onnx").exists()
