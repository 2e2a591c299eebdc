"""Fused q/k/v and gate/up projections (:func:`jq.models.llama.fuse_projections`): the serving-stack layout.

A fused GEMM computes the same dot products as its parts, so the float model is unchanged; under jq the fused
site has one weight quantizer (per-tensor amax = max of the parts'; per-row scales = the parts' rows) and one
input quantizer that reads the same input as each part did (same calibrated amax).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq
import jq.models as jm
from jq import deploy
from jq.models import llama
from tests.models.conftest import tiny_model

TOKENS = jnp.asarray([[3, 17, 5, 40, 22, 9, 31, 0], [1, 2, 3, 4, 5, 6, 7, 8]], jnp.int32)
PARTS = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}


def _assert_same_sums(got, want):
    """Equal up to the summation order of the GEMMs (float32 ulps of logits of magnitude ~7); a wrong weight row,
    scale or FP8 rounding differs by orders of magnitude more."""
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=2e-5)


def _quantize(params, config, cfg):
    return jq.quantize(params, jm.make_forward(config), cfg, calib_data=[(TOKENS,)], progress=False)


@pytest.mark.parametrize("overrides", [{}, {"architectures": ["Qwen2ForCausalLM"]},
                                       {"attention_bias": True, "mlp_bias": True}],
                         ids=["llama", "qwen2_qkv_bias", "attention_and_mlp_bias"])
def test_fused_float_logits_equal_unfused_and_unfuse_inverts(overrides):
    _, config, params = tiny_model(**overrides)
    fused = llama.fuse_projections(params)
    layer = fused["model"]["layers"][0]
    assert set(layer["self_attn"]) == {"qkv_proj", "o_proj"} and set(layer["mlp"]) == {"gate_up_proj", "down_proj"}
    nq, nkv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    assert layer["self_attn"]["qkv_proj"]["weight"].shape == (nq + 2 * nkv, config.hidden_size)
    assert ("bias" in layer["self_attn"]["qkv_proj"]) == config.qkv_bias
    assert ("bias" in layer["mlp"]["gate_up_proj"]) == config.mlp_bias
    fwd = jax.jit(jm.make_forward(config))
    # each output element is the same K-long dot product in either layout, summed in an order XLA's CPU GEMM may pick
    # by the output width: bit-identical on some CPUs, within 6e-6 of logits ~7 on AMD EPYC
    _assert_same_sums(fwd(fused, TOKENS), fwd(params, TOKENS))
    back = llama.unfuse_projections(fused, config)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)


def test_fuse_works_on_stacked_layers_and_rejects_bad_input():
    _, config, params = tiny_model()
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *params["model"]["layers"])  # [n_layers, out, in]
    fused = llama.fuse_projections(stacked)
    for i in range(config.num_hidden_layers):
        want = llama.fuse_projections(params["model"]["layers"][i])
        jax.tree_util.tree_map(lambda s, w: np.testing.assert_array_equal(s[i], w), fused, want)
    with pytest.raises(ValueError, match="already fused"):
        llama.fuse_projections(fused)
    bad = dict(params["model"]["layers"][0], mlp={"gate_proj": params["model"]["layers"][0]["mlp"]["gate_proj"]})
    with pytest.raises(ValueError, match="up_proj"):
        llama.fuse_projections(bad)
    with pytest.raises(ValueError, match="rows"):  # a config whose sizes do not add up to the fused rows
        llama.unfuse_projections(fused, jm.LlamaConfig.from_hf(
            dict(config.to_hf(), num_key_value_heads=4)))


def test_fp8_per_channel_per_token_fused_equals_unfused():
    """Per-row weight scales and per-token input scales do not depend on the sibling rows: the fused quantized
    model is the unfused one up to the order the backend accumulates each GEMM's K-long dots in (bit-identical on
    some CPUs, float32 ulps on others; a GPU GEMM tiled by N may differ in the last bits too)."""
    _, config, params = tiny_model()
    cfg = jq.FP8_PER_CHANNEL_PER_TOKEN_CFG
    qu, qf = _quantize(params, config, cfg), _quantize(llama.fuse_projections(params), config, cfg)
    fused_sites = {s.name for s in qf.traced.sites if s.kind == "linear"}
    assert "model.layers.0.self_attn.qkv_proj" in fused_sites and "model.layers.0.mlp.gate_up_proj" in fused_sites
    assert not any(n.endswith(("q_proj", "gate_proj")) for n in fused_sites)
    for i in range(config.num_hidden_layers):
        for fused, parts in PARTS.items():
            wf = qf.qstate[f"model.layers.{i}.{fused}.weight_quantizer"]["amax"]
            wu = jnp.concatenate([qu.qstate[f"model.layers.{i}.{p}.weight_quantizer"]["amax"].reshape(-1)
                                  for p in parts])
            np.testing.assert_array_equal(np.asarray(wf).reshape(-1), np.asarray(wu))
    yu, yf = jax.jit(qu.apply)(qu.params, TOKENS), jax.jit(qf.apply)(qf.params, TOKENS)
    _assert_same_sums(yf, yu)


def test_fp8_per_tensor_fused_amax_is_max_of_siblings():
    _, config, params = tiny_model()
    cfg = jq.FP8_DEFAULT_CFG
    qu, qf = _quantize(params, config, cfg), _quantize(llama.fuse_projections(params), config, cfg)
    differs = False
    for i in range(config.num_hidden_layers):
        for fused, parts in PARTS.items():
            pre = f"model.layers.{i}."
            sib = [float(qu.qstate[f"{pre}{p}.weight_quantizer"]["amax"]) for p in parts]
            assert float(qf.qstate[f"{pre}{fused}.weight_quantizer"]["amax"]) == max(sib)
            differs |= len(set(sib)) > 1
            # the siblings read one input: one calibrated input amax, the fused site's (exactly at the first site;
            # later inputs went through GEMMs whose summation order may differ by the layout: float32 ulps)
            iu = {float(qu.qstate[f"{pre}{p}.input_quantizer"]["amax"]) for p in parts}
            assert len(iu) == 1
            first = i == 0 and fused == "self_attn.qkv_proj"
            assert iu.pop() == pytest.approx(float(qf.qstate[f"{pre}{fused}.input_quantizer"]["amax"]),
                                             rel=0 if first else 1e-6, abs=0)
    assert differs  # the sibling amaxes differ on this model: the shared amax is a real change
    # with the siblings' weight amax shared (jq's share_sibling_weight_amax) the models are the same (up to the
    # GEMMs' summation order, as the per-channel case): the shared amax is the only difference
    qs = jq.calibrate(qu, [(TOKENS,)], share_sibling_weight_amax=True)
    yf, ys = jax.jit(qf.apply)(qf.params, TOKENS), jax.jit(qs.apply)(qs.params, TOKENS)
    _assert_same_sums(yf, ys)
    yu = jax.jit(qu.apply)(qu.params, TOKENS)  # the unshared amax is a visible change, far above the tolerance
    assert float(jnp.max(jnp.abs(yu - yf))) > 1e-3


@pytest.mark.parametrize("cfg,kind", [("FP8_DEFAULT_CFG", "fp8"), ("W4A16_NVFP4_CFG", "nvfp4_w4a16"),
                                      ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "int4_w4a16")])
def test_realize_serves_fused_sites(cfg, kind):
    # INT4 groups of 128; one layer (the realize plan is per site, a second layer repeats the same sites)
    hf, config, params = tiny_model(hidden_size=128, intermediate_size=128, head_dim=32, num_hidden_layers=1)
    qm = _quantize(llama.fuse_projections(params), config, getattr(jq, cfg))
    rm = deploy.realize(qm)
    for i in range(config.num_hidden_layers):
        for fused in PARTS:
            assert rm.plan[f"model.layers.{i}.{fused}"] == kind
    y_fake = jax.jit(qm.apply)(qm.params, TOKENS)  # op by op the fake quant costs seconds of eager compiles
    y_real = jax.jit(rm.apply)(rm.weights, rm.params, TOKENS)
    assert float(jnp.linalg.norm(y_fake - y_real) / jnp.linalg.norm(y_fake)) < 1e-5  # tests/test_deploy.py's


def test_fused_model_has_no_hf_names(tmp_path):
    """HF checkpoints name q/k/v and gate/up apart: a fused model refuses to export under HF names."""
    hf, config, params = tiny_model()
    fused = llama.fuse_projections(params)
    with pytest.raises(ValueError, match="unfuse_projections"):
        jm.save_hf(tmp_path / "float", hf, fused)
    with pytest.raises(ValueError, match="unfuse_projections"):
        jm.site_to_hf_module("model.layers.0.mlp.gate_up_proj.weight_quantizer")
    from jq.export.serving import to_serving_checkpoint
    qm = _quantize(fused, config, jq.FP8_DEFAULT_CFG)
    with pytest.raises(ValueError, match="to_serving_checkpoint: .*fused projections"):
        to_serving_checkpoint(qm, tmp_path / "fp8", hf_config=hf)
    assert list(tmp_path.iterdir()) == []  # raised before writing anything
    jm.save_hf(tmp_path / "unfused", hf, llama.unfuse_projections(fused, config))  # the supported way out
    assert jm.load_hf(tmp_path / "unfused")[1]["model"]["layers"][1]["mlp"]["up_proj"]["weight"].shape == (48, 32)


def test_generate_runs_fused_params_unchanged():
    """The cached generation path (jq.models.generate, which calls project_qkv / mlp) takes fused params as is."""
    _, config, params = tiny_model(architectures=["Qwen2ForCausalLM"])
    prompt = TOKENS[:, :5]
    want = jm.generate(params, prompt, 6, config=config)
    np.testing.assert_array_equal(np.asarray(jm.generate(llama.fuse_projections(params), prompt, 6, config=config)),
                                  np.asarray(want))
