"""GGUF -> HF conversion on a tiny GGUF written here with the ``gguf`` package (as llama.cpp's converter
lays it out: permuted q/k rows, reversed shapes, a Q8_0 tensor, byte-level BPE vocabulary and merges)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq.models as jm
from jq.models.gguf import gguf_to_hf, permute_qk, unpermute_qk
from tests.models.conftest import tiny_model

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

_GGUF_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
               "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def _gguf_name(hf: str) -> str:
    if hf.startswith("model.layers."):
        _, _, i, *rest = hf.split(".")
        return f"blk.{i}.{_GGUF_NAMES['.'.join(rest[:-1])]}.{rest[-1]}"
    return {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}[hf]


def _vocab():
    """Byte-level alphabet + 3 merges + a control token, as GGUF lists them."""
    alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    merges = ["h e", "Ġ t", "Ġt he"]
    tokens = ["<|endoftext|>"] + alphabet + ["he", "Ġt", "Ġthe"]
    return tokens, [3] + [1] * (len(tokens) - 1), merges


def write_gguf(path, config, params, *, q8_embedding=False):
    tokens, types, merges = _vocab()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(config.num_hidden_layers)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_rope_freq_base(config.rope_theta)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_rope_dimension_count(config.head_dim)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    for name, value in jm.flatten_params(params).items():
        value = np.asarray(value, np.float32)
        if name.endswith("q_proj.weight"):
            value = permute_qk(value, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            value = permute_qk(value, config.num_key_value_heads)
        if q8_embedding and name == "model.embed_tokens.weight":
            q = gguf.quants.quantize(value, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(_gguf_name(name), q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(_gguf_name(name), value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture
def model():
    # vocabulary = the GGUF's 260 tokens; head_dim 8, 4 query / 2 KV heads: the q and k permutations differ
    return tiny_model(vocab_size=260, tie_word_embeddings=False)


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.arange(4 * 8 * 3, dtype=np.float32).reshape(32, 3)
    p = permute_qk(w, 4)
    assert not np.array_equal(p, w)
    np.testing.assert_array_equal(unpermute_qk(p, 4), w)
    # per head, rows (0..3 | 4..7) of the rotate-half layout become interleaved pairs (0, 4, 1, 5, ...)
    np.testing.assert_array_equal(p[:8, 0], w[[0, 4, 1, 5, 2, 6, 3, 7], 0])


def test_f32_gguf_converts_to_the_same_model(tmp_path, model):
    hf, config, params = model
    write_gguf(tmp_path / "m.gguf", config, params)
    out = gguf_to_hf(tmp_path / "m.gguf", tmp_path / "hf")
    loaded_config, loaded = jm.load_hf(out)
    assert loaded_config == jm.LlamaConfig.from_hf(dict(loaded_config.to_hf()))
    for field in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
                  "num_hidden_layers", "tie_word_embeddings", "vocab_size"):
        assert getattr(loaded_config, field) == getattr(config, field), field
    assert loaded_config.rope_theta == config.rope_theta
    for name, value in jm.flatten_params(params).items():
        np.testing.assert_array_equal(np.asarray(jm.flatten_params(loaded)[name]), np.asarray(value), err_msg=name)
    tokens = jnp.asarray([[5, 100, 259, 7, 64]])
    forward = jax.jit(jm.make_forward(config))
    np.testing.assert_array_equal(forward(loaded, tokens), forward(params, tokens))
    source = json.loads((out / "jq_gguf_source.json").read_text())
    assert source["tensor_types"] == {"F32": len(jm.expected_names(config))}


def test_quantized_tensor_is_dequantized(tmp_path, model):
    _, config, params = model
    write_gguf(tmp_path / "m.gguf", config, params, q8_embedding=True)
    out = gguf_to_hf(tmp_path / "m.gguf", tmp_path / "hf")
    _, loaded = jm.load_hf(out)
    emb, ref = loaded["model"]["embed_tokens"]["weight"], params["model"]["embed_tokens"]["weight"]
    err = float(jnp.max(jnp.abs(emb - ref)))
    assert 0 < err <= float(jnp.max(jnp.abs(ref))) / 127 * 1.01  # Q8_0: one scale amax/127 per 32 values
    assert json.loads((out / "jq_gguf_source.json").read_text())["tensor_types"]["Q8_0"] == 1


def test_tokenizer_from_vocab_and_merges(tmp_path, model):
    _, config, params = model
    write_gguf(tmp_path / "m.gguf", config, params)
    out = gguf_to_hf(tmp_path / "m.gguf", tmp_path / "hf")
    tok = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    tokens, _, _ = _vocab()
    enc = tok.encode("he the 42<|endoftext|>")
    assert enc.tokens == ["he", "Ġthe", "Ġ", "4", "2", "<|endoftext|>"]  # digits split one by one (smollm)
    assert enc.ids[-1] == 0 and enc.ids[1] == tokens.index("Ġthe")
    assert tok.decode(enc.ids, skip_special_tokens=False) == "he the 42<|endoftext|>"
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["eos_token"] == "<|endoftext|>" and cfg["add_bos_token"] is False


def test_existing_output_is_kept_and_errors(tmp_path, model):
    _, config, params = model
    write_gguf(tmp_path / "m.gguf", config, params)
    (tmp_path / "hf").mkdir()
    assert gguf_to_hf(tmp_path / "m.gguf", tmp_path / "hf") == tmp_path / "hf"
    assert not (tmp_path / "hf" / "config.json").exists()  # not overwritten without overwrite=True
    gguf_to_hf(tmp_path / "m.gguf", tmp_path / "hf", overwrite=True)
    assert (tmp_path / "hf" / "config.json").exists()
    w = gguf.GGUFWriter(str(tmp_path / "phi.gguf"), "phi2")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="general.architecture 'phi2' is not supported"):
        gguf_to_hf(tmp_path / "phi.gguf", tmp_path / "phi")
    assert not (tmp_path / "phi").exists()
