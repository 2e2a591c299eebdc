"""Presets carry ModelOpt's names, formats and algorithms, plus the standard exclusions."""

import copy

import jax.numpy as jnp
import numpy as np
import pytest

import jq
from jq.config import as_config
from jq.presets import PRESETS, get_preset

EXPECTED = {  # preset: (weight format, input format or None, algorithm)
    "INT8_DEFAULT_CFG": ("int8 per-axis0", "int8 per-tensor", "max"),
    "INT8_SMOOTHQUANT_CFG": ("int8 per-axis0", "int8 per-tensor", "smoothquant"),
    "INT8_SMOOTHQUANT_PER_TOKEN_CFG": ("int8 per-axis0", "int8 per-token dyn", "smoothquant"),
    "INT8_WEIGHT_ONLY_CFG": ("int8 per-axis0", None, "max"),
    "FP8_DEFAULT_CFG": ("e4m3 per-tensor", "e4m3 per-tensor", "max"),
    "FP8_PER_CHANNEL_PER_TOKEN_CFG": ("e4m3 per-axis0", "e4m3 per-token dyn", "max"),
    "FP8_BLOCKWISE_CFG": ("e4m3 b128x128", "e4m3 b128 dyn", "max"),
    "FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG": ("e4m3 b128x128", None, "max"),
    "INT4_BLOCKWISE_WEIGHT_ONLY_CFG": ("int4 b128", None, "max"),
    "INT4_AWQ_CFG": ("int4 b128", None, "awq_lite"),
    "INT4_AWQ_CLIP_CFG": ("int4 b128", None, "awq_clip"),
    "INT4_AWQ_FULL_CFG": ("int4 b128", None, "awq_full"),
    "W4A8_AWQ_BETA_CFG": ("int4 b128 -> e4m3 per-tensor", "e4m3 per-tensor", "awq_lite"),
    "NVFP4_DEFAULT_CFG": ("nvfp4 b16", "nvfp4 b16", "max"),
    "NVFP4_AWQ_LITE_CFG": ("nvfp4 b16", "nvfp4 b16", "awq_lite"),
    "NVFP4_AWQ_CLIP_CFG": ("nvfp4 b16", "nvfp4 b16", "awq_clip"),
    "NVFP4_AWQ_FULL_CFG": ("nvfp4 b16", "nvfp4 b16", "awq_full"),
    "NVFP4_SVDQUANT_DEFAULT_CFG": ("nvfp4 b16", "nvfp4 b16", "svdquant"),
    "W4A16_NVFP4_CFG": ("nvfp4 b16", None, "max"),
    "MXFP8_DEFAULT_CFG": ("mxfp8 b32", "mxfp8 b32", None),
    "MXFP4_DEFAULT_CFG": ("mxfp4 b32", "mxfp4 b32", None),
    "MXFP6_DEFAULT_CFG": ("mxfp6_e3m2 b32", "mxfp6_e3m2 b32", None),
    "MXINT8_DEFAULT_CFG": ("mxint8 b32", "mxint8 b32", None),
    "FP8_KV_CFG": (None, None, "max"),
    "NVFP4_KV_CFG": (None, None, "max"),
}


def _fmt(spec):
    if isinstance(spec, tuple):
        return " -> ".join(s.describe() for s in spec) if any(s.enable for s in spec) else None
    return spec.describe() if spec.enable else None


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_formats(name):
    cfg = as_config(PRESETS[name])
    w, i, alg = EXPECTED[name]
    assert _fmt(cfg.resolve("block.fc1.weight_quantizer")) == w
    assert _fmt(cfg.resolve("block.fc1.input_quantizer")) == i
    assert cfg.algorithm.method == alg


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("excluded", ["lm_head", "model.router", "layers.0.mlp.gate.proj", "output_layer",
                                      "model.embed_tokens", "embed", "transformer.wte", "layers.0.input_layernorm",
                                      "unmatched_out"])
def test_standard_exclusions(name, excluded):
    cfg = as_config(PRESETS[name])
    for slot in ("weight_quantizer", "input_quantizer", "output_quantizer", "q_bmm_quantizer"):
        spec = cfg.resolve(f"{excluded}.{slot}")
        if excluded == "unmatched_out" and slot in ("weight_quantizer", "input_quantizer"):
            continue
        assert _fmt(spec) is None, (name, excluded, slot)


def test_kv_fragments_enable_k_and_v_only():
    cfg = as_config(jq.NVFP4_KV_CFG)
    assert _fmt(cfg.resolve("attn.k_bmm_quantizer")) == "nvfp4 b16"
    assert _fmt(cfg.resolve("attn.q_bmm_quantizer")) is None


