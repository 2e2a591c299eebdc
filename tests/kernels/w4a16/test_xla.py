"""The XLA W4A16 paths: the reference on the dequantized weight, and XLA's native int4 path."""

import jax.numpy as jnp
import numpy as np

from jq import qtensor
from jq_kernels.w4a16 import int4_xla_weights, w4a16_matmul_xla, w4a16_matmul_xla_int4
from tests.kernels.w4a16._weights import I4, NV1, quantize


def test_xla_paths_match_dequantized_dot():
    rng = np.random.default_rng(2)
    w = jnp.asarray(rng.standard_normal((96, 256)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((5, 256)), jnp.bfloat16)
    for spec in (NV1, I4):
        qt = quantize(w, spec)
        wd = qtensor.dequantize(qt, jnp.bfloat16)
        ref = x.astype(jnp.float32) @ wd.astype(jnp.float32).T
        y = w4a16_matmul_xla(x, wd, out_dtype=jnp.float32)
        np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-4)
    qt = quantize(w, I4)
    wi, inv = int4_xla_weights(qt.data, qt.scale)
    y = w4a16_matmul_xla_int4(x, wi, inv, out_dtype=jnp.float32)
    ref = x.astype(jnp.float32) @ qtensor.dequantize(qt, jnp.float32).T
    assert float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref)) < 1e-2


def test_int4_xla_weights_are_the_signed_codes_and_dequant_multipliers():
    qt = quantize(jnp.asarray(np.random.default_rng(3).standard_normal((4, 200)), jnp.float32), I4)
    wi, inv = int4_xla_weights(qt.data, qt.scale)
    assert wi.dtype == jnp.int4 and wi.shape == (4, 256) and inv.shape == (4, 2)
    deq = np.asarray(wi.astype(jnp.float32)) * np.repeat(np.asarray(inv), 128, axis=1)
    np.testing.assert_allclose(deq[:, :200], np.asarray(qtensor.dequantize(qt, jnp.float32)), rtol=1e-6, atol=0)
