"""GPT-2 in plain JAX with Hugging Face's layout: ``transformer.h.N.attn.c_attn`` ... and Conv1D weights.

HF's GPT-2 stores its linear layers as ``Conv1D`` with weights ``[in, out]`` (``y = x @ W + b``), the
q/k/v projection fused in ``c_attn`` (``[d, 3d]``), learned positions ``wpe``, pre-LayerNorm blocks, the
``gelu_new`` (tanh) activation and an output head tied to ``wte``::

    h = wte[tokens] + wpe[positions]
    for each block:  h = h + c_proj(attention(split3(c_attn(ln_1(h)))))
                     h = h + mlp.c_proj(gelu_new(mlp.c_fc(ln_2(h))))
    logits = ln_f(h) @ wte^T

The params tree spells the HF tensor names (``params["transformer"]["h"][0]["attn"]["c_attn"]["weight"]``),
so jq's sites are ``transformer.h.0.attn.c_attn`` etc. and :func:`jq.models.hf.save_hf` writes a directory
``transformers`` loads.

Example:
  >>> cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4)
  >>> params = init_params(cfg, jax.random.key(0))
  >>> forward(params, jnp.zeros((1, 8), jnp.int32), config=cfg).shape
  (1, 8, 64)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["GPT2Config", "init_params", "forward", "make_forward", "load_gpt2", "expected_names"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPT2Config:
    """GPT-2 sizes and options with HF's field names (``n_inner`` None means ``4 * n_embd``)."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    tie_word_embeddings: bool = True

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")
        if self.activation_function not in _ACTIVATIONS:
            raise NotImplementedError(f"GPT-2 activation_function={self.activation_function!r}; "
                                      f"supported: {sorted(_ACTIVATIONS)}")

    @property
    def inner(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @classmethod
    def from_hf(cls, d: dict) -> GPT2Config:
        arch = (d.get("architectures") or ["GPT2LMHeadModel"])[0]
        if arch not in ("GPT2LMHeadModel", "GPT2Model"):
            raise ValueError(f"unsupported architecture {arch!r} for jq.models.gpt2 (GPT2LMHeadModel)")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})

    def to_hf(self) -> dict:
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", **dataclasses.asdict(self)}


_ACTIVATIONS = {
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
}


def expected_names(config: GPT2Config) -> list[str]:
    """Tensor names of an HF GPT-2 checkpoint (``lm_head.weight`` only when untied)."""
    names = ["transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"]
    for i in range(config.n_layer):
        p = f"transformer.h.{i}."
        for m in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            names += [p + m + ".weight", p + m + ".bias"]
    return names + ([] if config.tie_word_embeddings else ["lm_head.weight"])


@functools.partial(jax.jit, static_argnames=("config", "dtype", "scale"))  # one program, not ~100 eager ops
def init_params(config: GPT2Config, key: jax.Array, *, dtype=jnp.float32, scale: float = 0.02) -> dict:
    """Random params in HF's layout (Conv1D weights ``[in, out]``, LayerNorm weights around 1)."""
    d, c = config.n_embd, config
    shapes = {"attn.c_attn": (d, 3 * d), "attn.c_proj": (d, d), "mlp.c_fc": (d, c.inner), "mlp.c_proj": (c.inner, d)}
    keys = iter(jax.random.split(key, 4 + 16 * c.n_layer))

    def normal(shape, std=scale, mean=0.0):
        return (mean + std * jax.random.normal(next(keys), shape, jnp.float32)).astype(dtype)

    def ln():
        return {"weight": normal((d,), 0.1, 1.0), "bias": normal((d,), 0.1)}

    def block():
        out = {"ln_1": ln(), "ln_2": ln(), "attn": {}, "mlp": {}}
        for name, shape in shapes.items():
            group, leaf = name.split(".")
            out[group][leaf] = {"weight": normal(shape), "bias": normal(shape[1:])}
        return out

    params = {"transformer": {"wte": {"weight": normal((c.vocab_size, d))},
                              "wpe": {"weight": normal((c.n_positions, d))},
                              "h": [block() for _ in range(c.n_layer)], "ln_f": ln()}}
    if not c.tie_word_embeddings:
        params["lm_head"] = {"weight": normal((c.vocab_size, d))}
    return params


