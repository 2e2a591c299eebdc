"""jq.quantize on the Llama-family decoder: the sites and quantizers a ModelOpt user expects, under jit."""

import jax
import jax.numpy as jnp
import numpy as np

import jq
import jq.models as jm
from tests.models.conftest import tiny_model

TOKENS = jnp.asarray([[3, 17, 5, 40, 22, 9, 31, 0], [1, 2, 3, 4, 5, 6, 7, 8]], jnp.int32)
PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj")


def _enabled(qm):
    return {n for n, s in qm.specs().items() if s is not None}


def test_fp8_default_finds_every_projection_and_attention_site():
    _, config, params = tiny_model()
    qm = jq.quantize(params, jm.make_forward(config), jq.FP8_DEFAULT_CFG, calib_data=[(TOKENS,)], progress=False)
    sites = {s.name: s for s in qm.traced.sites}
    layers = [f"model.layers.{i}" for i in range(config.num_hidden_layers)]
    linear = {f"{layer}.{p}" for layer in layers for p in PROJ} | {"lm_head"}
    assert {n for n, s in sites.items() if s.kind == "linear"} == linear
    assert {n for n, s in sites.items() if s.kind == "bmm"} == {f"{layer}.self_attn" for layer in layers}
    for layer in layers:
        for slot in ("q_bmm_quantizer", "k_bmm_quantizer", "v_bmm_quantizer", "softmax_quantizer"):
            assert f"{layer}.self_attn.{slot}" in qm.quantizer_names
    want_on = {f"{n}.{slot}" for n in linear - {"lm_head"} for slot in ("weight_quantizer", "input_quantizer")}
    assert _enabled(qm) == want_on  # lm_head excluded by the preset; bmm quantizers off without a KV preset
    # weights are read in their HF [out, in] layout: the canonical view needs no transpose
    assert sites["model.layers.0.mlp.down_proj"].view.shape == (32, 48)
    y = jax.jit(qm.apply)(qm.params, TOKENS)
    ref = jax.jit(jm.make_forward(config))(params, TOKENS)
    rel = float(jnp.sqrt(jnp.mean((y - ref) ** 2) / jnp.mean(ref ** 2)))
    assert 0 < rel < 0.25, rel  # FP8 changes the logits (11 % relative RMS on this sharp random model)


def test_kv_preset_enables_k_and_v_bmm_only():
    _, config, params = tiny_model()
    cfg = jq.merge_presets(jq.INT8_WEIGHT_ONLY_CFG, jq.FP8_KV_CFG)
    qm = jq.quantize(params, jm.make_forward(config), cfg, calib_data=[(TOKENS,)], progress=False)
    on = _enabled(qm)
    assert {n for n in on if "bmm" in n} == {f"model.layers.{i}.self_attn.{s}" for i in range(2)
                                             for s in ("k_bmm_quantizer", "v_bmm_quantizer")}
    k_amax, v_amax = jm.kv_amax_from(qm, config)
    assert bool(jnp.all(k_amax > 0)) and bool(jnp.all(v_amax > 0))


def test_tied_head_is_the_embedding_site_and_stays_unquantized():
    _, config, params = tiny_model(tie_word_embeddings=True)
    qm = jq.quantize(params, jm.make_forward(config), jq.NVFP4_DEFAULT_CFG, calib_data=[(TOKENS,)], progress=False)
    names = {s.name for s in qm.traced.sites}
    assert "model.embed_tokens" in names and "lm_head" not in names
    assert not any(n.startswith("model.embed_tokens.") for n in _enabled(qm))
    assert jm.site_to_hf_module("model.embed_tokens.weight_quantizer", config) == "lm_head"


def test_quantized_apply_is_what_evaluate_takes():
    _, config, params = tiny_model()
    forward = jm.make_forward(config)
    qm = jq.quantize(params, forward, jq.W4A16_NVFP4_CFG, calib_data=[(TOKENS,)], progress=False)
    x, y = np.asarray(TOKENS[:, :-1]), np.asarray(TOKENS[:, 1:])
    res = jm.evaluate(qm.apply, qm.params, x, y, reference=(forward, params), progress=False)
    assert res.kl > 0 and 0 <= res.top1 <= 1 and res.n_tokens == x.size
