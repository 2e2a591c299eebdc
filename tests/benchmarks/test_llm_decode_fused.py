"""benchmarks.llm_decode's ``_fused`` variants: the stacked model on fused q/k/v and gate/up weights."""

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import llm_decode


@pytest.mark.parametrize("name,want", [("fp8", ("fp8", False, False, False)),
                                       ("fp8_kernel_fused", ("fp8_kernel", True, False, False)),
                                       ("nvfp4_fused_kv8", ("nvfp4", True, True, False)),
                                       ("bf16_kv8", ("bf16", False, True, False)),
                                       ("int4_fused_qhead", ("int4", True, False, True)),
                                       ("nvfp4_qhead_kv8", ("nvfp4", False, True, True))])
def test_parse_variant(name, want):
    assert name in llm_decode.VARIANTS
    assert llm_decode.parse_variant(name) == want


def _model(args):
    # one layer: the fused/unfused comparison is per layer (each layer's q/k/v and gate/up are fused on their own),
    # a second layer repeats it and doubles the compile time of every unrolled prefill program
    model = llm_decode.Model("tiny", 1, args)

    def logits(variant):
        lm = model.lm(variant)
        prefill, _ = model.program(variant)
        out, _ = prefill(lm.weights, lm.params, model.prompts[1], lm.init_cache(1, model.max_len))
        return np.asarray(out.astype(jnp.float32))
    return model, logits


def test_fused_variants_serve_fused_sites():
    args = llm_decode.parse(["--smoke", "--batches", "1", "--prefill-batches", "2"])  # a prefill-only batch
    assert args.batches == [1] and args.prefill_batches == [2]
    model, logits = _model(args)
    assert set(model.prompts) == {1, 2}
    bf16, bf16_fused = logits("bf16"), logits("bf16_fused")
    # the same bf16 dot products per output element: bit-identical on XLA CPU (a swapped q/k/v or gate/up split
    # changes them); a GPU may accumulate the wider GEMM in another order
    np.testing.assert_array_equal(bf16_fused, bf16)
    assert set(model.params(True)[1][0]["self_attn"]) == {"qkv_proj", "o_proj"}  # layer 0 of the separate layout
    fp8, fp8_fused = logits("fp8"), logits("fp8_fused")
    plan = model.realized["fp8_fused"][2]
    assert plan["model.layers.0.self_attn.qkv_proj"] == plan["model.layers.0.mlp.gate_up_proj"] == "fp8"
    # per-tensor FP8: the fused site's weight amax is the max of its parts' (exact equality is tested with
    # per-channel scales below and in tests/models/test_fused_projections.py); a sanity bound here (6 % seen)
    rel = np.linalg.norm(fp8_fused - fp8) / np.linalg.norm(fp8)
    assert 0 < rel < 0.1, rel


def test_fused_per_channel_fp8_stacked_equals_unfused(monkeypatch):
    """Per-channel / per-token FP8 through the stacked evaluator: fused == unfused bit for bit (XLA CPU)."""
    monkeypatch.setitem(llm_decode.PRESETS, "fp8", "FP8_PER_CHANNEL_PER_TOKEN_CFG")
    _, logits = _model(llm_decode.parse(["--smoke", "--batches", "1"]))
    fp8, fp8_fused = logits("fp8"), logits("fp8_fused")
    np.testing.assert_array_equal(fp8_fused, fp8)
    assert np.abs(fp8 - logits("bf16")).max() > 0  # quantization is on
