"""jq.models.serve: generation on real-quantized weights with a KV cache equals the fake-quant model's.

The reference is the fake-quant model as users run it: ``qm.apply`` (``jq.models.forward``, no cache) on the
growing sequence, greedy. On CPU the realized sites run the reference kernels (FP8: an fp8 ``dot_general``;
W4A16: ``x @ dequantize(W).T``), so realized and fake-quant logits differ only by f32 accumulation order
(~1e-7 relative per GEMM). The tolerance, 1e-4 of the largest logit, is far below what one flipped E4M3 rounding
of an activation would cause (~1e-2 on this model), so it also states that no quantization decision changed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq
import jq.models as jm
from jq import deploy
from jq.models import serve
from tests.models.conftest import tiny_model

CALIB = jnp.asarray([[3, 17, 5, 40, 22, 9, 31, 0], [1, 2, 3, 4, 5, 6, 7, 8]], jnp.int32)
PROMPT = CALIB[:, :5]
N_NEW = 5
TOL = 1e-4


def greedy_forward(qm, prompt, n_new):
    """Greedy tokens and logits of ``qm.apply`` on a fixed-length buffer (causal: later slots do not matter)."""
    b, t = prompt.shape
    buf = jnp.zeros((b, t + n_new), jnp.int32).at[:, :t].set(prompt)
    apply = jax.jit(qm.apply)
    logits = []
    for i in range(n_new):
        step = apply(qm.params, buf)[:, t - 1 + i]
        logits.append(step)
        buf = buf.at[:, t + i].set(jnp.argmax(step, axis=-1).astype(jnp.int32))
    return buf[:, t:], jnp.stack(logits, axis=1)


def _quantize(cfg, **overrides):
    _, config, params = tiny_model(**overrides)
    qm = jq.quantize(params, jm.make_forward(config), cfg, calib_data=[(CALIB,)], progress=False)
    return config, qm


@pytest.fixture(scope="module")
def fp8_kv():
    """``(config, qm)``: the two-layer model with FP8 W8A8 and the FP8 KV cache, calibrated once for the tests
    that read it (a QuantizedModel is immutable: ``replace`` returns a new one)."""
    return _quantize(jq.merge_presets(jq.FP8_DEFAULT_CFG, jq.FP8_KV_CFG))


@pytest.mark.parametrize("preset,kernel", [("FP8_DEFAULT_CFG", "fp8"), ("W4A16_NVFP4_CFG", "nvfp4_w4a16"),
                                           ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "int4_w4a16")])
def test_real_generation_with_fp8_kv_cache_matches_fake_quant_forward(preset, kernel):
    # one layer keeps the three compilations short; the two-layer cache is checked below
    config, qm = _quantize(jq.merge_presets(getattr(jq, preset), jq.FP8_KV_CFG), num_hidden_layers=1)
    rm = deploy.realize(qm)
    assert {v for k, v in rm.plan.items() if k != "lm_head"} == {kernel}  # every projection served
    lm = serve.real_quant_lm(rm, config)
    assert lm.kv_spec is not None and lm.kv_spec.num_bits == (4, 3)
    tokens, logits = lm.generate(PROMPT, N_NEW)
    ref_tokens, ref_logits = greedy_forward(qm, PROMPT, N_NEW)
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(ref_tokens))
    err = float(jnp.max(jnp.abs(logits - ref_logits)) / jnp.max(jnp.abs(ref_logits)))
    assert err < TOL, err


def test_real_cache_stores_fp8_and_fake_cache_stays_float():
    config, qm = _quantize(jq.merge_presets(jq.W4A16_NVFP4_CFG, jq.FP8_KV_CFG))
    real = serve.real_quant_lm(deploy.realize(qm), config).init_cache(2, 16)
    fake = serve.fake_quant_lm(qm, config).init_cache(2, 16)
    assert real.keys[0].data.dtype == jnp.float8_e4m3fn
    assert fake.keys[0].dtype == jnp.float32
    assert real.nbytes < fake.nbytes / 3  # 1 byte per value against 4 (plus one scale per layer)
    k_amax = serve.kv_amax(qm, config, "k_bmm_quantizer")
    np.testing.assert_array_equal(np.asarray(real.k_amax), np.asarray(k_amax))


def test_fake_quant_lm_prefill_is_qm_apply(fp8_kv):
    """The step model shares qm's sites and state: prefill through an empty float cache is ``qm.apply``."""
    config, qm = fp8_kv
    lm = serve.fake_quant_lm(qm, config)
    logits, cache = jax.jit(lm.prefill)(lm.weights, lm.params, CALIB, lm.init_cache(2, 8))
    want = jax.jit(qm.apply)(qm.params, CALIB)  # op by op: ~10 s of eager compiles of the fake quant
    np.testing.assert_allclose(np.asarray(logits), np.asarray(want), rtol=1e-6, atol=1e-6)
    assert int(cache.length) == 8


