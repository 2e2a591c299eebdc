"""Tiny random Llama-family models shared by the model tests."""

import jax
import pytest

import jq.models as jm


def tiny_hf(**overrides) -> dict:
    """A ``config.json`` dict of a 2-layer GQA Llama (4 query heads, 2 KV heads, head_dim 8)."""
    d = {"architectures": ["LlamaForCausalLM"], "vocab_size": 48, "hidden_size": 32, "intermediate_size": 48,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
         "rope_theta": 10000.0, "max_position_embeddings": 64, "tie_word_embeddings": False}
    d.update(overrides)
    return d


def tiny_model(seed: int = 0, **overrides):
    """``(hf_dict, config, params)`` with weights large enough (std 0.3) for non-trivial attention."""
    hf = tiny_hf(**overrides)
    config = jm.LlamaConfig.from_hf(hf)
    return hf, config, jm.init_params(config, jax.random.key(seed), scale=0.3)


@pytest.fixture
def tiny():
    return tiny_model()
