"""benchmarks.gpu_suite: what a killed section's summary shows from its incremental record."""

import json

from benchmarks import gpu_suite
from benchmarks.kernel_bench import common


def test_partial_summary_of_a_killed_real_section_lists_its_finished_presets(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "OUT", str(tmp_path))
    row = {"n_tokens": 128, "tokens_equal": True, "matching_tokens": 128, "first_mismatch": None,
           "fake_top2_margin_at_mismatch": None, "logit_rel_err": 1e-3, "logits_within_tol": True,
           "logit_rtol": 2e-2, "wall_s": 31.0, "phases_s": {"quantize": 9.5}, "compile_s": {"quantize": 4.0},
           "trace_s": {"quantize": 1.0}}
    real = {"source": "SmolLM2", "prompt_tokens": 32, "load_s": 11.0, "bf16_tok_s": {},
            "presets": {"fp8_kv8": row, "nvfp4": {"phases_s": {"quantize": 12.0}, "compile_s": {"quantize": 5.0},
                                                  "trace_s": {"quantize": 2.0}}}}
    (tmp_path / "section_llm_real_cells.json").write_text(json.dumps({"cells": {}, "real": real}))
    text = gpu_suite._partial_cells("llm_real")
    assert "fp8_kv8    tokens EXACT (128/128" in text
    assert "quantize 9.5 (compile 4.0, trace 1.0)" in text
    # started, killed before its comparison: the phases it finished
    assert "nvfp4      incomplete; wall 0.0 s: quantize 12.0 (compile 5.0, trace 2.0)" in text
    assert gpu_suite._partial_cells("llm") == "  (no partial record)"
