"""Parsing HF config.json dicts into LlamaConfig, and clear errors for what is not supported."""

import json

import pytest

import jq.models as jm
from tests.models.conftest import tiny_hf


def test_smollm2_style_config():
    cfg = jm.LlamaConfig.from_hf(tiny_hf(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True,
                                         eos_token_id=[2, 3]))
    assert (cfg.head_dim, cfg.num_groups, cfg.tie_word_embeddings) == (8, 4, True)
    assert cfg.eos_token_id == (2, 3)  # hashable: the config is a static jit argument
    hash(cfg)


def test_qwen2_has_qkv_bias_only_and_llama_attention_bias_has_all_four():
    qwen = jm.LlamaConfig.from_hf(tiny_hf(architectures=["Qwen2ForCausalLM"]))
    llama = jm.LlamaConfig.from_hf(tiny_hf(attention_bias=True))
    assert (qwen.qkv_bias, qwen.o_bias) == (True, False)
    assert (llama.qkv_bias, llama.o_bias) == (True, True)


def test_mistral_reads_sliding_window_llama_ignores_it():
    assert jm.LlamaConfig.from_hf(tiny_hf(architectures=["MistralForCausalLM"], sliding_window=7)).sliding_window == 7
    assert jm.LlamaConfig.from_hf(tiny_hf(sliding_window=7)).sliding_window is None


def test_round_trip_through_to_hf():
    for arch in jm.SUPPORTED_ARCHITECTURES:
        rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16}
        cfg = jm.LlamaConfig.from_hf(tiny_hf(architectures=[arch], rope_scaling=rope))
        assert jm.LlamaConfig.from_hf(json.loads(json.dumps(cfg.to_hf()))) == cfg


def test_model_type_when_architectures_missing():
    d = tiny_hf()
    del d["architectures"]
    d["model_type"] = "qwen2"
    assert jm.LlamaConfig.from_hf(d).architecture == "Qwen2ForCausalLM"


@pytest.mark.parametrize("overrides, error, match", [
    ({"architectures": ["GPTNeoXForCausalLM"]}, ValueError, "unsupported architecture 'GPTNeoXForCausalLM'"),
    ({"hidden_act": "gelu"}, NotImplementedError, "hidden_act='gelu'"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, NotImplementedError, "rope_type 'yarn'"),
    ({"architectures": ["Qwen2ForCausalLM"], "use_sliding_window": True}, NotImplementedError, "use_sliding_window"),
    ({"num_key_value_heads": 3}, ValueError, "multiple of num_key_value_heads=3"),
    ({"hidden_size": 30}, ValueError, "hidden_size=30 is not a multiple"),
])
def test_clear_errors(overrides, error, match):
    with pytest.raises(error, match=match):
        jm.LlamaConfig.from_hf(tiny_hf(**overrides))


def test_load_config_without_config_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        jm.load_config(tmp_path)
