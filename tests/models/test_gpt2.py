"""GPT-2 from an HF-layout safetensors directory (a small random config saved in HF layout: no GPT-2
weights are available offline), against the numpy reference, and jq's sites on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq
import jq.models as jm
from jq.models import gpt2
from tests.models.reference import gpt2_logits

TOKENS = np.array([[5, 60, 2, 33, 17, 41, 8]], np.int32)


@pytest.fixture
def saved(tmp_path):
    config = gpt2.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    params = gpt2.init_params(config, jax.random.key(0), scale=0.3)
    jm.save_hf(tmp_path, config.to_hf(), params, max_shard_bytes=40_000)  # sharded with an index
    return tmp_path, config, params


def test_load_matches_numpy_reference(saved):
    path, config, params = saved
    assert (path / "model.safetensors.index.json").exists()
    loaded_config, loaded = gpt2.load_gpt2(path)
    assert loaded_config == config
    c_attn = loaded["transformer"]["h"][1]["attn"]["c_attn"]["weight"]
    assert c_attn.shape == (32, 96)  # Conv1D: [in, out]
    got = np.asarray(jax.jit(gpt2.make_forward(config))(loaded, jnp.asarray(TOKENS)))[0]
    want = gpt2_logits(config.to_hf(), jm.read_safetensors(path), TOKENS[0])
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)


def test_untied_head_and_bare_gpt2model_names(tmp_path):
    config = gpt2.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2,
                             tie_word_embeddings=False)
    params = gpt2.init_params(config, jax.random.key(1), scale=0.3)
    bare = dict(params["transformer"], lm_head=params["lm_head"])  # GPT2Model-style names, no "transformer."
    jm.save_hf(tmp_path, config.to_hf(), bare)
    _, loaded = gpt2.load_gpt2(tmp_path)
    got = np.asarray(jax.jit(gpt2.make_forward(config))(loaded, jnp.asarray(TOKENS)))[0]
    want = gpt2_logits(config.to_hf(), jm.flatten_params(params), TOKENS[0])
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)


def test_jq_sites_are_hf_modules(saved):
    _, config, params = saved
    qm = jq.quantize(params, gpt2.make_forward(config), jq.merge_presets(jq.INT8_DEFAULT_CFG, jq.FP8_KV_CFG),
                     calib_data=[(jnp.asarray(TOKENS),)], progress=False)
    sites = {s.name for s in qm.traced.sites}
    assert {"transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.1.mlp.c_fc",
            "transformer.h.1.mlp.c_proj", "transformer.h.1.attn", "transformer.wte"} <= sites
    on = {n for n, s in qm.specs().items() if s is not None}
    assert "transformer.h.0.attn.c_attn.weight_quantizer" in on and "transformer.h.1.attn.k_bmm_quantizer" in on
    assert "transformer.wte.weight_quantizer" not in on  # the tied head is excluded by the preset ("*wte*")
    # canonical [out, in] view of the [in, out] Conv1D weight: per-output-channel amax has 96 entries
    assert qm.qstate["transformer.h.0.attn.c_attn.weight_quantizer"]["amax"].size == 96
    y = jax.jit(qm.apply)(qm.params, jnp.asarray(TOKENS))
    assert y.shape == (1, 7, 64) and bool(jnp.all(jnp.isfinite(y)))


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="n_embd=30 must be a multiple of n_head=4"):
        gpt2.GPT2Config(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="unsupported architecture 'OPTForCausalLM'"):
        gpt2.GPT2Config.from_hf({"architectures": ["OPTForCausalLM"]})
    config = gpt2.GPT2Config(vocab_size=8, n_positions=4, n_embd=8, n_layer=1, n_head=2)
    with pytest.raises(ValueError, match="exceeds n_positions=4"):
        gpt2.forward({}, jnp.zeros((1, 5), jnp.int32), config=config)  # checked before any param is read
    with pytest.raises(FileNotFoundError, match="no config.json"):
        gpt2.load_gpt2(tmp_path)
