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


_RUNNERS = {}


def vjp_operands(recipe, x, w, dy, *, key=None, state=None, **kw):
    """Jitted fprop + backward of ``linear`` with cotangent ``dy``: (y, dx, dw, operands by GEMM name).

    One compiled runner per (recipe, options), reused across calls with other keys/states (compiles are the
    cost of these tests on a 2-core machine).
    """
    from jq.recipes import linear

    cache_key = (recipe, tuple(sorted(kw.items())))
    if cache_key not in _RUNNERS:
        rec = RecordingGemm()

        @jax.jit
        def run(x, w, dy, key, state):
            y, pullback = jax.vjp(lambda x, w: linear(recipe, x, w, gemm=rec, key=key, state=state, **kw), x, w)
            return (y, *pullback(dy))

        _RUNNERS[cache_key] = (rec, run)
    rec, run = _RUNNERS[cache_key]
    rec.ops = {}
    y, dx, dw = run(x, w, dy, key, state)
    jax.effects_barrier()
    return np.asarray(y), np.asarray(dx), np.asarray(dw), dict(rec.ops)


def normal(seed, shape, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)
