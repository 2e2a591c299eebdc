"""benchmarks/kernel_bench/layer_chain.py end to end on CPU (W4A16 through the XLA reference, the FP8 decode kernel
in interpret mode; timings have no meaning): every cell timed, outputs compared with bf16's."""

import json

import numpy as np
import pytest

from benchmarks.kernel_bench import layer_chain as L


def test_layer_chain_times_the_layer_and_each_shape_and_checks_outputs_against_bf16(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.kernel_bench.common.OUT", str(tmp_path))
    rec = L.main(["--model", "tiny", "--layers", "1", "--batches", "2", "--formats", "fp8_fo", "--iters", "1"])
    assert rec["harness_only"] and json.loads((tmp_path / "layer_chain.json").read_text())["summary"]
    whats = ["layer"] + [f"shape/{s}" for s in ("qkv", "o", "gate_up", "down")]
    for fmt in ("bf16", "fp8_fo"):  # bf16 is always run first: the reference
        for what in whats:
            cell = rec["cells"][f"{fmt}/B2/{what}"]
            assert cell["finite"] and cell["us_per_layer"] > 0 and cell["weight_GB_s"] > 0
            if fmt == "bf16":
                assert cell["rel_err_vs_bf16"] == 0.0
            else:  # quantized weights: close to bf16, not equal
                assert 0 < cell["rel_err_vs_bf16"] < 0.2, (fmt, what, cell["rel_err_vs_bf16"])
                assert "vs_bf16" in cell
    # FP8's static input amax: the bf16 chain's largest GEMM input, at least the chain input's own max
    x0 = np.asarray(np.random.default_rng(2).standard_normal((2, rec["shapes"]["qkv"][1])) * 0.5, np.float32)
    layer_amax = rec["cells"]["fp8_fo/B2/layer"]["input_amax"]
    assert layer_amax == rec["cells"]["bf16/B2/layer"]["input_amax"] >= 0.99 * np.abs(x0).max() > 0
    # the bandwidth counts the stored bytes: bf16 2 per weight, FP8 1 (+ its scalar scale)
    n, k = rec["shapes"]["o"]
    bf16, fp8 = rec["cells"]["bf16/B2/shape/o"], rec["cells"]["fp8_fo/B2/shape/o"]
    assert bf16["weight_GB_s"] * bf16["us_per_layer"] == pytest.approx(2 * n * k / 1e3)
    assert fp8["weight_GB_s"] * fp8["us_per_layer"] == pytest.approx((n * k + 4) / 1e3)


def test_unknown_format_is_named():
    with pytest.raises(ValueError, match="unknown format 'fp4'"):
        L.make_format("fp4", on_gpu=False)
