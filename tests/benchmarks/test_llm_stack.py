"""benchmarks/llm_stack.py: the layer-scanned decoder computes what the unrolled jq.models decoder computes.

Reference values: the unrolled model on the same weights (``jq.models.extend`` for bf16/f32, ``jq.models.serve``'s
real-quantized model for INT4 W4A16, whose stored weights do not depend on calibration data; its layer-scanned
model for FP8 + FP8 KV cache, given the stacked model's per-layer state): the same ops in the same order, only the
layer loop differs, so they agree to f32 rounding (XLA fuses a scan body and an unrolled program differently; the
served INT4 and FP8 + KV8 comparisons, both jitted, are bit-exact on CPU).
"""

import jax
import pytest
import jax.numpy as jnp
import numpy as np

import jq
import jq.models as jm
from benchmarks import llm_stack as S
from benchmarks.kernel_bench import quant_kernels as Q
from benchmarks.llm_shapes import config_of
from jq import deploy
from jq.models import serve


def _models(n_layers=2):
    c1, cn = config_of("tiny", 1), config_of("tiny", n_layers)
    top, layers = S.init_stacked(c1, n_layers, jax.random.key(0), dtype=jnp.float32)
    full = dict(top, model=dict(top["model"], layers=[jax.tree_util.tree_map(lambda a, i=i: a[i], layers)
                                                      for i in range(n_layers)]))
    prompt = jnp.asarray(np.random.default_rng(0).integers(0, c1.vocab_size, (2, 5)), jnp.int32)
    return c1, cn, top, layers, full, prompt


def test_init_stacked_draws_distinct_layers_on_a_leading_axis():
    c1, _, top, layers, _, _ = _models(3)
    q = layers["self_attn"]["q_proj"]["weight"]
    assert q.shape == (3,) + top["model"]["layers"][0]["self_attn"]["q_proj"]["weight"].shape
    assert not np.array_equal(np.asarray(q[0]), np.asarray(q[1]))


def test_plain_stacked_equals_unrolled_extend_and_advances_the_cache():
    c1, cn, top, layers, full, prompt = _models()
    lm = S.plain(c1, top, layers)
    logits, cache = jax.jit(lm.extend)(lm.weights, lm.params, prompt, lm.init_cache(2, 8))
    ref, rc = jax.jit(jm.extend)(full, prompt, jm.init_cache(cn, 2, 8))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref), rtol=1e-5, atol=1e-6)
    assert int(cache[2]) == 5
    np.testing.assert_allclose(np.asarray(cache[0][1]), np.asarray(rc.keys[1]), rtol=1e-5, atol=1e-6)  # layer 1
    # one decode step on the filled cache
    tok = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)[:, None]
    l2, _ = jax.jit(lm.extend)(lm.weights, lm.params, tok, cache)
    r2, _ = jax.jit(jm.extend)(full, tok, rc)
    np.testing.assert_allclose(np.asarray(l2), np.asarray(r2), rtol=1e-5, atol=1e-6)


