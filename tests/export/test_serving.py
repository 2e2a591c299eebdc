"""Serving checkpoints (jq.export.serving): what vLLM / TensorRT-LLM read, checked by the rule-based reader
(jq.export.serving_reader) and by running the checkpoint back in jq: the quantized logits, bit for bit."""

import copy
import functools
import json

import jax
import ml_dtypes
import jax.numpy as jnp
import numpy as np
import pytest

import jq
import jq.models as jm
from jq.export.serving import block_fp8_config, to_serving_checkpoint
from jq.export.serving_reader import (ServingCheckpoint, _block_fp8_quant, dequantize_weight,
                                       read_serving_checkpoint)
from jq.model import QuantizedModel
from tests.models.conftest import tiny_model

TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 48, (2, 12)), jnp.int32)


def _awq16():
    cfg = copy.deepcopy(jq.INT4_AWQ_CFG)  # groups of 16: the tiny model has 32 input features
    cfg["quant_cfg"]["*weight_quantizer"]["block_sizes"][-1] = 16
    return cfg


CASES = {
    "FP8+KV": (jq.merge_presets(jq.FP8_DEFAULT_CFG, jq.FP8_KV_CFG), "FP8", "FP8"),
    "FP8_PCPT": (jq.FP8_PER_CHANNEL_PER_TOKEN_CFG, "FP8_PER_CHANNEL_PER_TOKEN", None),
    "NVFP4": (jq.NVFP4_DEFAULT_CFG, "NVFP4", None),
    "W4A16_NVFP4+KV": (jq.merge_presets(jq.W4A16_NVFP4_CFG, jq.FP8_KV_CFG), "W4A16_NVFP4", "FP8"),
    "INT4_AWQ": (_awq16(), "W4A16_AWQ", None),
}


@functools.lru_cache(maxsize=None)  # one calibration per (case, options) for the whole module
def _quantized(case, *, share=True, tied=False):
    hf, config, params = tiny_model(num_hidden_layers=1, tie_word_embeddings=tied)
    qm = QuantizedModel.create(params, jm.make_forward(config), {**CASES, "KV only": (jq.FP8_KV_CFG,)}[case][0])
    qm = jq.calibrate(qm, [(TOKENS,)], progress=False, share_sibling_weight_amax=share)
    return hf, config, qm


@pytest.mark.parametrize("case", list(CASES))
def test_checkpoint_follows_serving_rules_and_reproduces_quantized_logits_exactly(case, tmp_path):
    _, algo, kv = CASES[case]
    hf, config, qm = _quantized(case)
    out = to_serving_checkpoint(qm, tmp_path / "ckpt", hf_config=hf)
    ck = read_serving_checkpoint(out)  # raises on any name / dtype / shape / sibling rule
    q = json.loads((out / "hf_quant_config.json").read_text())["quantization"]
    assert (q["quant_algo"], q["kv_cache_quant_algo"], q["exclude_modules"]) == (algo, kv, ["lm_head"])
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "modelopt" and qc["quant_algo"] == algo and qc["ignore"] == ["lm_head"]
    assert json.loads((out / "config.json").read_text())["hidden_size"] == hf["hidden_size"]  # carried over
    assert len(ck.modules()) == 7  # every projection of the layer; lm_head stays float
    assert "lm_head.weight" in ck.tensors and ck.tensors["lm_head.weight"].dtype == np.float32
    if kv:
        assert ck.tensors["model.layers.0.self_attn.k_proj.k_scale"].shape == ()
    if algo.startswith(("NVFP4", "W4A16")):
        assert q["group_size"] == 16
    if algo == "W4A16_AWQ":  # fused siblings' pre_quant_scale lives in the norm before them (TensorRT-LLM)
        assert "model.layers.0.self_attn.q_proj.pre_quant_scale" not in ck.tensors
        assert ck.tensors["model.layers.0.self_attn.o_proj.pre_quant_scale"].shape == (32,)
    _, forward, params = ck.to_jq()
    want = jax.jit(qm.apply)(qm.params, TOKENS)
    got = jax.jit(forward)(params, TOKENS)
    if algo == "W4A16_AWQ":
        # ModelOpt's INT scale is amax / 7 (what serving stacks multiply by); jq's fake quant divides by
        # 7 / amax, one float32 ulp away, and rms(x) * w * s became rms(x) * (w * s): equal to float32 rounding
        # (measured max |diff| 2.8e-6 on logits ~1 before the norm fold)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)
        assert not np.array_equal(np.asarray(got), np.asarray(jax.jit(jm.make_forward(config))(
            jax.tree_util.tree_map(np.asarray, qm.params), TOKENS)))  # and it is not the float model
    else:
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_kv_scale_is_the_key_amax_over_448():
    # the keys' amax (after RoPE), not the queries': jq names the q·kᵀ operands by the p·v data flow
    _, config, qm = _quantized("KV only")
    emb = qm.params["model"]["embed_tokens"]["weight"][TOKENS]
    layer = qm.params["model"]["layers"][0]
    x = jm.llama.rms_norm(emb, layer["input_layernorm"], config.rms_norm_eps)
    pos = jnp.broadcast_to(jnp.arange(TOKENS.shape[1]), TOKENS.shape)
    cos, sin = jm.rope.rope_tables(config, pos)
    _, k, _ = jm.llama.project_qkv(layer["self_attn"], x, cos, sin, config)
    amax = qm.qstate["model.layers.0.self_attn.k_bmm_quantizer"]["amax"]
    assert float(amax) == float(jnp.max(jnp.abs(k)))