def _layer_norm(x, p, eps):
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, -1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), -1, keepdims=True)
    return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype) * p["weight"] + p["bias"]


def _conv1d(x, p):
    """HF ``Conv1D``: ``x @ W + b`` with ``W[in, out]``."""
    return jnp.einsum("...i,io->...o", x, p["weight"]) + p["bias"]


def _attention(q, k, v):
    """Causal ``softmax(q k^T / sqrt(d)) v`` on ``[b, t, heads, d]``: q/k then p/v dot_generals."""
    b, t, h, d = q.shape
    scores = jax.lax.dot_general(q, k, (((3,), (3,)), ((0, 2), (0, 2)))) * (d ** -0.5)  # [b, h, t, s]
    causal = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]
    probs = jax.nn.softmax(jnp.where(causal, scores.astype(jnp.float32), -jnp.inf), axis=-1).astype(v.dtype)
    out = jax.lax.dot_general(probs, v, (((3,), (1,)), ((0, 1), (0, 2))))  # [b, h, t, d]
    return out.transpose(0, 2, 1, 3).reshape(b, t, h * d)


def forward(params: dict, tokens: jax.Array, *, config: GPT2Config) -> jax.Array:
    """Logits ``[batch, seq, vocab]`` of ``tokens[batch, seq]`` (``seq <= n_positions``)."""
    b, t = tokens.shape
    if t > config.n_positions:
        raise ValueError(f"sequence length {t} exceeds n_positions={config.n_positions}")
    tr, eps, act = params["transformer"], config.layer_norm_epsilon, _ACTIVATIONS[config.activation_function]
    hd = config.n_embd // config.n_head
    h = tr["wte"]["weight"][tokens] + tr["wpe"]["weight"][:t][None]
    for i, blk in enumerate(tr["h"]):
        qkv = _conv1d(_layer_norm(h, blk["ln_1"], eps), blk["attn"]["c_attn"])
        q, k, v = (y.reshape(b, t, config.n_head, hd) for y in jnp.split(qkv, 3, axis=-1))
        with jax.named_scope(f"transformer.h.{i}.attn"):
            o = _attention(q, k, v)
        h = h + _conv1d(o, blk["attn"]["c_proj"])
        h = h + _conv1d(act(_conv1d(_layer_norm(h, blk["ln_2"], eps), blk["mlp"]["c_fc"])), blk["mlp"]["c_proj"])
    head = tr["wte"]["weight"] if config.tie_word_embeddings else params["lm_head"]["weight"]
    return jnp.einsum("...i,oi->...o", _layer_norm(h, tr["ln_f"], eps), head)


def make_forward(config: GPT2Config):
    """``apply_fn(params, tokens) -> logits`` for ``jq.quantize`` and evaluation."""
    return functools.partial(forward, config=config)


def load_gpt2(path: str | os.PathLike, *, dtype=jnp.float32) -> tuple[GPT2Config, dict]:
    """``(config, params)`` from an HF GPT-2 directory (``config.json`` + safetensors, single or sharded).

    Checkpoints saved from ``GPT2Model`` (names without ``transformer.``) are accepted; the attention
    mask buffers old checkpoints carry (``attn.bias``, ``attn.masked_bias``) are ignored.
    """
    from jq.models.hf import read_safetensors, tensor_files, unflatten_params

    path = Path(path)
    file = path / "config.json"
    if not file.exists():
        raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face model directory)")
    config = GPT2Config.from_hf(json.loads(file.read_text()))
    files = tensor_files(path)
    bare = not any(n.startswith("transformer.") for n in files)
    source = {n: (n[len("transformer."):] if bare and n.startswith("transformer.") else n)
              for n in expected_names(config)}
    flat = read_safetensors(path, list(source.values()))
    return config, unflatten_params({n: jnp.asarray(np.asarray(flat[s]), dtype) for n, s in source.items()})
