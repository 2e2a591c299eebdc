"""The Llama-family configuration, parsed from a Hugging Face ``config.json``.

One :class:`LlamaConfig` covers ``LlamaForCausalLM`` (Llama 2/3, SmolLM2), ``Qwen2ForCausalLM`` (q/k/v bias)
and ``MistralForCausalLM`` (sliding-window attention). Both spellings of RoPE scaling that ``transformers``
writes are read: ``rope_theta`` + ``rope_scaling`` (4.x) and ``rope_parameters`` (5.x).

Example:
  >>> cfg = LlamaConfig.from_hf({"architectures": ["LlamaForCausalLM"], "vocab_size": 32, "hidden_size": 16,
  ...                            "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
  ...                            "num_key_value_heads": 2})
  >>> cfg.head_dim, cfg.num_groups
  (4, 2)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping

__all__ = ["RopeScaling", "LlamaConfig", "SUPPORTED_ARCHITECTURES", "load_config"]

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """RoPE frequency scaling as ``transformers`` defines it (``rope_type`` and its parameters).

    * ``default``: ``inv_freq_i = theta^(-2i/d)``.
    * ``linear``: ``inv_freq / factor`` (position interpolation).
    * ``dynamic``: NTK-aware; for a sequence of length ``L > L0`` the base becomes
      ``theta * (factor * L / L0 - (factor - 1))^(d / (d - 2))`` (``L0`` = original context).
    * ``llama3``: wavelengths longer than ``L0 / low_freq_factor`` are divided by ``factor``, shorter than
      ``L0 / high_freq_factor`` kept, those between interpolated smoothly.
    """

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise NotImplementedError(f"rope_type {self.rope_type!r} is not implemented; supported: {ROPE_TYPES}")
        if self.rope_type != "default" and self.factor <= 0:
            raise ValueError(f"rope scaling factor must be positive, got {self.factor}")

    @classmethod
    def from_hf(cls, d: Mapping | None) -> RopeScaling:
        """From ``rope_scaling`` / ``rope_parameters`` (``type`` is the old spelling of ``rope_type``)."""
        if not d:
            return cls()
        rope_type = d.get("rope_type", d.get("type", "default"))
        return cls(rope_type=rope_type, factor=float(d.get("factor", 1.0) or 1.0),
                   low_freq_factor=float(d.get("low_freq_factor", 1.0)),
                   high_freq_factor=float(d.get("high_freq_factor", 4.0)),
                   original_max_position_embeddings=d.get("original_max_position_embeddings"))

    def to_hf(self) -> dict | None:
        if self.rope_type == "default":
            return None
        out = {"rope_type": self.rope_type, "factor": self.factor}
        if self.rope_type == "llama3":
            out.update(low_freq_factor=self.low_freq_factor, high_freq_factor=self.high_freq_factor)
        if self.original_max_position_embeddings is not None:
            out["original_max_position_embeddings"] = self.original_max_position_embeddings
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    """A Llama-family decoder: sizes, attention layout, RoPE, norm and head options.

    Attributes:
      architecture: the HF class name (``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ``MistralForCausalLM``).
      head_dim: per-head width (``hidden_size // num_attention_heads`` unless the config sets it).
      qkv_bias / o_bias / mlp_bias: which projections carry a bias (Llama ``attention_bias`` sets q/k/v/o,
        Qwen2 always has q/k/v bias).
      sliding_window: Mistral's attention window (keys with ``q_pos - k_pos >= window`` are masked); None = full.
      tie_word_embeddings: the output head reuses ``model.embed_tokens.weight`` (no ``lm_head`` param).
    """

    architecture: str = "LlamaForCausalLM"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling()
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple | None = None
    torch_dtype: str = "float32"

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass normalisation)
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"unsupported architecture {self.architecture!r}; supported: {SUPPORTED_ARCHITECTURES}")
        if self.num_key_value_heads is None:
            set_("num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of "
                                 f"num_attention_heads={self.num_attention_heads}; set head_dim")
            set_("head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")
        if isinstance(self.rope_scaling, Mapping) or self.rope_scaling is None:
            set_("rope_scaling", RopeScaling.from_hf(self.rope_scaling))
        if isinstance(self.eos_token_id, list):  # hashable: configs are static arguments of jitted functions
            set_("eos_token_id", tuple(self.eos_token_id))

    @property
    def num_groups(self) -> int:
        """Query heads per key/value head (GQA group size)."""
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_hf(cls, d: Mapping) -> LlamaConfig:
        """Parse a HF ``config.json`` dict; an unsupported ``architectures`` entry raises naming it."""
        archs = d.get("architectures") or [_ARCH_OF_MODEL_TYPE.get(d.get("model_type"), "")]
        arch = archs[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"unsupported architecture {arch!r} (config.json 'architectures'); jq.models "
                             f"supports {SUPPORTED_ARCHITECTURES}")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise NotImplementedError(f"{arch}: hidden_act={act!r}; the Llama family uses 'silu' (SwiGLU)")
        rope = d.get("rope_parameters") or {}
        theta = float(rope.get("rope_theta", d.get("rope_theta", 10000.0)))
        scaling = RopeScaling.from_hf(d.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default"
                                                                else None))
        window = None
        if arch == "MistralForCausalLM":
            window = d.get("sliding_window")
        elif arch == "Qwen2ForCausalLM" and d.get("use_sliding_window", False):
            raise NotImplementedError("Qwen2ForCausalLM with use_sliding_window=True (per-layer windows from "
                                      "max_window_layers) is not implemented")
        qwen = arch == "Qwen2ForCausalLM"
        attention_bias = bool(d.get("attention_bias", False))
        return cls(
            architecture=arch, vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"], num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"], num_key_value_heads=d.get("num_key_value_heads"),
            head_dim=d.get("head_dim"), rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)), rope_theta=theta,
            rope_scaling=scaling, max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=qwen or attention_bias, o_bias=attention_bias and not qwen,
            mlp_bias=bool(d.get("mlp_bias", False)), sliding_window=window,
            bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
            torch_dtype=str(d.get("torch_dtype", d.get("dtype", "float32"))))

    def to_hf(self) -> dict:
        """A ``config.json`` dict that :meth:`from_hf` (and ``transformers``) read back to this config."""
        model_type = {v: k for k, v in _ARCH_OF_MODEL_TYPE.items()}[self.architecture]
        d = {
            "architectures": [self.architecture], "model_type": model_type, "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers, "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads, "head_dim": self.head_dim, "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps, "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling.to_hf(), "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings, "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "torch_dtype": self.torch_dtype,
        }
        if self.architecture == "LlamaForCausalLM":
            d.update(attention_bias=self.o_bias, mlp_bias=self.mlp_bias)
        elif self.architecture == "MistralForCausalLM":
            d["sliding_window"] = self.sliding_window
        else:
            d["use_sliding_window"] = False
        return d


_ARCH_OF_MODEL_TYPE = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}


def load_config(path: str | os.PathLike) -> LlamaConfig:
    """Read ``config.json`` from a model directory (or the file itself)."""
    path = os.fspath(path)
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face model directory)")
    with open(file) as f:
        return LlamaConfig.from_hf(json.load(f))