def test_nvfp4_packing_low_nibble_is_the_even_element():
    # one row: elements [0.5, -6, 1, 0 ...]; codes 1, 15, 2, 0 -> bytes 0xF1, 0x02
    t = {"weight": np.array([[0xF1, 0x02] + [0] * 6], np.uint8),
         "weight_scale": np.ones((1, 1), ml_dtypes.float8_e4m3fn),
         "weight_scale_2": np.float32(1.0)}
    w = dequantize_weight("NVFP4", t, 16)
    np.testing.assert_array_equal(w[0, :4], [0.5, -6.0, 1.0, 0.0])


def test_sharded_checkpoint_has_an_index_and_the_same_tensors(tmp_path):
    hf, _, qm = _quantized("NVFP4")
    one = read_serving_checkpoint(to_serving_checkpoint(qm, tmp_path / "one", hf_config=hf))
    out = to_serving_checkpoint(qm, tmp_path / "many", hf_config=hf, max_shard_bytes=4096)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert not (out / "model.safetensors").exists()
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in one.tensors.values())
    many = read_serving_checkpoint(out)
    assert set(many.tensors) == set(one.tensors)
    for name, v in one.tensors.items():
        assert many.tensors[name].dtype == v.dtype and many.tensors[name].tobytes() == v.tobytes()


def test_fused_siblings_share_global_scales_or_the_export_raises(tmp_path):
    hf, _, qm = _quantized("NVFP4", share=False)
    with pytest.raises(ValueError, match="fused siblings .* weight_scale_2"):
        to_serving_checkpoint(qm, tmp_path / "a", hf_config=hf)
    with pytest.warns(UserWarning, match="unified weight_scale_2"):
        out = to_serving_checkpoint(qm, tmp_path / "b", hf_config=hf, unify_siblings=True)
    ck = read_serving_checkpoint(out)
    p = "model.layers.0.self_attn."
    assert ck.tensors[p + "q_proj.weight_scale_2"] == ck.tensors[p + "v_proj.weight_scale_2"]
    assert ck.tensors[p + "q_proj.input_scale"] == ck.tensors[p + "k_proj.input_scale"]


def test_existing_directory_is_not_overwritten(tmp_path):
    hf, _, qm = _quantized("FP8_PCPT")
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(FileExistsError, match="exists"):
        to_serving_checkpoint(qm, tmp_path / "ckpt", hf_config=hf)
    to_serving_checkpoint(qm, tmp_path / "ckpt", hf_config=hf, overwrite=True)
    assert read_serving_checkpoint(tmp_path / "ckpt").quant["quant_algo"] == "FP8_PER_CHANNEL_PER_TOKEN"


