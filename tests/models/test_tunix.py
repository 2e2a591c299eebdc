"""jq.quantize on google-tunix's Flax NNX Llama3 (a JAX LLM nobody on this project wrote), unchanged.

Runs examples/tunix_llama3_quantize.py in its own process: importing tunix's model module changes flax's
global config (``flax_always_shard_variable``), which must not leak into the other tests. Skipped unless
``pip install --no-deps google-tunix==0.1.7`` was run (its full dependency set is not a jq dependency).
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tunix") is None,
                                reason="google-tunix not installed (pip install --no-deps google-tunix==0.1.7)")


@pytest.fixture(scope="module")
def result():
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "tunix_llama3_quantize.py"), "--json"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_linear_sites_are_named_by_the_nnx_module_path(result):
    want = {f"layers.{i}.{m}" for i in (0, 1) for m in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj",
                                                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert set(result["sites"]) == want | {"lm_head"}
    enabled = set(result["enabled"])
    assert {f"{s}.weight_quantizer" for s in want} <= enabled and {f"{s}.input_quantizer" for s in want} <= enabled
    assert not any(n.startswith("lm_head") for n in enabled)


def test_quantized_model_runs_under_jit(result):
    assert result["finite"]
    assert 0 < result["max_abs_logit_diff_vs_float"] < result["max_abs_logit"]
    assert len(result["bmm"]) == 4  # q.k and p.v in each of the 2 layers
    assert sum("v_bmm_quantizer" in b["roles"] for b in result["bmm"]) == 2


def test_k_bmm_quantizer_quantizes_the_keys(result):
    """tunix's GQA einsum 'BTHGD,BSHD->BHGTS' emits dot_general(k, q): jq finds the keys by the axis the p·v
    product contracts, not by operand order."""
    for b in result["bmm"]:
        if "k_bmm_quantizer" in b["roles"]:
            assert len(b["roles"]["k_bmm_quantizer"]) == 4  # k is [B, S, K, D]; q is [B, T, K, G, D]


def test_attention_sites_are_named_per_layer(result):
    """Flax NNX gives attention matmuls no per-module name stack: jq names them after the projections that feed
    them (layers.0.attn.q_proj -> layers.0.attn)."""
    assert sorted(b["site"] for b in result["bmm"]) == ["layers.0.attn", "layers.0.attn", "layers.1.attn",
                                                         "layers.1.attn"]
