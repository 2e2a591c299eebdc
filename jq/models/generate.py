"""Generation with a KV cache: ``prefill``, ``decode_step`` and greedy ``generate`` under ``jax.jit``.

Both steps run the same function, :func:`extend`: the ``t`` new tokens sit at positions
``length..length+t-1``; their keys/values are written into the cache (quantized as stored when the cache
has a format), and attention reads the whole dequantized cache with a mask that hides empty slots and
future positions. So the prompt's attention already sees the stored (quantized) keys and values, as every
later decode step does. ``generate`` is one jitted program: prefill, then a ``lax.scan`` of decode steps.

Example:
  >>> out = generate(params, prompt, 16, config=cfg, kv_format="fp8", k_amax=k_amax, v_amax=v_amax)
  >>> out.shape                                     # [batch, 16] new tokens, greedy
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jq.models.config import LlamaConfig
from jq.models.kv_cache import KVCache, init_cache, read_layer, write_layer
from jq.models.llama import attention_mask, decoder_layer, lm_head
from jq.models.rope import rope_tables

__all__ = ["cached_layer", "extend", "extend_inputs", "prefill", "decode_step", "generate"]


def extend_inputs(config: LlamaConfig, tokens: jax.Array, length: jax.Array, max_len: int) -> tuple:
    """``(cos, sin, mask)`` for ``tokens [batch, t]`` appended after ``length`` cached positions of a cache of
    ``max_len`` slots: the new tokens sit at positions ``length .. length + t - 1`` and attend to the valid slots
    ``< length + t`` (causal, sliding window per ``config``)."""
    b, t = tokens.shape
    positions = length + jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    cos, sin = rope_tables(config, positions)
    slots = jnp.broadcast_to(jnp.arange(max_len, dtype=jnp.int32), (b, max_len))
    return cos, sin, attention_mask(positions, slots, config, k_valid=slots < length + t)


def cached_layer(params: dict, h: jax.Array, cache: KVCache, cos, sin, mask: jax.Array, i: int = 0
                 ) -> tuple[jax.Array, KVCache]:
    """Decoder layer ``i`` of ``params`` on ``h[batch, t, hidden]`` through ``cache``: ``(h, cache)``.

    :func:`jq.models.llama.decoder_layer` whose attention reads the whole cache: the new keys/values are
    stored at ``length..length+t-1`` (:func:`write_layer`; ``length`` not advanced here, the caller does it
    once after all layers) and attention reads every slot dequantized (:func:`read_layer`), ``mask`` hiding
    empty and future ones (:func:`extend_inputs`). The default ``i=0`` with the params and cache of a 1-layer
    model is the step a layer-scanned model runs per layer (its sites carry layer 0's names).

    Example:
      >>> cos, sin, mask = extend_inputs(cache.config, tokens, cache.length, cache.max_len)
      >>> h, cache = cached_layer(params, h, cache, cos, sin, mask, i=3)
    """
    def through_cache(k, v):
        stored = write_layer(cache, i, k, v)
        return (*read_layer(stored, i), stored)

    return decoder_layer(params["model"]["layers"][i], h, i, cos, sin, mask, cache.config, kv=through_cache)


def extend(params: dict, tokens: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Logits ``[batch, t, vocab]`` of ``tokens[batch, t]`` appended after the cached positions, and the
    cache with their keys/values stored and ``length`` advanced by ``t``."""
    config = cache.config
    t = tokens.shape[1]
    cos, sin, mask = extend_inputs(config, tokens, cache.length, cache.max_len)
    h = params["model"]["embed_tokens"]["weight"][tokens]
    for i in range(len(params["model"]["layers"])):
        h, cache = cached_layer(params, h, cache, cos, sin, mask, i)
    return lm_head(params, h, config), dataclasses.replace(cache, length=cache.length + t)


def prefill(params: dict, tokens: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Run the prompt ``tokens[batch, t]`` through an empty (or partly filled) cache: ``(logits, cache)``."""
    return extend(params, tokens, cache)


def decode_step(params: dict, token: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """One token per row (``token[batch]``): next-token logits ``[batch, vocab]`` and the updated cache."""
    logits, cache = extend(params, token.reshape(-1, 1), cache)
    return logits[:, 0], cache


@functools.partial(jax.jit, static_argnames=("n_new",))
def _greedy(params, prompt, cache, n_new: int):
    logits, cache = prefill(params, prompt, cache)
    first = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)

    def step(carry, _):
        token, cache = carry
        logits, cache = decode_step(params, token, cache)
        nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return (nxt, cache), nxt

    (_, cache), rest = jax.lax.scan(step, (first, cache), None, length=n_new - 1)
    return jnp.concatenate([first[:, None], rest.T], axis=1), cache


def generate(params: dict, prompt: jax.Array, n_new: int, *, config: LlamaConfig, max_len: int | None = None,
             kv_format=None, k_amax=None, v_amax=None, storage: str = "quantized", dtype=None,
             return_cache: bool = False):
    """Greedy generation of ``n_new`` tokens after ``prompt[batch, t]`` (all rows the same length).

    The cache holds ``max_len`` positions (default ``t + n_new``) in ``kv_format`` (see
    :func:`jq.models.init_cache`); ``dtype`` defaults to the dtype of the embedding table. Returns the new
    tokens ``[batch, n_new]`` (and the final cache when ``return_cache``).
    """
    prompt = jnp.asarray(prompt, jnp.int32)
    b, t = prompt.shape
    max_len = generation_length(t, n_new, max_len)
    dtype = dtype or params["model"]["embed_tokens"]["weight"].dtype
    cache = init_cache(config, b, max_len, kv_format=kv_format, k_amax=k_amax, v_amax=v_amax, dtype=dtype,
                       storage=storage)
    tokens, cache = _greedy(params, prompt, cache, n_new)
    return (tokens, cache) if return_cache else tokens


def generation_length(prompt_len: int, n_new: int, max_len: int | None = None) -> int:
    """The cache length of a generation of ``n_new`` tokens after ``prompt_len`` ones (``max_len`` if given,
    checked to hold them)."""
    if n_new < 1:
        raise ValueError(f"n_new must be at least 1, got {n_new}")
    max_len = prompt_len + n_new if max_len is None else max_len
    if max_len < prompt_len + n_new:
        raise ValueError(f"max_len={max_len} is shorter than prompt ({prompt_len}) + n_new ({n_new})")
    return max_len