def test_reader_rejects_what_a_serving_stack_would_trip_over(tmp_path):
    hf, _, qm = _quantized("FP8_PCPT")
    out = to_serving_checkpoint(qm, tmp_path / "ckpt", hf_config=hf)
    quant_file = out / "hf_quant_config.json"
    good = json.loads(quant_file.read_text())
    bad = copy.deepcopy(good)
    bad["quantization"]["quant_algo"] = "FP8"  # per-tensor FP8 wants scalar scales and an input_scale
    quant_file.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="does not match hf_quant_config"):
        read_serving_checkpoint(out)
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"]["quant_algo"] = "FP8"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="weight_scale: float32 \\(32,\\), FP8 needs float32 \\(\\)"):
        read_serving_checkpoint(out)


def test_tied_head_is_excluded_under_its_hf_name(tmp_path):
    hf, _, qm = _quantized("FP8_PCPT", tied=True)
    ck = read_serving_checkpoint(to_serving_checkpoint(qm, tmp_path / "ckpt", hf_config=hf))
    assert ck.quant["exclude_modules"] == ["lm_head"] and "lm_head.weight" not in ck.tensors
    _, forward, params = ck.to_jq()
    np.testing.assert_array_equal(np.asarray(jax.jit(forward)(params, TOKENS)),
                                  np.asarray(jax.jit(qm.apply)(qm.params, TOKENS)))


def _block_fp8(block):
    cfg = copy.deepcopy(jq.FP8_BLOCKWISE_CFG)  # the tiny model's widths are 16, 32 and 48
    cfg["quant_cfg"]["*weight_quantizer"]["block_sizes"].update({-1: block, -2: block})
    cfg["quant_cfg"]["*input_quantizer"]["block_sizes"][-1] = block
    return cfg


@functools.lru_cache(maxsize=None)
def _block_fp8_model(block):
    hf, config, params = tiny_model(num_hidden_layers=1)
    qm = QuantizedModel.create(params, jm.make_forward(config), _block_fp8(block))
    return hf, config, jq.calibrate(qm, [(TOKENS,)], progress=False)


def test_block_fp8_checkpoint_is_deepseeks_layout_and_reproduces_quantized_logits_exactly(tmp_path):
    hf, config, qm = _block_fp8_model(16)
    out = to_serving_checkpoint(qm, tmp_path / "ckpt", hf_config=hf)
    assert not (out / "hf_quant_config.json").exists()  # DeepSeek-V3's layout has none
    assert json.loads((out / "config.json").read_text())["quantization_config"] == {
        "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [16, 16],
        "ignored_layers": ["lm_head"], "modules_to_not_convert": ["lm_head"]}
    ck = read_serving_checkpoint(out)
    assert sorted(set(ck.modules().values())) == ["FP8_BLOCK_SCALES"] and len(ck.modules()) == 7
    t = ck.module_tensors("model.layers.0.mlp.down_proj")  # [32, 48]: 2 x 3 tiles
    assert set(t) == {"weight", "weight_scale_inv"}
    assert t["weight"].dtype == ml_dtypes.float8_e4m3fn and t["weight"].shape == (32, 48)
    assert t["weight_scale_inv"].dtype == np.float32 and t["weight_scale_inv"].shape == (2, 3)
    w = np.asarray(qm.params["model"]["layers"][0]["mlp"]["down_proj"]["weight"], np.float32)  # HF [out, in]
    tile = np.abs(w[16:32, 32:48]).max()
    assert t["weight_scale_inv"][1, 2] == pytest.approx(tile / 448, rel=1e-6)  # the dequantization multiplier
    assert np.abs(ck.dequantize("model.layers.0.mlp.down_proj") - w).max() <= 0.0625 * np.abs(w).max()
    _, forward, params = ck.to_jq()
    got = np.asarray(jax.jit(forward)(params, TOKENS))
    np.testing.assert_array_equal(got, np.asarray(jax.jit(qm.apply)(qm.params, TOKENS)))
    assert not np.array_equal(got, np.asarray(jax.jit(jm.make_forward(config))(qm.params, TOKENS)))


