"""KV-cache generation: float cache vs the cache-free forward, and quantized storage vs jq's fake quant."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq
import jq.models as jm
from jq.config import QuantizerSpec
from tests.models.conftest import tiny_model

PROMPT = jnp.asarray([[3, 17, 5, 40, 22], [9, 31, 0, 47, 12]], jnp.int32)
K_AMAX, V_AMAX = jnp.asarray([6.0, 7.5]), jnp.asarray([2.5, 3.0])  # per layer, below the data's max: clipping too


def _decode_all(params, config, tokens, prompt_len, **cache_kw):
    """Prefill ``prompt_len`` tokens, then feed the rest one by one: logits of every position."""
    cache = jm.init_cache(config, tokens.shape[0], tokens.shape[1], **cache_kw)
    logits, cache = jax.jit(jm.prefill)(params, tokens[:, :prompt_len], cache)
    out = [logits]
    step_fn = jax.jit(jm.decode_step)
    for j in range(prompt_len, tokens.shape[1]):
        step, cache = step_fn(params, tokens[:, j], cache)
        out.append(step[:, None])
    return jnp.concatenate(out, axis=1), cache


def test_float_cache_decoding_matches_forward():
    _, config, params = tiny_model()
    tokens = jnp.concatenate([PROMPT, PROMPT[:, ::-1]], axis=1)
    got, cache = _decode_all(params, config, tokens, 4)
    np.testing.assert_allclose(got, jax.jit(jm.make_forward(config))(params, tokens), atol=1e-4)
    assert int(cache.length) == 10


def test_sliding_window_with_cache_matches_forward():
    _, config, params = tiny_model(architectures=["MistralForCausalLM"], sliding_window=3, num_hidden_layers=1)
    tokens = jnp.concatenate([PROMPT, PROMPT[:, ::-1]], axis=1)
    got, _ = _decode_all(params, config, tokens, 2)
    np.testing.assert_allclose(got, jax.jit(jm.make_forward(config))(params, tokens), atol=1e-4)


def test_generate_is_greedy_argmax_of_forward():
    """Each new token is the argmax of the cache-free forward on the sequence so far (one causal forward on
    the final sequence gives every step's logits)."""
    _, config, params = tiny_model(num_hidden_layers=1)
    new = jm.generate(params, PROMPT, 6, config=config)
    seq = jnp.concatenate([PROMPT, new], axis=1)
    logits = jax.jit(jm.make_forward(config))(params, seq)
    t0 = PROMPT.shape[1]
    np.testing.assert_array_equal(new, jnp.argmax(logits[:, t0 - 1:-1], axis=-1))


@pytest.mark.parametrize("kv_format, spec", [
    ("fp8", QuantizerSpec(num_bits=(4, 3))),
    ("nvfp4", QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, "type": "dynamic", "scale_bits": (4, 3)})),
])
def test_quantized_cache_equals_float_cache_of_fake_quantized_kv_exactly(kv_format, spec):
    """Stored packed values + scales, dequantized on read == a float cache holding
    ``jq.fake_quant(k, amax, spec)``, bit for bit, at every decode step."""
    _, config, params = tiny_model(head_dim=16, num_attention_heads=2, num_key_value_heads=1)
    tokens = jnp.concatenate([PROMPT, PROMPT[:, ::-1]], axis=1)
    stored, cache = _decode_all(params, config, tokens, 3, kv_format=kv_format, k_amax=K_AMAX, v_amax=V_AMAX)
    fake, fcache = _decode_all(params, config, tokens, 3, kv_format=spec, k_amax=K_AMAX, v_amax=V_AMAX,
                               storage="fake_quant")
    np.testing.assert_array_equal(np.asarray(stored), np.asarray(fake))
    for i in range(config.num_hidden_layers):  # the caches themselves hold the same numbers
        for got, want in zip(jm.kv_cache.read_layer(cache, i), jm.kv_cache.read_layer(fcache, i)):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # and the quantization is real: the fake-quant cache differs from the float cache
    assert float(jnp.max(jnp.abs(jax.jit(jm.make_forward(config))(params, tokens) - fake))) > 1e-3


def test_generate_with_fp8_cache_equals_fake_quant_cache():
    """The same through ``generate``'s jitted scan (one format suffices: the storage code is shared)."""
    _, config, params = tiny_model()
    spec = QuantizerSpec(num_bits=(4, 3))
    g_stored = jm.generate(params, PROMPT, 5, config=config, kv_format="fp8", k_amax=K_AMAX, v_amax=V_AMAX)
    g_fake = jm.generate(params, PROMPT, 5, config=config, kv_format=spec, k_amax=K_AMAX, v_amax=V_AMAX,
                         storage="fake_quant")
    assert g_stored.shape == (2, 5)
    np.testing.assert_array_equal(g_stored, g_fake)


def test_fake_quant_storage_is_jq_fake_quant_of_roped_keys():
    """The float cache's entries are exactly ``jq.fake_quant`` of k after RoPE (computed here by hand)."""
    _, config, params = tiny_model(num_hidden_layers=1)
    spec = QuantizerSpec(num_bits=(4, 3))
    cache = jm.init_cache(config, 2, 5, kv_format=spec, k_amax=K_AMAX[:1], v_amax=V_AMAX[:1], storage="fake_quant")
    _, cache = jax.jit(jm.prefill)(params, PROMPT, cache)

    @jax.jit
    def layer0_kv(params):
        layer = params["model"]["layers"][0]
        x = jm.llama.rms_norm(params["model"]["embed_tokens"]["weight"][PROMPT], layer["input_layernorm"],
                              config.rms_norm_eps)
        cos, sin = jm.rope.rope_tables(config, jnp.broadcast_to(jnp.arange(5), (2, 5)))
        _, k, v = jm.llama.project_qkv(layer["self_attn"], x, cos, sin, config)
        return jq.fake_quant(k, K_AMAX[0], spec=spec), jq.fake_quant(v, V_AMAX[0], spec=spec)

    k, v = layer0_kv(params)
    np.testing.assert_array_equal(cache.keys[0], k)
    np.testing.assert_array_equal(cache.values[0], v)


