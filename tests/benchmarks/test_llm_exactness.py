"""benchmarks.llm_exactness on the tiny model (``--smoke``): the real pass's record, phases and budget guard."""

import argparse

from benchmarks import llm_exactness
from benchmarks.llm_decode import Budget


def _args(**kw):
    base = {"smoke": True, "real_tokens": 8, "real_batches": [1], "iters": 1, "reserve_s": 0.0,
            "real_presets": ["fp8_f32"], "layout": "separate"}
    return argparse.Namespace(**{**base, **kw})


def test_real_pass_smoke_f32_fp8_is_token_exact_and_records_its_phases(monkeypatch, no_compilation_cache):
    from jq.models import serve

    unstacked = []  # the tokens/s rows time the per-layer-buffer layout (--layout separate)
    original = serve.ScannedLM.unstacked
    monkeypatch.setattr(serve.ScannedLM, "unstacked", lambda lm: unstacked.append(lm) or original(lm))
    rec, saves = {}, []
    llm_exactness.real_pass(_args(), Budget(1e6), rec, lambda: saves.append(1))
    row = rec["real"]["presets"]["fp8_f32"]
    # f32 model: the fake quant's dequantized operands are exact, real and fake differ by accumulation order only
    assert row["tokens_equal"] and row["matching_tokens"] == 8 and row["first_mismatch"] is None
    assert row["logit_rel_err"] < 1e-5
    assert row["plan"] == ["fake", "fp8"]  # lm_head stays fake quant (off), every projection on the fp8 GEMM
    phases = ["quantize", "realize", "build_served", "first_calls", "compare", "tok_s_B1"]
    assert list(row["phases_s"]) == list(row["compile_s"]) == list(row["trace_s"]) == phases
    serial = [k for k in phases if k != "first_calls"]  # first_calls compiles in two threads
    assert all(row["phases_s"][k] >= row["compile_s"][k] >= 0 for k in serial)
    assert row["compile_s"]["first_calls"] > 0 and row["trace_s"]["first_calls"] > 0  # the jitted generates
    assert row["compile_s"]["compare"] == 0  # numpy only
    assert row["tok_s"]["1"]["tok_s"] > 0 and rec["real"]["bf16_tok_s"]["1"]["tok_s"] > 0
    assert rec["real"]["tok_s_layout"] == "separate" and len(unstacked) == 2  # the bf16 and the real model
    assert len(saves) == 2 + len(phases)  # after the float baseline, each phase and the preset
    assert "fp8_f32    tokens EXACT (8/8" in llm_exactness.summary(rec["real"])


def test_real_pass_starts_no_preset_past_its_budget():
    rec = {}
    llm_exactness.real_pass(_args(reserve_s=50.0, real_presets=["nvfp4", "int4"]), Budget(10.0), rec, lambda: None)
    presets = rec["real"]["presets"]
    assert list(presets) == ["nvfp4", "int4"]
    assert all(list(r) == ["skipped"] and r["skipped"].startswith("budget (") for r in presets.values())
    assert "bf16_tok_s" not in rec["real"]  # the baseline, too, needs reserve_s left


def test_compare_measures_logits_before_the_first_mismatch_against_the_given_tolerance():
    import numpy as np

    fake = (np.array([[1, 2, 3]]), np.array([[[0.0, 10.0], [0.0, 10.0], [0.0, 10.0]]]))
    real = (np.array([[1, 2, 4]]), np.array([[[0.0, 10.1], [0.0, 10.2], [0.0, 99.0]]]))
    row = llm_exactness.compare(real, fake, 3, rtol=0.015)
    assert row["first_mismatch"] == 2 and not row["tokens_equal"] and row["matching_tokens"] == 2
    # the mismatching step (its inputs are still equal) counts: max |real - fake| = 89 over a scale of 10
    assert abs(row["logit_rel_err"] - 8.9) < 1e-6 and not row["logits_within_tol"]
    exact = llm_exactness.compare((fake[0], fake[1] + 0.1), fake, 3, rtol=0.015)
    assert exact["tokens_equal"] and abs(exact["logit_rel_err"] - 0.01) < 1e-6 and exact["logits_within_tol"]
    assert not llm_exactness.compare((fake[0], fake[1] + 0.2), fake, 3, rtol=0.015)["logits_within_tol"]


def test_fake_precision_is_the_bf16_fake_models_distance_to_its_f32_evaluation():
    import numpy as np

    f32 = (np.array([[5, 6]]), np.array([[[4.0, 0.0], [0.0, 8.0]]]))
    bf16 = (np.array([[5, 6]]), np.array([[[4.0, 0.1], [0.0, 7.8]]]))
    assert abs(llm_exactness.fake_precision(bf16, f32, 2) - 0.2 / 8.0) < 1e-6


def test_real_pass_smoke_bf16_preset_states_its_measured_tolerance():
    rec = {}
    llm_exactness.real_pass(_args(real_presets=["nvfp4"], real_batches=[]), Budget(1e6), rec, lambda: None)
    row = rec["real"]["presets"]["nvfp4"]
    assert row["fake_precision_err"] > 0  # bf16 evaluation of the fake model is not its f32 evaluation
    assert row["logit_rtol"] == max(llm_exactness.LOGIT_RTOL, row["fake_precision_err"])
    assert row["logits_within_tol"] == (row["logit_rel_err"] <= row["logit_rtol"])
    assert "fake_f32" in row["phases_s"]
