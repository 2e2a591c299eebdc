"""A Llama-family decoder in plain JAX: a params pytree with Hugging Face's names and pure apply functions.

Architecture (``transformers``' ``LlamaForCausalLM``, also Qwen2, Mistral, SmolLM2)::

    h = embed_tokens[tokens]
    for each layer:  h = h + o_proj(attention(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1)))   n1 = rms(h)
                     h = h + down_proj(silu(gate_proj(n2)) * up_proj(n2))                          n2 = rms(h)
    logits = lm_head(rms(h))          (lm_head = embed_tokens when tied)

    rms(x) = w * x / sqrt(mean(x^2) + eps)
    attention: softmax(q k^T / sqrt(head_dim) + causal mask) v, each key/value head shared by a group of
               num_attention_heads / num_key_value_heads query heads (GQA)

The params tree mirrors the HF tensor names (``params["model"]["layers"][3]["self_attn"]["q_proj"]["weight"]``
is ``model.layers.3.self_attn.q_proj.weight``) and keeps PyTorch's ``[out, in]`` weight layout, so jq's sites
are named like ModelOpt's modules (``model.layers.3.self_attn.q_proj.weight_quantizer``) and the name map to
HF is the identity (:mod:`jq.models.hf`). Every projection is one ``einsum`` on a params leaf (a ``linear``
site for jq); attention is two activation x activation einsums (q k^T and p v) under the name scope
``model.layers.N.self_attn``, which jq names ``model.layers.N.self_attn.{q,k,v}_bmm_quantizer``.

Example:
  >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
  ...                   num_attention_heads=4, num_key_value_heads=2)
  >>> params = init_params(cfg, jax.random.key(0))
  >>> forward(params, jnp.zeros((1, 5), jnp.int32), config=cfg).shape
  (1, 5, 64)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jq.models.config import LlamaConfig
from jq.models.rope import apply_rope, rope_tables

__all__ = ["init_params", "param_tree", "param_key_count", "forward", "make_forward", "rms_norm", "linear",
           "attention", "layer_scope", "project_qkv", "mlp", "lm_head", "decoder_layer", "fuse_projections",
           "unfuse_projections", "fused_rows", "split_rows", "FUSED_PROJECTIONS"]

# (block, fused module, its parts in row order): what serving stacks run as one GEMM
FUSED_PROJECTIONS = (("self_attn", "qkv_proj", ("q_proj", "k_proj", "v_proj")),
                     ("mlp", "gate_up_proj", ("gate_proj", "up_proj")))


def layer_scope(i: int) -> str:
    """Name scope of layer ``i``'s attention matmuls (jq's bmm site name)."""
    return f"model.layers.{i}.self_attn"


def param_key_count(config: LlamaConfig) -> int:
    """How many keys :func:`init_params` splits its key into: one per leaf :func:`param_tree` draws, counted by
    walking it (with jax's partitionable threefry, the default since jax 0.5, the first ``m`` keys of
    ``jax.random.split(key, n)`` do not depend on ``n``, so the count does not change the draws).

    Example:
      >>> param_key_count(cfg)   # 2 layers, no biases, untied: 2 * (7 weights + 2 norms) + embedding, norm, head
      21
    """
    count = 0

    def draw(shape):
        nonlocal count
        count += 1
        return shape

    param_tree(config, draw, draw)
    return count


def param_tree(config: LlamaConfig, weight, norm) -> dict:
    """The HF-named params tree of ``config`` with each leaf drawn by ``weight(shape)`` (projection weights and
    biases, embedding, head) or ``norm(shape)`` (RMSNorm gains), called in a fixed order: per layer q, k, v, o,
    gate, up, down (weight, then bias where the config has one), the two norms; then the embedding, the final
    norm and, untied, the head.

    Example:
      >>> shapes = param_tree(cfg, lambda s: s, lambda s: s)   # the leaf shapes
    """
    c = config
    shapes = {"q_proj": (c.num_attention_heads * c.head_dim, c.hidden_size),
              "k_proj": (c.num_key_value_heads * c.head_dim, c.hidden_size),
              "v_proj": (c.num_key_value_heads * c.head_dim, c.hidden_size),
              "o_proj": (c.hidden_size, c.num_attention_heads * c.head_dim),
              "gate_proj": (c.intermediate_size, c.hidden_size), "up_proj": (c.intermediate_size, c.hidden_size),
              "down_proj": (c.hidden_size, c.intermediate_size)}
    bias = {"q_proj": c.qkv_bias, "k_proj": c.qkv_bias, "v_proj": c.qkv_bias, "o_proj": c.o_bias,
            "gate_proj": c.mlp_bias, "up_proj": c.mlp_bias, "down_proj": c.mlp_bias}

    def proj(name):
        p = {"weight": weight(shapes[name])}
        if bias[name]:
            p["bias"] = weight(shapes[name][:1])
        return p

    layers = [{"self_attn": {n: proj(n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")},
               "mlp": {n: proj(n) for n in ("gate_proj", "up_proj", "down_proj")},
               "input_layernorm": {"weight": norm((c.hidden_size,))},
               "post_attention_layernorm": {"weight": norm((c.hidden_size,))}} for _ in range(c.num_hidden_layers)]
    params = {"model": {"embed_tokens": {"weight": weight((c.vocab_size, c.hidden_size))}, "layers": layers,
                        "norm": {"weight": norm((c.hidden_size,))}}}
    if not c.tie_word_embeddings:
        params["lm_head"] = {"weight": weight((c.vocab_size, c.hidden_size))}
    return params


@functools.partial(jax.jit, static_argnames=("config", "dtype", "scale"))  # one program, not ~100 eager ops
def init_params(config: LlamaConfig, key: jax.Array, *, dtype=jnp.float32, scale: float = 0.02) -> dict:
    """Random params in the HF-named layout (:func:`param_tree`): normal with std ``scale``, norm gains
    ``1 + normal(0.1)``."""
    keys = iter(jax.random.split(key, param_key_count(config)))

    def weight(shape, std=scale):
        return (std * jax.random.normal(next(keys), shape, jnp.float32)).astype(dtype)

    def norm(shape):
        return (1.0 + weight(shape, 0.1).astype(jnp.float32)).astype(dtype)

    return param_tree(config, weight, norm)


def rms_norm(x: jax.Array, p: dict, eps: float) -> jax.Array:
    """``w * x / sqrt(mean(x^2) + eps)``, normalised in float32 and cast back before the scale (as HF)."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return p["weight"] * y.astype(x.dtype)


