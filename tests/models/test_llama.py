"""The JAX Llama-family decoder against an independent numpy reference (tests/models/reference.py).

Each architecture variant on a tiny random config: GQA, a tied head, Qwen2's q/k/v bias, Llama's
attention/MLP bias, every RoPE scaling type and Mistral's sliding window. Tolerance: float32 JAX vs the
float64 loop reference, logits of magnitude ~5, so ``atol=2e-4``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq.models as jm
from tests.models.conftest import tiny_model
from tests.models.reference import llama_logits

TOKENS = np.array([[3, 17, 5, 40, 22, 9, 31, 0, 47]], np.int32)

VARIANTS = {
    "gqa": {},
    "multi_head": {"num_key_value_heads": 4},
    "tied_head": {"tie_word_embeddings": True},
    "qwen2_qkv_bias": {"architectures": ["Qwen2ForCausalLM"]},
    "llama_attention_and_mlp_bias": {"attention_bias": True, "mlp_bias": True},
    "rope_linear": {"rope_scaling": {"type": "linear", "factor": 4.0}},
    "rope_dynamic_beyond_context": {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0},
                                    "max_position_embeddings": 4},
    "rope_llama3": {"rope_scaling": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8},
                    "rope_theta": 500000.0},
    "rope_parameters_v5": {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0}},
    "mistral_sliding_window": {"architectures": ["MistralForCausalLM"], "sliding_window": 3},
    "explicit_head_dim": {"head_dim": 16},
}


def test_tiny_model_params_are_jm_init_params():
    """tests/models/conftest.py draws the tiny models' params leaf by leaf (one compile per shape, not per config):
    the same values as the library's jitted ``jm.init_params``, bit for bit (biases and both norms included)."""
    _, config, params = tiny_model(seed=3, attention_bias=True, mlp_bias=True)
    want = jm.init_params(config, jax.random.key(3), scale=0.3)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(want)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, want)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_logits_match_numpy_reference(name):
    hf, config, params = tiny_model(**VARIANTS[name])
    if "rope_parameters" in hf:  # the reference reads the 4.x spelling
        hf = dict(hf, rope_theta=hf["rope_parameters"]["rope_theta"], rope_scaling=hf["rope_parameters"])
    got = np.asarray(jax.jit(jm.make_forward(config))(params, jnp.asarray(TOKENS)))[0]
    want = llama_logits(hf, jm.flatten_params(params), TOKENS[0])
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)


def test_sliding_window_changes_logits():
    """Guard for the variant above: the window must actually hide keys at this length."""
    _, cfg_full, params = tiny_model(architectures=["MistralForCausalLM"], sliding_window=None)
    _, cfg_win, _ = tiny_model(architectures=["MistralForCausalLM"], sliding_window=3)
    a = jax.jit(jm.make_forward(cfg_full))(params, jnp.asarray(TOKENS))
    b = jax.jit(jm.make_forward(cfg_win))(params, jnp.asarray(TOKENS))
    np.testing.assert_allclose(a[:, :3], b[:, :3], atol=1e-5)  # positions 0..2 see all their keys either way
    assert float(jnp.max(jnp.abs(a[:, 3:] - b[:, 3:]))) > 1e-3


def test_batch_rows_are_independent():
    _, config, params = tiny_model()
    tokens = jnp.asarray(np.concatenate([TOKENS, TOKENS[:, ::-1]]))
    forward = jax.jit(jm.make_forward(config))
    both = forward(params, tokens)
    np.testing.assert_allclose(both[:1], forward(params, tokens[:1]), atol=1e-4)
    np.testing.assert_allclose(both[1:], forward(params, tokens[1:]), atol=1e-4)


def test_explicit_positions_shift_rope():
    _, config, params = tiny_model()
    tokens, forward = jnp.asarray(TOKENS), jax.jit(jm.make_forward(config))
    base = forward(params, tokens)
    same = forward(params, tokens, positions=jnp.arange(9)[None])
    shifted = forward(params, tokens, positions=5 + jnp.arange(9)[None])
    np.testing.assert_allclose(base, same, atol=1e-5)
    # relative positions are unchanged, so RoPE attention is (almost) shift-invariant; the logits move only by
    # float rounding of the larger angles
    np.testing.assert_allclose(base, shifted, atol=1e-4)


def test_bfloat16_params_compute_in_bfloat16_close_to_float32():
    """bf16 compute of the same (bf16-rounded) weights: measured 3.8 % relative RMS error on this random
    model (std-0.3 weights make attention sharp), same argmax everywhere."""
    _, config, params = tiny_model()
    bf16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
    forward = jax.jit(jm.make_forward(config))
    a = forward(jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), bf16), jnp.asarray(TOKENS))
    b = forward(bf16, jnp.asarray(TOKENS))
    assert b.dtype == jnp.bfloat16
    b = b.astype(jnp.float32)
    assert float(jnp.sqrt(jnp.mean((a - b) ** 2) / jnp.mean(a ** 2))) < 0.06
    assert float(jnp.mean(a.argmax(-1) == b.argmax(-1))) >= 0.9


@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": True}, {"attention_bias": True, "mlp_bias": True}])
def test_param_key_count_is_one_key_per_drawn_leaf_and_keeps_the_draws(overrides):
    """One key per leaf; with the partitionable threefry the first keys of a split do not depend on its length, so
    the weights equal those of the former bound of 20 keys per layer (+ 3) bit for bit."""
    from jq.models import llama

    _, config, _ = tiny_model(**overrides)
    n = llama.param_key_count(config)
    shapes = llama.param_tree(config, lambda s: s, lambda s: s)
    assert n == len(jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple)))
    key = jax.random.key(3)
    old, new = jax.random.split(key, config.num_hidden_layers * 20 + 3), jax.random.split(key, n)
    np.testing.assert_array_equal(np.asarray(jax.random.key_data(old[:n])), np.asarray(jax.random.key_data(new)))


def test_param_tree_spells_hf_names():
    _, config, params = tiny_model(tie_word_embeddings=True)
    names = set(jm.flatten_params(params))
    assert names == set(jm.expected_names(config))
    assert "model.layers.1.self_attn.q_proj.weight" in names and "lm_head.weight" not in names
    assert params["model"]["layers"][1]["mlp"]["down_proj"]["weight"].shape == (32, 48)  # [out, in]
