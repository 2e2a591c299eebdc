"""NVFP4 kernels in interpret mode equal the jq.numerics / jq.qtensor references bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jq import numerics as nx
from jq import qtensor
from jq.config import QuantizerSpec
from jq_kernels import nvfp4 as K

NV1 = QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, "type": "dynamic", "scale_bits": (4, 3)})
NV2 = QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, -2: 16, "type": "dynamic", "scale_bits": (4, 3)})
SHAPES = [(5, 40), (3, 7, 33)]  # ragged: K not a multiple of 16, M not of 16


def _eq(a, b):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def _bits(a):
    a = np.asarray(a)
    return a.view(np.uint8) if a.dtype.itemsize == 1 else a


def _x(shape, dtype, seed=0, scale=3.0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale, dtype)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_quantize_1d_matches_qtensor(shape, dtype):
    x = _x(shape, dtype)
    d, s, gs = K.nvfp4_quantize(x, interpret=True)
    qt = qtensor.quantize(x, NV1)
    np.testing.assert_array_equal(np.asarray(d), np.asarray(qt.data))
    np.testing.assert_array_equal(_bits(s), _bits(qt.scale))
    assert float(gs) == float(qt.global_scale)
    _eq(K.nvfp4_fake_quant(x, interpret=True), nx.nvfp4_fake_quant(x))
    _eq(K.nvfp4_dequantize(d, s, gs, x.shape, dtype=dtype, interpret=True), qtensor.dequantize(qt))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("shape", [(20, 40)])
def test_two_d_blocks(shape, dtype):
    x = _x(shape, dtype, seed=1)
    d, s, gs = K.nvfp4_quantize(x, two_d=True, interpret=True)
    qt = qtensor.quantize(x, NV2)
    np.testing.assert_array_equal(np.asarray(d), np.asarray(qt.data))
    np.testing.assert_array_equal(_bits(s), _bits(qt.scale))
    _eq(K.nvfp4_fake_quant(x, two_d=True, interpret=True), nx.nvfp4_fake_quant(x, two_d=True))
    _eq(K.nvfp4_dequantize(d, s, gs, x.shape, two_d=True, dtype=dtype, interpret=True), qtensor.dequantize(qt))


def test_float16_and_given_amax():
    x = _x((6, 48), jnp.float16, seed=2)
    amax = jnp.float32(2.0)  # smaller than max|x|: saturation paths
    _eq(K.nvfp4_fake_quant(x, amax, interpret=True), nx.nvfp4_fake_quant(x, amax))


def test_all_bf16_bit_patterns():
    b = np.arange(65536, dtype=np.uint16).view(jnp.bfloat16).reshape(256, 256)
    x = jnp.where(jnp.isfinite(jnp.asarray(b)), jnp.asarray(b), 0).astype(jnp.bfloat16)
    for amax in (1.0, 3.0e3):
        _eq(K.nvfp4_fake_quant(x, jnp.float32(amax), interpret=True), nx.nvfp4_fake_quant(x, jnp.float32(amax)))


def test_nan_amax_propagates():
    x = _x((4, 32), jnp.float32, seed=9)
    _eq(K.nvfp4_fake_quant(x, jnp.float32(jnp.nan), interpret=True), nx.nvfp4_fake_quant(x, jnp.float32(jnp.nan)))
    assert np.all(np.isnan(np.asarray(K.nvfp4_fake_quant(x, jnp.float32(jnp.nan), interpret=True))))


def test_zeros_give_zeros():
    x = jnp.zeros((4, 32), jnp.bfloat16)
    y = K.nvfp4_fake_quant(x, interpret=True)
    assert not np.any(np.isnan(np.asarray(y, np.float32)))
    _eq(y, x)


def test_stochastic_rounding_bits_and_hash():
    x = _x((6, 48), jnp.bfloat16, seed=3, scale=1.0)
    bits = jnp.asarray(np.random.default_rng(4).integers(0, 256, x.shape), jnp.uint8)
    _eq(K.nvfp4_fake_quant(x, random_bits=bits, interpret=True), nx.nvfp4_fake_quant(x, random_bits=bits))
    _eq(K.nvfp4_fake_quant(x, sr_seed=7, interpret=True),
        nx.nvfp4_fake_quant(x, random_bits=K.sr_bits(7, x.shape)))
    d, s, _ = K.nvfp4_quantize(x, sr_seed=7, interpret=True)
    q, sc, gs, layout = nx.nvfp4_quantize(x, random_bits=K.sr_bits(7, x.shape))
    codes = nx.pack_nibbles(nx.e2m1_encode(q, layout.split(x) < 0).reshape(layout.padded_shape))
    np.testing.assert_array_equal(np.asarray(d), np.asarray(codes))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_fused_rht_exact_sums(dtype):
    # integer inputs: every 16-term Hadamard sum is exact, so the fused kernel equals the unfused composition
    x = jnp.asarray(np.random.default_rng(5).integers(-8, 9, (6, 48)), dtype)
    _eq(K.nvfp4_fake_quant(x, rht=True, interpret=True), nx.nvfp4_fake_quant(nx.random_hadamard_transform(x)))
    d, s, gs = K.nvfp4_quantize(x, rht=True, interpret=True)
    qt = qtensor.quantize(nx.random_hadamard_transform(x), NV1)
    np.testing.assert_array_equal(np.asarray(d), np.asarray(qt.data))
    np.testing.assert_array_equal(_bits(s), _bits(qt.scale))
    _eq(K.nvfp4_fake_quant(x, rht=True, sr_seed=3, interpret=True),
        nx.nvfp4_fake_quant(nx.random_hadamard_transform(x), random_bits=K.sr_bits(3, x.shape)))


def test_quantize_storage_is_qtensor_storage():
    """The kernel's (codes, scales, global scale) are a QTensor's storage: dequantized, the fake-quant reference."""
    x = _x((16, 64), jnp.bfloat16, seed=6)
    d, s, gs = K.nvfp4_quantize(x, interpret=True)
    qt = qtensor.QTensor(d, s, gs, NV1, tuple(x.shape), str(x.dtype))
    _eq(qtensor.dequantize(qt), nx.nvfp4_fake_quant(x))


def test_interpret_rejects_gpu_division():
    with pytest.raises(ValueError):
        K.nvfp4_quantize(jnp.ones((4, 32)), interpret=True, div_mode="markstein")
