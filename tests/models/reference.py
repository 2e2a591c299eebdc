"""An independent numpy reference of the Llama-family decoder, written from the HF modeling description.

Plain loops over positions and heads in float64, with HF tensor names read from a flat ``{name: array}``
dict: no code is shared with ``jq.models``. RoPE frequencies follow ``transformers``'
``ROPE_INIT_FUNCTIONS`` (default, linear, dynamic, llama3); the rotation is Llama's rotate-half form.
"""

from __future__ import annotations

import math

import numpy as np


def rope_inv_freq(hf: dict, seq_len: int) -> np.ndarray:
    """Per-pair rotary frequencies for a ``config.json`` dict."""
    heads = hf["num_attention_heads"]
    dim = hf.get("head_dim") or hf["hidden_size"] // heads
    theta = hf.get("rope_theta", 10000.0)
    rs = hf.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    base_freq = lambda base: np.array([1.0 / base ** (2 * i / dim) for i in range(dim // 2)])  # noqa: E731
    if kind == "default":
        return base_freq(theta)
    if kind == "linear":
        return base_freq(theta) / rs["factor"]
    original = rs.get("original_max_position_embeddings") or hf["max_position_embeddings"]
    if kind == "dynamic":
        length = max(seq_len, original)
        base = theta * ((rs["factor"] * length / original) - (rs["factor"] - 1)) ** (dim / (dim - 2))
        return base_freq(base)
    assert kind == "llama3", kind
    out = []
    for f in base_freq(theta):
        wavelen = 2 * math.pi / f
        if wavelen < original / rs["high_freq_factor"]:
            out.append(f)
        elif wavelen > original / rs["low_freq_factor"]:
            out.append(f / rs["factor"])
        else:
            smooth = (original / wavelen - rs["low_freq_factor"]) / (rs["high_freq_factor"] - rs["low_freq_factor"])
            out.append((1 - smooth) * f / rs["factor"] + smooth * f)
    return np.array(out)


def _rms(x, w, eps):
    return w * x / np.sqrt(np.mean(x * x) + eps)


def _rotate(vec, pos, inv_freq):
    half = len(vec) // 2
    out = np.empty_like(vec)
    for i in range(half):
        a = pos * inv_freq[i]
        x1, x2 = vec[i], vec[i + half]
        out[i] = x1 * math.cos(a) - x2 * math.sin(a)
        out[i + half] = x2 * math.cos(a) + x1 * math.sin(a)
    return out


def _lin(w, x, b=None):
    return w @ x + (0 if b is None else b)


def llama_logits(hf: dict, weights: dict, tokens) -> np.ndarray:
    """Logits ``[seq, vocab]`` for one sequence of token ids."""
    W = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    heads, layers = hf["num_attention_heads"], hf["num_hidden_layers"]
    kv_heads = hf.get("num_key_value_heads") or heads
    dim = hf.get("head_dim") or hf["hidden_size"] // heads
    eps = hf.get("rms_norm_eps", 1e-6)
    window = hf.get("sliding_window") if hf["architectures"][0] == "MistralForCausalLM" else None
    inv_freq = rope_inv_freq(hf, len(tokens))
    hs = [W["model.embed_tokens.weight"][t].copy() for t in tokens]
    T = len(tokens)
    for li in range(layers):
        p = f"model.layers.{li}."
        bias = lambda n: W.get(p + n + ".bias")  # noqa: E731
        qs, ks, vs = [], [], []
        for pos in range(T):
            x = _rms(hs[pos], W[p + "input_layernorm.weight"], eps)
            q = _lin(W[p + "self_attn.q_proj.weight"], x, bias("self_attn.q_proj"))
            k = _lin(W[p + "self_attn.k_proj.weight"], x, bias("self_attn.k_proj"))
            v = _lin(W[p + "self_attn.v_proj.weight"], x, bias("self_attn.v_proj"))
            qs.append([_rotate(q[h * dim:(h + 1) * dim], pos, inv_freq) for h in range(heads)])
            ks.append([_rotate(k[h * dim:(h + 1) * dim], pos, inv_freq) for h in range(kv_heads)])
            vs.append([v[h * dim:(h + 1) * dim] for h in range(kv_heads)])
        for pos in range(T):
            out = []
            for h in range(heads):
                kvh = h // (heads // kv_heads)
                visible = [s for s in range(pos + 1) if window is None or pos - s < window]
                scores = np.array([qs[pos][h] @ ks[s][kvh] / math.sqrt(dim) for s in visible])
                probs = np.exp(scores - scores.max())
                probs /= probs.sum()
                out.append(sum(pr * vs[s][kvh] for pr, s in zip(probs, visible)))
            o = _lin(W[p + "self_attn.o_proj.weight"], np.concatenate(out), bias("self_attn.o_proj"))
            hs[pos] = hs[pos] + o
        for pos in range(T):
            x = _rms(hs[pos], W[p + "post_attention_layernorm.weight"], eps)
            gate = _lin(W[p + "mlp.gate_proj.weight"], x, bias("mlp.gate_proj"))
            up = _lin(W[p + "mlp.up_proj.weight"], x, bias("mlp.up_proj"))
            act = gate / (1 + np.exp(-gate)) * up
            hs[pos] = hs[pos] + _lin(W[p + "mlp.down_proj.weight"], act, bias("mlp.down_proj"))
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return np.stack([head @ _rms(h, W["model.norm.weight"], eps) for h in hs])


def gpt2_logits(hf: dict, weights: dict, tokens) -> np.ndarray:
    """GPT-2 logits ``[seq, vocab]`` (Conv1D weights are ``[in, out]``: ``y = x @ W + b``)."""
    W = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    d, heads = hf["n_embd"], hf["n_head"]
    dim, eps = d // heads, hf.get("layer_norm_epsilon", 1e-5)

    def ln(x, name):
        mu = x.mean()
        return (x - mu) / np.sqrt(((x - mu) ** 2).mean() + eps) * W[name + ".weight"] + W[name + ".bias"]

    def gelu_new(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    hs = [W["transformer.wte.weight"][t] + W["transformer.wpe.weight"][i] for i, t in enumerate(tokens)]
    for li in range(hf["n_layer"]):
        p = f"transformer.h.{li}."
        qkv = [ln(h, p + "ln_1") @ W[p + "attn.c_attn.weight"] + W[p + "attn.c_attn.bias"] for h in hs]
        new = []
        for pos in range(len(hs)):
            out = []
            for h in range(heads):
                q = qkv[pos][h * dim:(h + 1) * dim]
                scores = np.array([q @ qkv[s][d + h * dim:d + (h + 1) * dim] / math.sqrt(dim)
                                   for s in range(pos + 1)])
                probs = np.exp(scores - scores.max())
                probs /= probs.sum()
                out.append(sum(pr * qkv[s][2 * d + h * dim:2 * d + (h + 1) * dim] for s, pr in enumerate(probs)))
            new.append(hs[pos] + np.concatenate(out) @ W[p + "attn.c_proj.weight"] + W[p + "attn.c_proj.bias"])
        hs = new
        hs = [h + gelu_new(ln(h, p + "ln_2") @ W[p + "mlp.c_fc.weight"] + W[p + "mlp.c_fc.bias"])
              @ W[p + "mlp.c_proj.weight"] + W[p + "mlp.c_proj.bias"] for h in hs]
    head = W.get("lm_head.weight", W["transformer.wte.weight"])
    return np.stack([head @ ln(h, "transformer.ln_f") for h in hs])
