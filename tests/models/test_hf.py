"""HF directories in and out, the name map in both directions, and tensor-parallel placement."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jq.models as jm
from tests.models.conftest import tiny_model


def _same_tree(a, b):
    fa, fb = jm.flatten_params(a), jm.flatten_params(b)
    assert fa.keys() == fb.keys()
    for n in fa:
        np.testing.assert_array_equal(np.asarray(fa[n]), np.asarray(fb[n]), err_msg=n)


@pytest.mark.parametrize("max_shard_bytes", [None, 20_000])
def test_save_load_round_trip(tmp_path, max_shard_bytes):
    hf, config, params = tiny_model(architectures=["Qwen2ForCausalLM"])
    jm.save_hf(tmp_path, config.to_hf(), params, max_shard_bytes=max_shard_bytes)
    sharded = (tmp_path / "model.safetensors.index.json").exists()
    assert sharded == (max_shard_bytes is not None)
    if sharded:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1
        assert set(index["weight_map"]) == set(jm.expected_names(config))
    loaded_config, loaded = jm.load_hf(tmp_path)
    assert loaded_config == config
    _same_tree(params, loaded)


def test_bfloat16_load(tmp_path):
    _, config, params = tiny_model()
    jm.save_hf(tmp_path, config.to_hf(), params, dtype=jnp.bfloat16)
    _, loaded = jm.load_hf(tmp_path, dtype=jnp.float32)
    w = loaded["model"]["layers"][0]["self_attn"]["q_proj"]["weight"]
    np.testing.assert_array_equal(w, params["model"]["layers"][0]["self_attn"]["q_proj"]["weight"]
                                  .astype(jnp.bfloat16).astype(jnp.float32))


def test_tied_checkpoint_may_carry_lm_head(tmp_path):
    _, config, params = tiny_model(tie_word_embeddings=True)
    extra = dict(params, lm_head={"weight": params["model"]["embed_tokens"]["weight"]})
    jm.save_hf(tmp_path, config.to_hf(), extra)
    _, loaded = jm.load_hf(tmp_path)
    assert "lm_head" not in loaded


def test_unexpected_and_missing_tensors_raise(tmp_path):
    _, config, params = tiny_model()
    extra = dict(params, vision_tower={"weight": jnp.zeros(3)})
    jm.save_hf(tmp_path / "extra", config.to_hf(), extra)
    with pytest.raises(ValueError, match=r"tensors not in a LlamaForCausalLM.*vision_tower.weight"):
        jm.load_hf(tmp_path / "extra")
    missing = {k: v for k, v in params.items() if k != "lm_head"}
    jm.save_hf(tmp_path / "missing", config.to_hf(), missing)
    with pytest.raises(KeyError, match="missing tensors.*lm_head.weight"):
        jm.load_hf(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        jm.load_hf(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps(config.to_hf()))
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor"):
        jm.load_hf(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps(dict(config.to_hf(), architectures=["PhiForCausalLM"])))
    with pytest.raises(ValueError, match="unsupported architecture 'PhiForCausalLM'"):
        jm.load_hf(tmp_path / "empty")


def test_name_map_both_directions():
    _, config, params = tiny_model()
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    for path, _leaf in leaves:
        name = jm.hf_name_of(path)
        assert jm.param_path_of(name) == tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path)
    assert jm.hf_name_of(("model", "layers", 3, "mlp", "up_proj", "weight")) == "model.layers.3.mlp.up_proj.weight"
    assert jm.param_path_of("model.layers.12.self_attn.k_proj.bias") == ("model", "layers", 12, "self_attn",
                                                                          "k_proj", "bias")
    assert jm.unflatten_params(jm.flatten_params(params)).keys() == params.keys()


def test_site_to_hf_module():
    _, tied, _ = tiny_model(tie_word_embeddings=True)
    _, untied, _ = tiny_model()
    assert jm.site_to_hf_module("model.layers.3.self_attn.q_proj") == "model.layers.3.self_attn.q_proj"
    assert jm.site_to_hf_module("model.layers.3.mlp.down_proj.input_quantizer") == "model.layers.3.mlp.down_proj"
    assert jm.site_to_hf_module("model.layers.0.self_attn.k_bmm_quantizer") == "model.layers.0.self_attn"
    assert jm.site_to_hf_module("model.embed_tokens.weight_quantizer", tied) == "lm_head"
    assert jm.site_to_hf_module("model.embed_tokens", untied) == "model.embed_tokens"
    assert jm.site_to_hf_module("lm_head.weight_quantizer") == "lm_head"


def test_partition_specs_column_row_replicated():
    spec = jm.sharding.partition_spec_of
    assert spec("model.layers.0.self_attn.q_proj.weight", (32, 32)) == P("tp", None)
    assert spec("model.layers.0.self_attn.q_proj.bias", (32,)) == P("tp")
    assert spec("model.layers.0.self_attn.o_proj.weight", (32, 32)) == P(None, "tp")
    assert spec("model.layers.0.mlp.down_proj.weight", (32, 48)) == P(None, "tp")
    assert spec("model.layers.0.input_layernorm.weight", (32,)) == P()
    assert spec("model.norm.weight", (32,)) == P()
    assert spec("lm_head.weight", (48, 32)) == P("tp", None)
    assert spec("model.layers.0.self_attn.k_proj.weight", (24, 32), axis_size=5) == P()  # 24 % 5: replicated


@pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 devices (tests/conftest.py forces 2 CPU devices)")
def test_load_onto_mesh_gives_same_logits(tmp_path):
    _, config, params = tiny_model()
    jm.save_hf(tmp_path, config.to_hf(), params)
    with pytest.raises(ValueError, match="needs AxisType.Auto"):
        jm.load_hf(tmp_path, mesh=jax.make_mesh((2,), ("tp",), axis_types=(jax.sharding.AxisType.Explicit,)))
    mesh = jax.make_mesh((2,), ("tp",), axis_types=(jax.sharding.AxisType.Auto,))
    _, sharded = jm.load_hf(tmp_path, mesh=mesh)
    q = sharded["model"]["layers"][0]["self_attn"]["q_proj"]["weight"]
    assert q.sharding.spec == P("tp", None) and len(q.sharding.device_set) == 2
    assert q.addressable_shards[0].data.shape == (16, 32)
    norm = sharded["model"]["norm"]["weight"]
    assert norm.sharding.is_fully_replicated
    tokens = jnp.asarray([[1, 2, 3, 4, 5, 6]])
    forward = jax.jit(jm.make_forward(config))
    np.testing.assert_allclose(forward(sharded, tokens), forward(params, tokens), atol=1e-4)
