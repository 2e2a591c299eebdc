"""MX kernels in interpret mode equal jq.numerics / jq.qtensor bit for bit: quantize, fused fake-quant, dequantize."""

import jax.numpy as jnp
import numpy as np
import pytest

from jq import numerics as nx
from jq import qtensor
from jq.config import QuantizerSpec
from jq_kernels import mx as MX


def _u8(a):
    return np.asarray(a).view(np.uint8)


def _bits_equal(a, b):
    """Same dtype, shape and bits (signed zeros and NaN payloads included)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    np.testing.assert_array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))


MXS = {f: QuantizerSpec(num_bits={"mxfp8": (4, 3), "mxfp4": (2, 1), "mxint8": 8}[f],
                        block_sizes={-1: 32, "type": "dynamic", "scale_bits": (8, 0)})
       for f in ("mxfp8", "mxfp4", "mxint8")}


@pytest.mark.parametrize("fmt", sorted(MXS))
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("shape", [(8, 64), (3, 7, 33)])
def test_mx_quantize(fmt, dtype, shape):
    x = jnp.asarray(np.random.default_rng(2).standard_normal(shape) * 3, dtype)
    x = x.at[0].set(0)  # an all-zero block: scale 2^-127
    d, s = MX.mx_quantize(x, fmt, interpret=True)
    qt = qtensor.quantize(x, MXS[fmt])
    np.testing.assert_array_equal(_u8(d), _u8(qt.data))
    np.testing.assert_array_equal(np.asarray(s), np.asarray(qt.scale))


@pytest.mark.parametrize("fmt", sorted(MXS))
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.float16])
@pytest.mark.parametrize("shape", [(8, 64), (3, 7, 33), (40,)])
def test_mx_fake_quant_matches_reference(fmt, dtype, shape):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal(shape) * 3, dtype)
    x = x.reshape(-1).at[:32].set(0).at[33].set(-0.0).reshape(shape)  # an all-zero block, a negative zero
    _bits_equal(MX.mx_fake_quant(x, fmt, interpret=True), nx.mx_fake_quant(x, nx.MX_FORMATS[fmt]))


@pytest.mark.parametrize("fmt", sorted(MXS))
def test_mx_fake_quant_all_bf16_patterns(fmt):
    """Every finite bf16 value, in blocks whose amax spans the whole exponent range (k from -127 to 127)."""
    b = np.arange(65536, dtype=np.uint16).view(jnp.bfloat16).reshape(-1, 32)
    x = jnp.where(jnp.isfinite(jnp.asarray(b)), jnp.asarray(b), 0).astype(jnp.bfloat16)
    _bits_equal(MX.mx_fake_quant(x, fmt, interpret=True), nx.mx_fake_quant(x, nx.MX_FORMATS[fmt]))


@pytest.mark.parametrize("fmt", sorted(MXS))
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("shape", [(8, 64), (3, 7, 33)])
def test_mx_dequantize_matches_qtensor(fmt, dtype, shape):
    x = jnp.asarray(np.random.default_rng(4).standard_normal(shape) * 5, dtype).at[0].set(0)
    d, s = MX.mx_quantize(x, fmt, interpret=True)
    qt = qtensor.quantize(x, MXS[fmt])
    _bits_equal(MX.mx_dequantize(d, s, x.shape, fmt, dtype=dtype, interpret=True), qtensor.dequantize(qt))
    if fmt != "mxfp4":  # the uint8 bits of the values are accepted too
        _bits_equal(MX.mx_dequantize(np.asarray(d).view(np.uint8), s, x.shape, fmt, dtype=dtype, interpret=True),
                    qtensor.dequantize(qt))


def test_mx_dequantize_nan_code_and_extreme_scales():
    """E4M3FN NaN codes stay NaN; scales 0 and 254 (2^-127, 2^127) as the reference's ldexp."""
    d = np.zeros((2, 32), np.uint8)
    d[0, :4] = [0x7F, 0xFF, 0x01, 0x7E]
    d[1, :4] = [0x08, 0x80, 0x3F, 0x70]
    data = jnp.asarray(d.view(jnp.float8_e4m3fn))
    scales = jnp.asarray([[0], [254]], jnp.uint8)
    y = MX.mx_dequantize(data, scales, (2, 32), "mxfp8", dtype=jnp.float32, interpret=True)
    qt = qtensor.QTensor(data, scales, None, MXS["mxfp8"], (2, 32), "float32")
    _bits_equal(y, qtensor.dequantize(qt))
    assert np.all(np.isnan(np.asarray(y)[0, :2]))


def test_mx_rejects_unknown_format_and_bad_storage():
    with pytest.raises(ValueError, match="mx_fake_quant"):
        MX.mx_fake_quant(jnp.ones((2, 32)), "mxfp6")
    d, s = MX.mx_quantize(jnp.ones((2, 64)), "mxfp8", interpret=True)
    with pytest.raises(ValueError, match="do not hold"):
        MX.mx_dequantize(d, s[:, :1], (2, 64), "mxfp8", interpret=True)
    with pytest.raises(ValueError, match="do not hold"):
        MX.mx_dequantize(d, s, (2, 20), "mxfp8", interpret=True)
