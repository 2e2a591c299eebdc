"""Small models of every style jq must handle: Flax linen, Flax nnx, plain JAX, nn.scan, attention."""

import jax
import jax.numpy as jnp
import flax.linen as nn
from flax import nnx


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32, name="fc1")(x))
        return nn.Dense(10, name="fc2")(x)


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="conv1")(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(16, (3, 3), name="conv2")(x))
        return nn.Dense(10, name="head")(x.reshape(x.shape[0], -1))


class Layer(nn.Module):
    @nn.compact
    def __call__(self, h, _):
        y = nn.Dense(16, name="fc")(nn.LayerNorm(name="norm")(h))
        return h + jnp.tanh(y), None


class ScanStack(nn.Module):
    n_layers: int = 3

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(16, name="embed_proj")(x)
        h, _ = nn.scan(Layer, variable_axes={"params": 0}, split_rngs={"params": True},
                       length=self.n_layers)(name="layers")(h, None)
        return nn.Dense(4, name="out_proj")(h)


class Attention(nn.Module):
    heads: int = 2

    @nn.compact
    def __call__(self, x):
        b, t, d = x.shape
        hd = d // self.heads
        q = nn.DenseGeneral((self.heads, hd), name="query")(x)
        k = nn.DenseGeneral((self.heads, hd), name="key")(x)
        v = nn.DenseGeneral((self.heads, hd), name="value")(x)
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(hd)
        mask = jnp.tril(jnp.ones((t, t), bool))
        p = jax.nn.softmax(jnp.where(mask, s, -1e9), axis=-1)
        o = jnp.einsum("bhqk,bkhd->bqhd", p, v)
        return nn.DenseGeneral(d, axis=(-2, -1), name="out")(o)


class TinyTransformer(nn.Module):
    vocab: int = 32
    dim: int = 16
    n_layers: int = 2

    @nn.compact
    def __call__(self, tokens):
        h = nn.Embed(self.vocab, self.dim, name="embed")(tokens)
        for i in range(self.n_layers):
            h = h + Attention(name=f"block{i}_attn")(nn.LayerNorm(name=f"block{i}_ln1")(h))
            m = nn.Dense(4 * self.dim, name=f"block{i}_mlp_up")(nn.LayerNorm(name=f"block{i}_ln2")(h))
            h = h + nn.Dense(self.dim, name=f"block{i}_mlp_down")(jax.nn.gelu(m))
        return nn.Dense(self.vocab, name="lm_head")(nn.LayerNorm(name="ln_f")(h))


class NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(8, 16, rngs=rngs)
        self.l2 = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x)))


def nnx_apply():
    model = NnxMLP(nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    return state, lambda st, x: nnx.merge(graphdef, st)(x)


def plain_params(key=0):
    k1, k2 = jax.random.split(jax.random.key(key))
    return {"w1": jax.random.normal(k1, (8, 16)) / 3, "w2": jax.random.normal(k2, (16, 4)) / 4}


def plain_fn(p, x):
    return jnp.tanh(x @ p["w1"]) @ p["w2"]


def linen(model, x, seed=0):
    return model.init(jax.random.key(seed), x), model.apply