def test_int4_real_quant_stacked_with_a_quantized_head_equals_unrolled_served_model():
    """INT4 W4A16 with the lm_head quantized too (``llm_decode.head_like_layers``: the head takes the layers' weight
    spec): every layer's stored weights per layer, the head's realized once and run by a head model; equal to f32
    rounding to the unrolled served model of the full model (a plain, unquantized head differs by far more)."""
    from benchmarks.llm_decode import head_like_layers

    c1, cn, top, layers, full, prompt = _models()
    calib = [(jnp.asarray(np.random.default_rng(1).integers(0, c1.vocab_size, (2, 8)), jnp.int32),)]
    cfg = head_like_layers(jq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG)
    qm1 = jq.quantize(top, jm.make_forward(c1), cfg, calib_data=calib, progress=False)
    qmn = jq.quantize(full, jm.make_forward(cn), cfg, calib_data=calib, progress=False)
    slm = S.real_quant_stacked(qm1, c1, top, layers, kv_cache=False)
    ulm = serve.real_quant_lm(deploy.realize(qmn), cn, kv_cache=False)
    a, _ = jax.jit(slm.extend)(slm.weights, slm.params, prompt, slm.init_cache(2, 8))
    b, _ = jax.jit(ulm.extend)(ulm.weights, ulm.params, prompt, ulm.init_cache(2, 8))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    proj = {f"model.layers.0.{m}" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                             "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert set(slm.weights) == {"layers", "top"} and set(slm.weights["layers"]) == proj
    assert set(slm.weights["top"]) == {"lm_head"} and slm.head_model is not None
    # the one scanned layer carries the 1-layer model's names, those of qm1's config and state
    assert {s.name for s in slm.layer_model.traced.sites} == proj | {"model.layers.0.self_attn"}
    assert isinstance(slm, serve.ScannedLM)


def test_stack_realized_realizes_the_head_in_the_first_layers_program_only(monkeypatch):
    from benchmarks.llm_decode import head_like_layers

    c1, _, top, layers, _, _ = _models(3)
    calib = [(jnp.asarray(np.random.default_rng(1).integers(0, c1.vocab_size, (2, 8)), jnp.int32),)]
    qm1 = jq.quantize(top, jm.make_forward(c1), head_like_layers(jq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG),
                      calib_data=calib, progress=False)
    traced = []  # the top-level sites each realize call stores (jitted: once per traced program)
    real = deploy.realize

    def spy(qm, **kw):
        out = real(qm, **kw)
        traced.append(sorted(k for k in out.weights if S.layer_of(k) is None))
        return out

    monkeypatch.setattr(S.deploy, "realize", spy)
    weights, *_ = S.stack_realized(qm1, top, layers)
    assert traced == [["lm_head"], []]  # layer 0's program, then one program for layers 1 and 2
    assert set(weights["top"]) == {"lm_head"}
    leaves = jax.tree_util.tree_leaves(weights["layers"])
    assert leaves and all(a.shape[0] == 3 for a in leaves)


def test_quant_sweep_spec_parses_and_rejects_unknown_kernels():
    assert Q.parse_quant_sweep("mxfp8:512,8,3;nvfp4@markstein:256,4,2") == [
        ("mxfp8", None, 512, 8, 3), ("nvfp4", "markstein", 256, 4, 2)]
    with pytest.raises(ValueError, match="unknown kernel 'fp8'"):
        Q.parse_quant_sweep("fp8:256,4,2")


def test_fp8_kv8_real_quant_stacked_equals_scanned_served_model():
    """FP8 weights/activations + FP8 KV cache: the stacked model (qm1's activation and k/v amax for every layer,
    weight amax per layer) generates what ``serve.real_quant_lm(scan_layers=True)`` of the full model does when
    that model's layers carry the same state."""
    c1, cn, top, layers, full, prompt = _models()
    calib = [(jnp.asarray(np.random.default_rng(1).integers(0, c1.vocab_size, (2, 8)), jnp.int32),)]
    cfg = jq.merge_presets(jq.FP8_DEFAULT_CFG, jq.FP8_KV_CFG)
    qm1 = jq.quantize(top, jm.make_forward(c1), cfg, calib_data=calib, progress=False)
    qmn = jq.quantize(full, jm.make_forward(cn), cfg, calib_data=calib, progress=False)
    # every layer's activation / k/v state is qm1's layer 0's (the stacked model's); weight amax stays per layer
    qstate = {name: (entry if name.endswith("weight_quantizer") or not name.startswith("model.layers.")
                     else qm1.qstate["model.layers.0." + name.split(".", 3)[3]])
              for name, entry in qmn.qstate.items()}
    ulm = serve.real_quant_lm(deploy.realize(qmn.replace(qstate=qstate)), cn, kv_cache=True, scan_layers=True)
    slm = S.real_quant_stacked(qm1, c1, top, layers, kv_cache=True)
    assert slm.kv_spec == ulm.kv_spec and slm.kv_spec.num_bits == (4, 3)
    assert set(slm.weights) == {"layers"} and slm.head_model is None  # the preset keeps lm_head in bf16: plain head
    np.testing.assert_array_equal(np.asarray(slm.k_amax), np.asarray(ulm.k_amax))
    tokens, logits = slm.generate(prompt, 4)
    ref_tokens, ref_logits = ulm.generate(prompt, 4)
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(ref_tokens))
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(ref_logits))  # bit-exact on CPU (7 % off with
    # the full model's own per-layer activation amax)
    assert np.abs(np.asarray(logits) - np.asarray(S.plain(c1, top, layers).generate(prompt, 4)[1])).max() > 0



def test_fp8_wgmma_variant_lowers_for_cuda_with_one_mosaic_kernel_per_projection():
    """The decode program of the stacked FP8 model, every projection forced onto the Mosaic wgmma GEMM and served
    as on a GPU, lowered for CUDA from this CPU: 7 projections x 2 layers, each one Mosaic call, no Triton GEMM."""
    import dataclasses

    from benchmarks import llm_decode
    from jq.formats.fp8_gemm import FP8GemmPolicy
    from jq.models.stacking import unstack_trees

    c1, _, top, layers, _, _ = _models()
    listed = unstack_trees(layers)
    calib = [(jnp.asarray(np.random.default_rng(1).integers(0, c1.vocab_size, (2, 8)), jnp.int32),)]
    qm1 = jq.quantize(top, jm.make_forward(c1), jq.FP8_DEFAULT_CFG, calib_data=calib, progress=False)
    weights, kernels, plan, _ = S.stack_realized(qm1, top, listed)
    kernels = {k: dataclasses.replace(v, policy=FP8GemmPolicy(mode="wgmma_kernel")) for k, v in kernels.items()}
    lm = S.real_quant_stacked(qm1, c1, top, listed, kv_cache=False, realized=(weights, kernels, plan, "gpu"))
    keys, values, _ = lm.init_cache(1, 16)
    cache = serve.StackedCache(keys, values, jnp.int32(4))
    txt = llm_decode._decode_program(lm, 2).trace(lm.weights, lm.params, jnp.zeros((1,), jnp.int32), cache).lower(
        lowering_platforms=("cuda",)).as_text()
    assert txt.count("stablehlo.custom_call @mosaic_gpu") == 14 and "jq_fp8_decode" not in txt
