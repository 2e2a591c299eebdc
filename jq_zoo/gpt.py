"""A small GPT (nanoGPT's architecture) in Flax linen, with a training loop and evaluation helpers.

Pre-LayerNorm decoder blocks with causal self-attention and a GELU MLP, learned position embeddings and an
untied ``lm_head``. Attention uses separate ``q_proj``/``k_proj``/``v_proj`` Dense layers (siblings that
serving stacks fuse; see :func:`jq.trace.sibling_groups`), all ``[in, out]`` 2-D kernels. The causal mask
is a position comparison, which exports to ONNX without boolean ``Where`` nodes.

Parameter names follow nanoGPT: ``wte``, ``wpe``, ``h_{i}.ln_1``, ``h_{i}.attn.{q,k,v}_proj``,
``h_{i}.attn.c_proj``, ``h_{i}.ln_2``, ``h_{i}.mlp.c_fc``, ``h_{i}.mlp.c_proj``, ``ln_f``, ``lm_head``.

Example:
  >>> cfg = GPTConfig(vocab_size=65)
  >>> params, history = train(cfg, train_ids, steps=200)
  >>> logits = GPT(cfg).apply(params, x)        # x: int32 [batch, block]
"""

from __future__ import annotations

import dataclasses
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["GPTConfig", "GPT", "cross_entropy", "train", "evaluate", "generate"]


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Model size: vocabulary, context length, layers, heads and width."""

    vocab_size: int
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")


class CausalSelfAttention(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        b, t, d = x.shape
        hd = d // cfg.n_head

        def heads(y):
            return y.reshape(b, t, cfg.n_head, hd)

        q = heads(nn.Dense(d, name="q_proj")(x))
        k = heads(nn.Dense(d, name="k_proj")(x))
        v = heads(nn.Dense(d, name="v_proj")(x))
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (1.0 / np.sqrt(hd))
        pos = jnp.arange(t)
        s = jnp.where(pos[:, None] >= pos[None, :], s, jnp.float32(-1e9))
        o = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, axis=-1), v).reshape(b, t, d)
        return nn.Dense(d, name="c_proj")(o)


class MLP(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x):
        d = self.config.n_embd
        return nn.Dense(d, name="c_proj")(jax.nn.gelu(nn.Dense(4 * d, name="c_fc")(x)))


class Block(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x):
        x = x + CausalSelfAttention(self.config, name="attn")(nn.LayerNorm(name="ln_1")(x))
        return x + MLP(self.config, name="mlp")(nn.LayerNorm(name="ln_2")(x))


class GPT(nn.Module):
    """``apply(params, tokens[int32 batch, t]) -> logits[batch, t, vocab]`` with ``t <= block_size``."""

    config: GPTConfig

    @nn.compact
    def __call__(self, tokens):
        cfg = self.config
        t = tokens.shape[1]
        h = nn.Embed(cfg.vocab_size, cfg.n_embd, name="wte")(tokens)
        h = h + nn.Embed(cfg.block_size, cfg.n_embd, name="wpe")(jnp.arange(t))[None]
        for i in range(cfg.n_layer):
            h = Block(cfg, name=f"h_{i}")(h)
        return nn.Dense(cfg.vocab_size, name="lm_head")(nn.LayerNorm(name="ln_f")(h))


def cross_entropy(logits, targets) -> jax.Array:
    """Mean next-token cross-entropy (nats)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets).mean()


def train(config: GPTConfig, train_ids: np.ndarray, *, steps: int = 1000, batch: int = 32, lr: float = 3e-3,
          seed: int = 0, log_every: int = 0, log=print) -> tuple[dict, list[tuple[int, float]]]:
    """Train from scratch with AdamW (warm-up then cosine decay); returns params and ``(step, loss)`` history."""
    from jq_zoo.shakespeare import random_batches

    model = GPT(config)
    params = model.init(jax.random.key(seed), jnp.zeros((1, config.block_size), jnp.int32))
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), steps, lr / 10)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=0.01))
    state = opt.init(params)

    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(lambda p: cross_entropy(model.apply(p, x), y))(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    history, t0 = [], time.time()
    data = random_batches(train_ids, batch, config.block_size, seed)
    for i in range(1, steps + 1):
        x, y = next(data)
        params, state, loss = step(params, state, x, y)
        if log_every and (i % log_every == 0 or i == steps):
            history.append((i, float(loss)))
            log(f"  step {i:5d}  loss {float(loss):.3f}  ({time.time() - t0:.0f} s)")
    return params, history


def evaluate(apply_fn, params, ids: np.ndarray, block_size: int, *, batch: int = 32, n_batches: int = 8) -> float:
    """Mean cross-entropy of ``apply_fn(params, x)`` over ``n_batches`` contiguous, non-overlapping windows."""
    n = (len(ids) - 1) // block_size
    starts = np.linspace(0, (n - 1) * block_size, min(n, batch * n_batches)).astype(int)
    total, count = 0.0, 0
    for k in range(0, len(starts), batch):
        s = starts[k:k + batch]
        x = np.stack([ids[i:i + block_size] for i in s])
        y = np.stack([ids[i + 1:i + block_size + 1] for i in s])
        total += float(cross_entropy(apply_fn(params, jnp.asarray(x)), jnp.asarray(y))) * len(s)
        count += len(s)
    return total / count


def generate(apply_fn, params, prompt: np.ndarray, n: int, block_size: int, *, seed: int = 0,
             temperature: float = 0.8) -> np.ndarray:
    """Sample ``n`` tokens after ``prompt`` (1-D int array), feeding the last ``block_size`` tokens each step."""
    rng = np.random.default_rng(seed)
    ids = list(np.asarray(prompt).reshape(-1))
    for _ in range(n):
        ctx = np.asarray(ids[-block_size:], np.int32)[None]
        logits = np.asarray(apply_fn(params, jnp.asarray(ctx)))[0, -1] / temperature
        p = np.exp(logits - logits.max())
        ids.append(int(rng.choice(len(p), p=p / p.sum())))
    return np.asarray(ids, np.int32)