def test_presets_are_modelopt_dicts_that_copy_and_edit():
    cfg = copy.deepcopy(jq.INT4_AWQ_CFG)
    cfg["quant_cfg"]["*lm_head*"] = {"enable": False}
    assert jq.INT4_AWQ_CFG["quant_cfg"] is not cfg["quant_cfg"]
    assert get_preset("int8_default") == jq.INT8_DEFAULT_CFG
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("int3")


def test_unknown_algorithm_lists_the_valid_ones():
    import jax.numpy as jnp

    cfg = {**jq.INT4_AWQ_CFG, "algorithm": "awq_clipp"}
    with pytest.raises(ValueError, match=r"'awq_clipp' \(did you mean 'awq_clip'\?\).*'awq_full'.*'gptq'"):
        jq.quantize({"w": jnp.ones((4, 4))}, lambda p, x: x @ p["w"], cfg, example_args=(jnp.ones((2, 4)),))


# ModelOpt's MLP-only presets: which quantizers each one enables (ModelOpt's recipe units, by name).
ONLY = {
    "NVFP4_MLP_ONLY_CFG": ({"h.0.mlp.c_fc", "m.layers.0.mlp.experts.3.w1", "m.0.block_sparse_moe.experts.1.w2",
                            "b.mixer.up_proj", "b.mixer.down_proj"}, True),
    "NVFP4_OMLP_ONLY_CFG": ({"h.0.mlp.c_fc", "layers.0.self_attn.o_proj", "b.mixer.up_proj", "b.mixer.down_proj",
                             "m.0.block_sparse_moe.experts.1.w2", "m.layers.0.mlp.experts.3.w1"}, True),
    "NVFP4_EXPERTS_ONLY_CFG": ({"m.0.block_sparse_moe.experts.1.w2", "m.layers.0.mlp.experts.3.w1"}, True),
    "MXFP4_MLP_WEIGHT_ONLY_CFG": ({"h.0.mlp.c_fc", "m.0.block_sparse_moe.experts.1.w2",
                                   "m.layers.0.mlp.experts.3.w1"}, False),
}
SITES = ["h.0.mlp.c_fc", "m.layers.0.mlp.experts.3.w1", "m.0.block_sparse_moe.experts.1.w2", "b.mixer.up_proj",
         "b.mixer.down_proj", "layers.0.self_attn.o_proj", "layers.0.self_attn.q_proj", "layers.0.mlp.gate.proj",
         "lm_head"]


@pytest.mark.parametrize("name", sorted(ONLY))
def test_mlp_only_presets_enable_exactly_their_layers(name):
    cfg = as_config(PRESETS[name])
    enabled, with_inputs = ONLY[name]
    fmt = "mxfp4 b32" if name.startswith("MX") else "nvfp4 b16"
    for site in SITES:
        want = fmt if site in enabled else None
        assert _fmt(cfg.resolve(f"{site}.weight_quantizer")) == want, (name, site)
        assert _fmt(cfg.resolve(f"{site}.input_quantizer")) == (want if with_inputs else None), (name, site)


@pytest.mark.parametrize("name, why", [("FP8_AFFINE_KV_CFG", "asymmetric"), ("NVFP4_AFFINE_KV", "asymmetric"),
                                       ("nvfp4_mlp_weight_only", "32-element blocks")])
def test_modelopt_presets_jq_cannot_honour_say_why(name, why):
    with pytest.raises(ValueError, match=f"not available in jq.*{why}"):
        get_preset(name)


def test_projections_named_like_embeddings_stay_quantized():
    cfg = as_config(jq.INT8_DEFAULT_CFG)
    assert cfg.resolve("embed_proj.weight_quantizer").enable
    assert cfg.resolve("patch_embed.proj.weight_quantizer").enable
    assert cfg.resolve("normalizer_mlp.weight_quantizer").enable


# -- the output head (issue 11 item 6) ------------------------------------------------------------------------

def _sequential():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(4)])
    x = jnp.linspace(-1.0, 1.0, 16).reshape(2, 8)
    return model.init(jax.random.key(0), x), model.apply, x


def _enabled(qm):
    return sorted(n for n in qm.quantizer_names if qm.spec(n) is not None)


def test_presets_keep_the_output_dense_of_a_linen_sequential_unquantized():
    params, apply, x = _sequential()
    qm = jq.quantize(params, apply, jq.INT8_DEFAULT_CFG, calib_data=[(x,)], progress=False)
    assert _enabled(qm) == ["layers_0.input_quantizer", "layers_0.weight_quantizer"]
    assert "output head (the '@output_head' entry applies to it): layers_2" in jq.quant_summary(qm)