def test_block_fp8_widths_the_serving_kernels_cannot_tile_are_refused(tmp_path):
    hf, _, qm = _block_fp8_model(32)  # k_proj has 16 output channels, down_proj reads 48: neither holds 32s
    with pytest.raises(ValueError, match="k_proj'.*not a multiple of the e4m3 b32x32 block size 32"):
        to_serving_checkpoint(qm, tmp_path / "ckpt", hf_config=hf)
    # a checkpoint from elsewhere: the reader applies vLLM's rules (input groups; a fused sibling's whole tiles)
    qc = block_fp8_config([32, 32], [])
    fp8 = lambda o, i: np.zeros((o, i), ml_dtypes.float8_e4m3fn)  # noqa: E731
    for module, (o, i), match in (("mlp.down_proj", (32, 48), "48 input channels are not a multiple of the block's 32"),
                                  ("self_attn.k_proj", (16, 32), "16 output channels of a fused sibling")):
        tensors = {f"model.layers.0.{module}.weight": fp8(o, i),
                   f"model.layers.0.{module}.weight_scale_inv": np.ones((-(-o // 32), -(-i // 32)), np.float32)}
        ck = ServingCheckpoint({**hf, "quantization_config": qc}, _block_fp8_quant(qc), tensors, {})
        with pytest.raises(ValueError, match=match):
            ck.check()


@pytest.mark.parametrize("edit, match", [
    ({"activation_scheme": "static"}, "activation_scheme 'dynamic'"),
    ({"weight_block_size": [16]}, "two positive ints"),
    ({"weight_block_size": [32, 16]}, "not square"),
], ids=["static-inputs", "one-entry", "not-square"])
def test_block_fp8_config_rules(tmp_path, edit, match):
    hf, _, qm = _block_fp8_model(16)
    out = to_serving_checkpoint(qm, tmp_path / "ckpt", hf_config=hf)
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"].update(edit)
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):
        read_serving_checkpoint(out)


def test_block_fp8_with_a_kv_cache_or_mixed_formats_is_refused(tmp_path):
    hf, config, params = tiny_model(num_hidden_layers=1)
    qm = QuantizedModel.create(params, jm.make_forward(config), jq.merge_presets(_block_fp8(16), jq.FP8_KV_CFG))
    qm = jq.calibrate(qm, [(TOKENS,)], progress=False)
    with pytest.raises(ValueError, match="no KV-cache scales"):
        to_serving_checkpoint(qm, tmp_path / "kv", hf_config=hf)
    mixed = _block_fp8(16)
    mixed["quant_cfg"]["*mlp*weight_quantizer"] = {"num_bits": (4, 3), "axis": 0}
    mixed["quant_cfg"]["*mlp*input_quantizer"] = {"num_bits": (4, 3), "type": "dynamic", "block_sizes": {-1: None}}
    qm = jq.calibrate(QuantizedModel.create(params, jm.make_forward(config), mixed), [(TOKENS,)], progress=False)
    with pytest.raises(ValueError, match="one weight_block_size for every quantized layer"):
        to_serving_checkpoint(qm, tmp_path / "mixed", hf_config=hf)


def test_block_fp8_tiles_must_be_square(tmp_path):
    hf, config, params = tiny_model(num_hidden_layers=1)
    cfg = _block_fp8(16)
    cfg["quant_cfg"]["*weight_quantizer"]["block_sizes"][-2] = 8  # [8, 16] tiles
    qm = jq.calibrate(QuantizedModel.create(params, jm.make_forward(config), cfg), [(TOKENS,)], progress=False)
    with pytest.raises(ValueError, match=r"e4m3 b8x16.*no ModelOpt checkpoint format.*FP8 square \[b, b\] weight tiles"):
        to_serving_checkpoint(qm, tmp_path / "ckpt", hf_config=hf)