def test_kv_cache_needs_one_format_for_k_and_v(fp8_kv):
    config, qm = fp8_kv
    qm_k_only = qm.replace(config=qm.config.with_entries(("*.v_bmm_quantizer", False)))
    with pytest.raises(ValueError, match="one storage format"):
        serve.kv_cache_spec(qm_k_only, config)
    assert serve.kv_cache_spec(qm.replace(config=qm.config.with_entries(("*bmm_quantizer", False))), config) is None


# ---- scan_layers: the layers run by one lax.scan (one layer traced and compiled) ----------------------------

@pytest.mark.parametrize("presets", [("FP8_DEFAULT_CFG", "FP8_KV_CFG"), ("W4A16_NVFP4_CFG",), ("INT4_AWQ_CFG",)])
def test_scanned_real_and_fake_generation_match_fake_quant_forward(presets, request):
    # two layers: layer 1's params, quantizer state and stored weights come from the stacks' slice 1
    config, qm = (request.getfixturevalue("fp8_kv") if presets == ("FP8_DEFAULT_CFG", "FP8_KV_CFG")
                  else _quantize(jq.merge_presets(*(getattr(jq, p) for p in presets))))
    rm = deploy.realize(qm)
    ref_tokens, ref_logits = greedy_forward(qm, PROMPT, N_NEW)
    lms = [serve.real_quant_lm(rm, config, scan_layers=True)]
    if "FP8_KV_CFG" in presets:  # the fake-quant scan is one code path for every format: checked once
        lms.append(serve.fake_quant_lm(qm, config, scan_layers=True))
    for lm in lms:
        assert isinstance(lm, serve.ScannedLM)
        tokens, logits = lm.generate(PROMPT, N_NEW)
        np.testing.assert_array_equal(np.asarray(tokens), np.asarray(ref_tokens))
        err = float(jnp.max(jnp.abs(logits - ref_logits)) / jnp.max(jnp.abs(ref_logits)))
        assert err < TOL, (presets, err)


def test_scanned_real_cache_is_fp8_per_layer_amax(fp8_kv):
    config, qm = fp8_kv
    lm = serve.real_quant_lm(deploy.realize(qm), config, scan_layers=True)
    keys, _, length = lm.init_cache(2, 16)
    assert keys.data.dtype == jnp.float8_e4m3fn and keys.data.shape[0] == config.num_hidden_layers
    np.testing.assert_array_equal(np.asarray(lm.k_amax), np.asarray(serve.kv_amax(qm, config, "k_bmm_quantizer")))
    assert int(length) == 0


def test_unstacked_model_runs_per_layer_buffers_and_generates_what_the_scan_does(fp8_kv):
    # the fast GPU form: lists of per-layer params, stored weights, quantizer state and cache, layers unrolled
    config, qm = fp8_kv
    scanned = serve.real_quant_lm(deploy.realize(qm), config, scan_layers=True)
    lm = scanned.unstacked()
    n = config.num_hidden_layers
    assert lm.unrolled and lm.unstacked() is lm and not scanned.unrolled
    assert isinstance(lm.params["layers"], list) and len(lm.params["layers"]) == n
    assert len(lm.weights["layers"]) == len(lm.layer_qstate) == n
    site, stacked = next(iter(scanned.weights["layers"].items()))
    for i in range(n):  # layer i's buffer holds the stack's slice i
        np.testing.assert_array_equal(np.asarray(jax.tree_util.tree_leaves(lm.weights["layers"][i][site])[0]),
                                      np.asarray(jax.tree_util.tree_leaves(stacked)[0][i]))
    keys, values, _ = lm.init_cache(2, 16)
    assert len(keys) == len(values) == n and keys[1].data.dtype == jnp.float8_e4m3fn
    ref_tokens, ref_logits = scanned.generate(PROMPT, N_NEW)
    tokens, logits = lm.generate(PROMPT, N_NEW)
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(ref_tokens))
    assert float(jnp.max(jnp.abs(logits - ref_logits)) / jnp.max(jnp.abs(ref_logits))) < TOL
    float_lm = serve.float_lm(qm.params, config)
    np.testing.assert_array_equal(np.asarray(float_lm.unstacked().generate(PROMPT, N_NEW)[0]),
                                  np.asarray(float_lm.generate(PROMPT, N_NEW)[0]))


def test_float_lm_generates_what_jm_generate_does():
    _, config, params = tiny_model()
    tokens, _ = serve.float_lm(params, config).generate(PROMPT, N_NEW)
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(jm.generate(params, PROMPT, N_NEW, config=config)))


def test_scan_layers_refuses_layers_with_different_configs():
    config, qm = _quantize(jq.FP8_DEFAULT_CFG)
    mixed = qm.replace(config=qm.config.with_entries(("model.layers.1.mlp.up_proj.input_quantizer", False)))
    with pytest.raises(ValueError, match="model.layers.1.mlp.up_proj.input_quantizer"):
        serve.fake_quant_lm(mixed, config, scan_layers=True)
    with pytest.raises(ValueError, match="serve this model unrolled"):
        serve.real_quant_lm(deploy.realize(qm, sites={"model.layers.1.mlp.up_proj": "fake"}), config,
                            scan_layers=True)
