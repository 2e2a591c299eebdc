"""The model shapes of the LLM benchmarks (Hugging Face ``config.json`` fields) and their jq configs at any depth.

Example:
  >>> config_of("llama3_8b", 2).hidden_size
  4096
"""

from __future__ import annotations

import jq.models as jm

__all__ = ["SHAPES", "config_of"]

SHAPES = {
    "smollm2_135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0,
                         tie_word_embeddings=True),
    "llama3_8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0,
                      tie_word_embeddings=False),
    "tiny": dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, tie_word_embeddings=False),
}


def config_of(shape: str, layers: int) -> jm.LlamaConfig:
    """The :class:`jq.models.LlamaConfig` of ``SHAPES[shape]`` with ``layers`` decoder layers."""
    d = dict(SHAPES[shape], num_hidden_layers=layers, architectures=["LlamaForCausalLM"],
             max_position_embeddings=4096, rms_norm_eps=1e-5)
    return jm.LlamaConfig.from_hf(d)
