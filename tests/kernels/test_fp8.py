"""FP8 kernels in interpret mode equal jq.numerics bit for bit."""

import jax.numpy as jnp
import numpy as np
import pytest

from jq import numerics as nx
from jq_kernels import fp8 as F


def _eq(a, b):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def _u8(a):
    return np.asarray(a).view(np.uint8)


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("shape", [(8, 64), (5, 40), (3, 7, 33), (100,)])
def test_fp8_per_tensor(fmt, dtype, shape):
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape) * 3, dtype)
    x = x.reshape(-1).at[0].set(-0.0).reshape(shape)
    amax = jnp.float32(2.5)
    q, s = F.fp8_quantize(x, amax, fmt=fmt, interpret=True)
    qr, sr = nx.fp8_quantize(x, amax, fmt)
    np.testing.assert_array_equal(_u8(q), _u8(np.asarray(qr).astype(q.dtype)))
    assert float(s) == float(sr)
    _eq(F.fp8_fake_quant(x, amax, fmt=fmt, interpret=True), nx.fp8_fake_quant(x, amax, fmt))
    _eq(F.fp8_dequantize(q, s, dtype=dtype, interpret=True), nx.fp8_dequantize(qr, sr, dtype))
    dyn = jnp.max(jnp.abs(x.astype(jnp.float32)))
    _eq(F.fp8_fake_quant(x, fmt=fmt, interpret=True), nx.fp8_fake_quant(x, dyn, fmt))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_fp8_per_row(dtype):
    x = jnp.asarray(np.random.default_rng(1).standard_normal((37, 70)) * 2, dtype)
    am = jnp.max(jnp.abs(x.astype(jnp.float32)), axis=1, keepdims=True) * 0.7
    _eq(F.fp8_fake_quant(x, am, interpret=True), nx.fp8_fake_quant(x, am))
    q, s = F.fp8_quantize(x, am, interpret=True)
    qr, sr = nx.fp8_quantize(x, am)
    np.testing.assert_array_equal(_u8(q), _u8(np.asarray(qr).astype(q.dtype)))
    _eq(F.fp8_dequantize(q, s, dtype=dtype, interpret=True), nx.fp8_dequantize(qr, sr, dtype))


def test_fp8_all_bf16_patterns_and_tiny_amax():
    b = np.arange(65536, dtype=np.uint16).view(jnp.bfloat16).reshape(256, 256)
    x = jnp.where(jnp.isfinite(jnp.asarray(b)), jnp.asarray(b), 0).astype(jnp.bfloat16)
    for amax in (1.0, 3.0e3, 2.0**-30):  # the last is treated as 1
        _eq(F.fp8_fake_quant(x, jnp.float32(amax), interpret=True), nx.fp8_fake_quant(x, jnp.float32(amax)))
