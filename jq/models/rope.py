"""Rotary position embeddings (RoPE) with Hugging Face's scaling options, in Llama's "rotate half" layout.

For head width ``d`` and frequencies ``inv_freq`` (``d / 2`` of them), position ``p`` rotates the pair
``(x_i, x_{i + d/2})`` by the angle ``p * inv_freq_i``::

    cos, sin = cos(p * f), sin(p * f)      with f = concat(inv_freq, inv_freq)
    rope(x)  = x * cos + rotate_half(x) * sin,   rotate_half(x) = concat(-x[d/2:], x[:d/2])

Example:
  >>> cfg = LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
  ...                   num_attention_heads=2)
  >>> cos, sin = rope_tables(cfg, jnp.arange(3)[None])
  >>> cos.shape
  (1, 3, 4)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jq.models.config import LlamaConfig

__all__ = ["inv_frequencies", "rope_tables", "apply_rope"]


def _base_inv_freq(theta, dim: int) -> jax.Array:
    """``1 / theta^(2i/d)`` in float32, as ``transformers`` computes it."""
    exponent = jnp.arange(0, dim, 2, dtype=jnp.int32).astype(jnp.float32) / dim
    return 1.0 / (jnp.asarray(theta, jnp.float32) ** exponent)


def inv_frequencies(config: LlamaConfig, seq_len=None) -> jax.Array:
    """The ``head_dim / 2`` rotary frequencies after scaling.

    ``seq_len`` (a scalar, may be traced) only matters for ``dynamic`` scaling: the base grows once the
    sequence is longer than the original context (``transformers``' dynamic NTK update).
    """
    rs, dim = config.rope_scaling, config.head_dim
    if rs.rope_type == "default":
        return _base_inv_freq(config.rope_theta, dim)
    if rs.rope_type == "linear":
        return _base_inv_freq(config.rope_theta, dim) / rs.factor
    original = rs.original_max_position_embeddings or config.max_position_embeddings
    if rs.rope_type == "dynamic":
        length = jnp.maximum(jnp.asarray(original if seq_len is None else seq_len, jnp.float32), original)
        base = config.rope_theta * ((rs.factor * length / original) - (rs.factor - 1)) ** (dim / (dim - 2))
        return _base_inv_freq(base, dim)
    # llama3
    inv_freq = _base_inv_freq(config.rope_theta, dim)
    low_wavelen = original / rs.low_freq_factor
    high_wavelen = original / rs.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / rs.factor, inv_freq)
    smooth = (original / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, smoothed, scaled)


def rope_tables(config: LlamaConfig, positions: jax.Array, seq_len=None) -> tuple[jax.Array, jax.Array]:
    """``cos`` and ``sin`` of shape ``positions.shape + (head_dim,)`` in float32.

    ``seq_len`` defaults to ``max(positions) + 1`` (used by ``dynamic`` scaling only).
    """
    if seq_len is None and config.rope_scaling.rope_type == "dynamic":
        seq_len = jnp.max(positions) + 1
    inv_freq = inv_frequencies(config, seq_len)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate ``x[batch, seq, heads, head_dim]`` by tables ``[batch, seq, head_dim]`` (computed in float32)."""
    half = x.shape[-1] // 2
    xf = x.astype(jnp.float32)
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos[:, :, None] + rotated * sin[:, :, None]).astype(x.dtype)