def test_storage_layout_and_bytes():
    _, config, params = tiny_model(head_dim=16, num_attention_heads=2, num_key_value_heads=1)
    caches = {f: jm.init_cache(config, 2, 32, kv_format=f, k_amax=K_AMAX, v_amax=V_AMAX) for f in ("fp8", "nvfp4")}
    caches[None] = jm.init_cache(config, 2, 32)
    fp8, nv = caches["fp8"].keys[0], caches["nvfp4"].keys[0]
    assert fp8.data.dtype == jnp.float8_e4m3fn and fp8.data.shape == (2, 32, 1, 16) and fp8.scale.shape == ()
    assert nv.data.dtype == jnp.uint8 and nv.data.shape == (2, 32, 1, 8)  # two E2M1 codes per byte
    assert nv.scale.dtype == jnp.float8_e4m3fn and nv.scale.shape == (2, 32, 1, 1)  # one per 16 along head_dim
    assert float(nv.global_scale) == pytest.approx(float(K_AMAX[0]) / 2688)
    floats = 2 * 2 * 2 * 32 * 16 * 4  # layers x (k, v) x batch x len x head_dim x 4 bytes
    assert caches[None].nbytes == floats
    assert caches["fp8"].nbytes == floats // 4 + 4 * 4  # + a float32 scale per layer per k/v
    assert caches["nvfp4"].nbytes == floats // 8 + floats // 64 + 4 * 4


def test_kv_amax_from_calibrated_model_drives_generation():
    """jq's calibrated k/v bmm amax feed the cache; with ``max_len`` = prompt length the prefill logits of an
    FP8 cache equal ``qm.apply`` of the cache-free forward with FP8_KV_CFG (same fake-quantized k/v)."""
    _, config, params = tiny_model()
    qm = jq.quantize(params, jm.make_forward(config), jq.FP8_KV_CFG, calib_data=[(PROMPT,)], progress=False)
    k_amax, v_amax = jm.kv_amax_from(qm, config)
    assert k_amax.shape == (2,) and bool(jnp.all(k_amax > 0))
    np.testing.assert_allclose(k_amax[1], qm.qstate["model.layers.1.self_attn.k_bmm_quantizer"]["amax"])
    cache = jm.init_cache(config, 2, PROMPT.shape[1], kv_format="fp8", k_amax=k_amax, v_amax=v_amax)
    logits, _ = jax.jit(jm.prefill)(params, PROMPT, cache)
    np.testing.assert_allclose(logits, jax.jit(qm.apply)(params, PROMPT), atol=1e-5)
    assert float(jnp.max(jnp.abs(logits - jax.jit(jm.make_forward(config))(params, PROMPT)))) > 1e-4


def test_errors():
    _, config, _ = tiny_model()
    with pytest.raises(ValueError, match="needs k_amax"):
        jm.init_cache(config, 1, 8, kv_format="fp8", v_amax=1.0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        jm.init_cache(config, 1, 8, kv_format="fp8", k_amax=jnp.ones(3), v_amax=1.0)
    with pytest.raises(ValueError, match="unknown kv_format 'int3'"):
        jm.init_cache(config, 1, 8, kv_format="int3")
    with pytest.raises(ValueError, match="storage must be one of"):
        jm.init_cache(config, 1, 8, storage="packed")
    with pytest.raises(ValueError, match="max_len=6 is shorter"):
        jm.generate({"model": {"embed_tokens": {"weight": jnp.zeros((48, 32))}}}, PROMPT, 3, config=config,
                    max_len=6)
    with pytest.raises(ValueError, match="no calibrated amax"):
        jm.kv_amax_from(type("QM", (), {"qstate": {}})(), config)


def test_init_stacked_cache_stacks_each_layers_storage():
    # the scanned serving models read layer i of the stacked cache where the unrolled model reads cache.keys[i]
    from jq.models.kv_cache import init_stacked_cache

    _, config, _ = tiny_model(head_dim=16, num_attention_heads=2, num_key_value_heads=1)
    assert config.num_hidden_layers == 2
    ka, va = jnp.array([1.0, 2.0]), jnp.array([3.0, 4.0])
    ref = jm.init_cache(config, 2, 8, kv_format="fp8", k_amax=ka, v_amax=va, dtype=jnp.bfloat16)
    keys, values = init_stacked_cache(config, 2, 8, kv_format="fp8", k_amax=ka, v_amax=va, dtype=jnp.bfloat16)
    for stacked, per_layer in ((keys, ref.keys), (values, ref.values)):
        for i, layer in enumerate(per_layer):
            got = jax.tree_util.tree_map(lambda a: a[i], stacked)
            assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(layer)
            for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(layer)):
                np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    fk, fv = init_stacked_cache(config, 2, 8, dtype=jnp.float32)  # float cache: zeros [layers, b, t, heads, dim]
    assert fk.shape == (2, 2, 8, config.num_key_value_heads, config.head_dim) and not np.any(np.asarray(fv))