def linear(x: jax.Array, p: dict) -> jax.Array:
    """``x @ W^T (+ b)`` for a PyTorch-layout ``W[out, in]``: one dot_general on the params leaf."""
    y = jnp.einsum("...i,oi->...o", x, p["weight"])
    return y + p["bias"] if "bias" in p else y


def fused_rows(config: LlamaConfig) -> dict:
    """``{fused projection: its parts' output rows}``: ``qkv_proj`` ``(heads * d, kv_heads * d, kv_heads * d)``,
    ``gate_up_proj`` ``(intermediate, intermediate)``, in the order of :data:`FUSED_PROJECTIONS`' parts."""
    c = config
    return {"qkv_proj": (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim,
                         c.num_key_value_heads * c.head_dim),
            "gate_up_proj": (c.intermediate_size, c.intermediate_size)}


def split_rows(y: jax.Array, rows: tuple, axis: int = -1) -> tuple:
    """``y`` split along ``axis`` into consecutive pieces of ``rows`` entries (a fused projection's parts)."""
    return tuple(jnp.split(y, [sum(rows[:i]) for i in range(1, len(rows))], axis=axis))


def project_qkv(attn: dict, x: jax.Array, cos, sin, config: LlamaConfig):
    """``q[b, t, heads, d]``, ``k, v[b, t, kv_heads, d]``, with RoPE applied to q and k.

    With a fused ``attn["qkv_proj"]`` (:func:`fuse_projections`): one linear, its output columns split
    ``[q | k | v]`` (``heads * d``, ``kv_heads * d``, ``kv_heads * d``).
    """
    b, t, _ = x.shape
    c = config
    if "qkv_proj" in attn:
        q, k, v = split_rows(linear(x, attn["qkv_proj"]), fused_rows(c)["qkv_proj"])
    else:
        q, k, v = (linear(x, attn[n]) for n in ("q_proj", "k_proj", "v_proj"))
    q = q.reshape(b, t, c.num_attention_heads, c.head_dim)
    k = k.reshape(b, t, c.num_key_value_heads, c.head_dim)
    v = v.reshape(b, t, c.num_key_value_heads, c.head_dim)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def attention_mask(q_pos: jax.Array, k_pos: jax.Array, config: LlamaConfig, k_valid=None) -> jax.Array:
    """``mask[b, t, s]``: key ``s`` is visible to query ``t`` (causal, within Mistral's sliding window)."""
    diff = q_pos[:, :, None] - k_pos[:, None, :]
    mask = diff >= 0
    if config.sliding_window is not None:
        mask &= diff < config.sliding_window
    if k_valid is not None:
        mask &= k_valid[:, None, :]
    return mask


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, config: LlamaConfig) -> jax.Array:
    """``softmax(q k^T / sqrt(d) masked) v`` with grouped heads; ``q[b, t, H, d]``, ``k, v[b, s, K, d]``.

    Two activation x activation ``dot_general`` s, q first and k second (jq's ``q_bmm``/``k_bmm``
    quantizers follow the operand order; ``jnp.einsum`` may swap operands), then probabilities x v
    (``v_bmm``).
    """
    b, t, _, d = q.shape
    c = config
    qg = q.reshape(b, t, c.num_key_value_heads, c.num_groups, d)
    # scores[b, K, t, g, s] = sum_d q[b, t, K, g, d] k[b, s, K, d]
    scores = jax.lax.dot_general(qg, k, (((4,), (3,)), ((0, 2), (0, 2)))) * (d ** -0.5)  # HF scales the product
    scores = jnp.where(mask[:, None, :, None, :], scores.astype(jnp.float32), -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    # out[b, K, t, g, d] = sum_s probs[b, K, t, g, s] v[b, s, K, d]
    out = jax.lax.dot_general(probs, v, (((4,), (1,)), ((0, 1), (0, 2))))
    return out.transpose(0, 2, 1, 3, 4).reshape(b, t, c.num_attention_heads * d)


def mlp(p: dict, x: jax.Array) -> jax.Array:
    """SwiGLU: ``down(silu(gate(x)) * up(x))``; with a fused ``p["gate_up_proj"]`` (:func:`fuse_projections`) one
    linear whose output columns are ``[gate | up]`` (equal halves)."""
    if "gate_up_proj" in p:
        gu = linear(x, p["gate_up_proj"])
        n = gu.shape[-1] // 2
        gate, up = gu[..., :n], gu[..., n:]
    else:
        gate, up = linear(x, p["gate_proj"]), linear(x, p["up_proj"])
    return linear(jax.nn.silu(gate) * up, p["down_proj"])


def _fuse_layer(layer: dict) -> dict:
    """One layer's params with q/k/v and gate/up concatenated along the output (row) axis."""
    out = dict(layer)
    for block, fused, parts in FUSED_PROJECTIONS:
        b = dict(layer[block])
        if fused in b:
            raise ValueError(f"{block}.{fused} is already fused")
        missing = [n for n in parts if n not in b]
        if missing:
            raise ValueError(f"{block} has no {missing} to fuse into {fused} (keys {sorted(b)})")
        ps = [b.pop(n) for n in parts]
        keys = {frozenset(p) for p in ps}
        if len(keys) != 1:
            raise ValueError(f"{block}: {parts} have different params {[sorted(p) for p in ps]}; cannot fuse")
        # weight [.., out, in] (rows on axis -2, also under a leading stacked-layer axis), bias [.., out]
        b[fused] = {k: jnp.concatenate([p[k] for p in ps], axis=-2 if k == "weight" else -1) for k in ps[0]}
        out[block] = b
    return out


def _unfuse_layer(layer: dict, config: LlamaConfig) -> dict:
    rows = fused_rows(config)
    out = dict(layer)
    for block, fused, parts in FUSED_PROJECTIONS:
        b = dict(layer[block])
        if fused not in b:
            continue
        p = b.pop(fused)
        n_out = p["weight"].shape[-2]
        if n_out != sum(rows[fused]):
            raise ValueError(f"{block}.{fused}: {n_out} rows, the config's {parts} have {rows[fused]}")
        # weight [..., out, in] splits its rows (axis -2), a bias [..., out] its last axis
        pieces = {k: split_rows(v, rows[fused], axis=-2 if k == "weight" else -1) for k, v in p.items()}
        for i, n in enumerate(parts):
            b[n] = {k: v[i] for k, v in pieces.items()}
        out[block] = b
    return out


def fuse_projections(params: dict) -> dict:
    """The params with each layer's q/k/v and gate/up projections fused, as serving stacks run them::

        self_attn.qkv_proj.weight  = concat([q_proj.weight, k_proj.weight, v_proj.weight], rows)  (biases too)
        mlp.gate_up_proj.weight    = concat([gate_proj.weight, up_proj.weight], rows)

    :func:`forward` / :func:`project_qkv` / :func:`mlp` run either layout: one GEMM, then a column split, gives
    the same outputs. Under jq the fused site has one weight quantizer (per-tensor amax = the max of the parts';
    per-row scales are the parts' rows) and one input quantizer (the parts read the same input). Accepts a full
    params tree (``params["model"]["layers"]`` a list) or one layer's dict (also with stacked ``[n, out, in]``
    leaves). HF checkpoints name the parts: :func:`unfuse_projections` before :func:`jq.models.save_hf`.

    Example:
      >>> fused = fuse_projections(params)
      >>> fused["model"]["layers"][0]["mlp"]["gate_up_proj"]["weight"].shape   # (2 * intermediate, hidden)
    """
    if "model" not in params:
        return _fuse_layer(params)
    return dict(params, model=dict(params["model"], layers=[_fuse_layer(l) for l in params["model"]["layers"]]))


def unfuse_projections(params: dict, config: LlamaConfig) -> dict:
    """The inverse of :func:`fuse_projections`: rows split back at the config's q/k/v and gate/up sizes (exact:
    a slice). Unfused layers pass through unchanged."""
    if "model" not in params:
        return _unfuse_layer(params, config)
    return dict(params, model=dict(params["model"],
                                   layers=[_unfuse_layer(l, config) for l in params["model"]["layers"]]))


def lm_head(params: dict, h: jax.Array, config: LlamaConfig) -> jax.Array:
    """Final norm and output projection (``model.embed_tokens.weight`` when the head is tied)."""
    h = rms_norm(h, params["model"]["norm"], config.rms_norm_eps)
    head = params["model"]["embed_tokens"] if config.tie_word_embeddings else params["lm_head"]
    return linear(h, {"weight": head["weight"]})


def decoder_layer(layer: dict, h: jax.Array, i: int, cos, sin, mask: jax.Array, config: LlamaConfig, kv=None
                  ) -> tuple:
    """Decoder layer ``i`` (params ``layer``) on ``h[batch, t, hidden]``: ``(h, aux)``.

    ::

        n1 = rms(h);  q, k, v = rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1)
        keys, values, aux = kv(k, v)                              (default: k, v, None)
        h = h + o_proj(attention(q, keys, values, mask))          (under the name scope layer_scope(i))
        h = h + mlp(rms(h))

    ``kv`` is where a KV cache stores the new keys/values and hands attention the whole cache (``aux``: the
    updated cache); keys/values are cast to q's dtype (a no-op without a cache). The sites are named from the
    paths of ``layer``'s leaves and, for attention, ``layer_scope(i)``.

    Example:
      >>> h, _ = decoder_layer(params["model"]["layers"][0], h, 0, cos, sin, mask, cfg)
    """
    x = rms_norm(h, layer["input_layernorm"], config.rms_norm_eps)
    q, k, v = project_qkv(layer["self_attn"], x, cos, sin, config)
    keys, values, aux = (k, v, None) if kv is None else kv(k, v)
    with jax.named_scope(layer_scope(i)):
        o = attention(q, keys.astype(q.dtype), values.astype(q.dtype), mask, config)
    h = h + linear(o, layer["self_attn"]["o_proj"])
    h = h + mlp(layer["mlp"], rms_norm(h, layer["post_attention_layernorm"], config.rms_norm_eps))
    return h, aux


def forward(params: dict, tokens: jax.Array, *, config: LlamaConfig, positions: jax.Array | None = None
            ) -> jax.Array:
    """Logits ``[batch, seq, vocab]`` of ``tokens[batch, seq]`` (int), without a cache.

    ``positions[batch, seq]`` default to ``0..seq-1``; the causal mask compares positions.
    """
    b, t = tokens.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    cos, sin = rope_tables(config, positions)
    mask = attention_mask(positions, positions, config)
    h = params["model"]["embed_tokens"]["weight"][tokens]
    for i, layer in enumerate(params["model"]["layers"]):
        h, _ = decoder_layer(layer, h, i, cos, sin, mask, config)
    return lm_head(params, h, config)


def make_forward(config: LlamaConfig):
    """``apply_fn(params, tokens, positions=None) -> logits`` for ``jq.quantize`` and evaluation."""
    return functools.partial(forward, config=config)
