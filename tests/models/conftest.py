"""Tiny random Llama-family models shared by the model tests."""

import functools

import jax
import jax.numpy as jnp
import pytest

import jq.models as jm
from jq.models import llama


def tiny_hf(**overrides) -> dict:
    """A ``config.json`` dict of a 2-layer GQA Llama (4 query heads, 2 KV heads, head_dim 8)."""
    d = {"architectures": ["LlamaForCausalLM"], "vocab_size": 48, "hidden_size": 32, "intermediate_size": 48,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
         "rope_theta": 10000.0, "max_position_embeddings": 64, "tie_word_embeddings": False}
    d.update(overrides)
    return d


def tiny_model(seed: int = 0, **overrides):
    """``(hf_dict, config, params)`` with weights large enough (std 0.3) for non-trivial attention."""
    hf = tiny_hf(**overrides)
    config = jm.LlamaConfig.from_hf(hf)
    return hf, config, init_params(config, jax.random.key(seed), scale=0.3)


# ``jm.init_params`` is one jitted program per config (static): ~2.5 s of XLA compile on the 2-core CI machine for
# every distinct tiny config, and the model tests build dozens. ``init_params`` below draws the same values (bit for
# bit, same keys in the same order, each leaf's arithmetic jitted as in jm.init_params) from one small program per
# leaf shape, which every config with that shape reuses. tests/models/test_llama.py checks it against jm.init_params.

@functools.cache
def _leaf(shape, std, dtype, around_one):
    def draw(key):
        v = (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
        return (1.0 + v.astype(jnp.float32)).astype(dtype) if around_one else v  # norm weights around 1
    return jax.jit(draw)


@functools.cache
def _split(n):
    return jax.jit(lambda key: jax.random.split(key, n))


def init_params(config, key, *, dtype=jnp.float32, scale: float = 0.02) -> dict:
    """``jm.init_params(config, key, dtype=dtype, scale=scale)``, without a compile per config: the library's
    :func:`jq.models.llama.param_tree` with each leaf drawn by a program cached per leaf shape."""
    keys = iter(_split(llama.param_key_count(config))(key))
    dtype = jnp.dtype(dtype)
    params = llama.param_tree(config, lambda shape: _leaf(tuple(shape), scale, dtype, False)(next(keys)),
                              lambda shape: _leaf(tuple(shape), 0.1, dtype, True)(next(keys)))
    # the same tree of the same shapes and dtypes as the library's (tracing only, no compile)
    want = jax.eval_shape(functools.partial(jm.init_params, config, dtype=dtype, scale=scale), key)
    assert jax.tree.structure(params) == jax.tree.structure(want), "tiny_model: jm.init_params changed its tree"
    assert all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)))
    return params


@pytest.fixture
def tiny():
    return tiny_model()