def test_presets_keep_the_output_layer_of_a_plain_function_unquantized():
    import jax.numpy as jnp
    params = {"w1": jnp.linspace(-1, 1, 128).reshape(16, 8), "w2": jnp.linspace(-1, 1, 64).reshape(4, 16)}
    fn = lambda p, x: jnp.tanh(x @ p["w1"].T) @ p["w2"].T  # noqa: E731
    x = jnp.linspace(-1.0, 1.0, 16).reshape(2, 8)
    qm = jq.quantize(params, fn, jq.INT8_WEIGHT_ONLY_CFG, calib_data=[(x,)], progress=False)
    assert _enabled(qm) == ["w1.weight_quantizer"]


def test_explicit_config_without_the_role_quantizes_the_output_layer():
    params, apply, x = _sequential()
    cfg = {"quant_cfg": {"*weight_quantizer": {"num_bits": 8, "axis": 0}, "default": {"enable": False}},
           "algorithm": "max"}
    qm = jq.quantize(params, apply, cfg, calib_data=[(x,)], progress=False)
    assert _enabled(qm) == ["layers_0.weight_quantizer", "layers_2.weight_quantizer"]


def test_a_preset_quantizes_the_head_once_its_role_entry_is_deleted_or_overridden():
    params, apply, x = _sequential()
    cfg = get_preset("INT8_WEIGHT_ONLY_CFG")
    del cfg["quant_cfg"]["@output_head"]
    qm = jq.quantize(params, apply, cfg, calib_data=[(x,)], progress=False)
    assert "layers_2.weight_quantizer" in _enabled(qm)
    cfg = get_preset("INT8_WEIGHT_ONLY_CFG")
    cfg["quant_cfg"]["layers_2.*"] = {"enable": True}  # a later entry wins; the format comes from earlier ones
    qm = jq.quantize(params, apply, cfg, calib_data=[(x,)], progress=False)
    assert qm.spec("layers_2.weight_quantizer").describe() == "int8 per-axis0"


def test_every_main_preset_excludes_the_output_head():
    fragments = {"FP8_KV_CFG", "NVFP4_KV_CFG"}
    assert all(PRESETS[n]["quant_cfg"].get("@output_head") == {"enable": False} for n in PRESETS if n not in fragments)


def test_unknown_role_is_rejected_with_a_suggestion():
    with pytest.raises(ValueError, match=r"unknown role \(did you mean '@output_head'\?\)"):
        as_config({"quant_cfg": {"@output_haed": {"enable": False}}})


def test_int8_smoothquant_per_token_smooths_with_alpha_half_and_keeps_dynamic_activations(rng):
    # SmoothQuant's scale sqrt(max_i |W_ji|) / sqrt(max_t |x_tj|) (alpha 0.5) on a site whose input quantizer is
    # per-token dynamic: the input gets the pre_quant_scale but no calibrated amax (its scale is per token).
    w = jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((32, 16)) * np.linspace(0.5, 20, 16), jnp.float32)
    qm = jq.quantize({"w": w}, lambda p, x: x @ p["w"], get_preset("INT8_SMOOTHQUANT_PER_TOKEN"), calib_data=[(x,)],
                     progress=False)
    want = jnp.sqrt(jnp.max(jnp.abs(w), axis=1)) / jnp.sqrt(jnp.max(jnp.abs(x), axis=0))
    np.testing.assert_allclose(qm.qstate["w.input_quantizer"]["pre_quant_scale"], want, rtol=1e-6)
    assert "amax" not in qm.qstate["w.input_quantizer"]
    y = qm.apply(qm.params, x)
    rel = float(jnp.linalg.norm(y - x @ w) / jnp.linalg.norm(x @ w))
    assert 0 < rel < 0.02  # W8A8 error of a well-scaled 16-wide dot


def test_with_block_size_sets_integer_blocks_and_keeps_format_blocks():
    fp8 = jq.presets.with_block_size(jq.FP8_BLOCKWISE_CFG, 64)["quant_cfg"]
    assert fp8["*weight_quantizer"]["block_sizes"] == {-1: 64, -2: 64}
    assert fp8["*input_quantizer"]["block_sizes"] == {-1: 64}
    assert jq.FP8_BLOCKWISE_CFG["quant_cfg"]["*weight_quantizer"]["block_sizes"] == {-1: 128, -2: 128}  # a copy
    w4a8 = jq.presets.with_block_size(jq.W4A8_AWQ_BETA_CFG, 32)["quant_cfg"]["*weight_quantizer"]
    assert w4a8[0]["block_sizes"] == {-1: 32, "type": "static"} and "block_sizes" not in w4a8[1]
    with pytest.raises(ValueError, match="no integer block size"):
        jq.presets.with_block_size(jq.NVFP4_DEFAULT_CFG, 32)  # NVFP4's 16 is the format's
    with pytest.raises(ValueError, match="no integer block size"):
        jq.presets.with_block_size(jq.FP8_PER_CHANNEL_PER_TOKEN_CFG, 32)  # per-token None stays
    with pytest.raises(ValueError, match="positive int"):
        jq.presets.with_block_size(jq.INT4_AWQ_CFG, 0)
