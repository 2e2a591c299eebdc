"""Small models for the export tests: a residual CNN and a decoder-only transformer.

The transformer's causal mask is built from a position comparison (no ``jnp.tril`` of booleans) and its
attention projections are separate q/k/v ``DenseGeneral`` layers, so their kernels ``[d, heads, head_dim]``
exercise the canonical-layout path of the exporter and form a sibling group.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


class ExportCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="conv1")(x))
        r = x
        x = nn.relu(nn.Conv(8, (3, 3), name="conv2")(x))
        x = nn.avg_pool(x + r, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(16, (3, 3), name="conv3")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))  # jax2onnx writes a 4-D window: ChannelsLastPoolPass fixes it
        return nn.Dense(10, name="head")(x.reshape(x.shape[0], -1))


class Block(nn.Module):
    dim: int
    heads: int

    @nn.compact
    def __call__(self, h):
        t = h.shape[1]
        hd = self.dim // self.heads
        x = nn.LayerNorm(name="ln1")(h)
        q = nn.DenseGeneral((self.heads, hd), name="q_proj")(x)
        k = nn.DenseGeneral((self.heads, hd), name="k_proj")(x)
        v = nn.DenseGeneral((self.heads, hd), name="v_proj")(x)
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(hd))
        pos = jnp.arange(t)
        s = jnp.where(pos[:, None] >= pos[None, :], s, -1e9)
        o = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, axis=-1), v)
        h = h + nn.DenseGeneral(self.dim, axis=(-2, -1), name="o_proj")(o)
        m = nn.Dense(2 * self.dim, name="fc")(nn.LayerNorm(name="ln2")(h))
        return h + nn.Dense(self.dim, name="proj")(jax.nn.gelu(m))


class ExportTransformer(nn.Module):
    vocab: int = 48
    dim: int = 32
    heads: int = 2
    n_layers: int = 2

    @nn.compact
    def __call__(self, tokens):
        h = nn.Embed(self.vocab, self.dim, name="wte")(tokens)
        for i in range(self.n_layers):
            h = Block(self.dim, self.heads, name=f"block{i}")(h)
        return nn.Dense(self.vocab, name="lm_head")(nn.LayerNorm(name="ln_f")(h))
