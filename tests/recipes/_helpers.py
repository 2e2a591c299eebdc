"""Shared test helpers: a GEMM that records its operands, and tensors with known NVFP4 block scales."""

import jax
import jax.numpy as jnp
import numpy as np

from jq.recipes import fake_gemm


class RecordingGemm:
    """``fake_gemm`` that also stores the dequantized operands of each GEMM by name (fprop/dgrad/wgrad).

    Uses ``jax.debug.callback``, so it records under ``jit`` and inside the custom VJP's backward.
    """

    def __init__(self):
        self.ops = {}

    def __call__(self, a, b, *, which):
        def store(a_val, b_val):
            self.ops[which] = (np.asarray(a_val), np.asarray(b_val))

        jax.debug.callback(store, a.dequantized, b.dequantized)
        return fake_gemm(a, b, which=which)


def vjp_operands(recipe, x, w, dy, **kw):
    """Run fprop + backward of ``linear`` with cotangent ``dy``; return (y, dx, dw, recorded operands)."""
    from jq.recipes import linear

    rec = RecordingGemm()
    y, pullback = jax.vjp(lambda x, w: linear(recipe, x, w, gemm=rec, **kw), x, w)
    dx, dw = pullback(dy)
    jax.effects_barrier()
    return y, dx, dw, rec.ops


def normal(seed, shape, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)
