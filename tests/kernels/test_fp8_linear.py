"""The FP8 linear layer through XLA equals the fake-quantized dot."""

import jax.numpy as jnp
import numpy as np

from jq import numerics as nx
from jq_kernels.fp8_linear import fp8_linear, prepare_fp8_weight


def test_fp8_linear_equals_fake_quant_dot():
    rng = np.random.default_rng(3)
    w = jnp.asarray(rng.standard_normal((64, 128)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((4, 128)), jnp.float32)
    wq, winv = prepare_fp8_weight(w, jnp.max(jnp.abs(w)))
    y = fp8_linear(x, wq, winv, jnp.float32(2.0), out_dtype=jnp.float32)
    ref = nx.fp8_fake_quant(x, jnp.float32(2.0)) @ nx.fp8_fake_quant(w, jnp.max(jnp.abs(w))).T
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_leading_dims_and_custom_activation_quantizer():
    rng = np.random.default_rng(4)
    w = jnp.asarray(rng.standard_normal((32, 64)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((2, 3, 64)), jnp.float32)
    wq, winv = prepare_fp8_weight(w, jnp.max(jnp.abs(w)))
    calls = []

    def qx(v, a):
        calls.append(v.shape)
        q, s = nx.fp8_quantize(v, a, "e4m3")
        return q.astype(jnp.float8_e4m3fn), s

    y = fp8_linear(x, wq, winv, jnp.float32(2.0), out_dtype=jnp.float32, quantize_x=qx)
    assert y.shape == (2, 3, 32) and calls == [(6, 64)]
    np.testing.assert_array_equal(np.asarray(y), np.asarray(fp8_linear(x, wq, winv, jnp.float32(2.0),
                                                                          out_dtype=jnp.float32)))
