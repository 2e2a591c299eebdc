"""Real-quantized storage: dequantize(quantize(x)) equals fake quantization exactly, for every format."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jq.config import QuantizerSpec
from jq.qtensor import QTensor, dequantize, quantize
from jq.quantizer import compute_amax, fake_quant_reference

SPECS = {
    "int8_tensor": QuantizerSpec(num_bits=8),
    "int8_axis0": QuantizerSpec(num_bits=8, axis=0),
    "uint8": QuantizerSpec(num_bits=8, unsigned=True),
    "int4_b16": QuantizerSpec(num_bits=4, block_sizes={-1: 16}),
    "int4_b128_narrow": QuantizerSpec(num_bits=4, block_sizes={-1: 128}, narrow_range=True),
    "int3_axis0": QuantizerSpec(num_bits=3, axis=0),
    "int8_dynamic": QuantizerSpec(num_bits=8, type="dynamic"),
    "e4m3_tensor": QuantizerSpec(num_bits=(4, 3)),
    "e5m2_axis0": QuantizerSpec(num_bits=(5, 2), axis=0),
    "e4m3_2d128": QuantizerSpec(num_bits=(4, 3), block_sizes={-1: 128, -2: 128}),
    "e4m3_per_token": QuantizerSpec(num_bits=(4, 3), type="dynamic", block_sizes={-1: None}),
    "nvfp4": QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, "type": "dynamic", "scale_bits": (4, 3)}),
    "nvfp4_2d": QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, -2: 16, "type": "dynamic", "scale_bits": (4, 3)}),
    "mxfp8": QuantizerSpec(num_bits=(4, 3), block_sizes={-1: 32, "type": "dynamic", "scale_bits": (8, 0)}),
    "mxfp4": QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 32, "type": "dynamic", "scale_bits": (8, 0)}),
    "mxint8": QuantizerSpec(num_bits=8, block_sizes={-1: 32, "type": "dynamic", "scale_bits": (8, 0)}),
}


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("shape", [(6, 40), (130, 200)], ids=["ragged_small", "ragged_large"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dequantize_quantize_equals_fake_quant(name, shape, dtype, rng):
    spec = SPECS[name]
    x = jnp.asarray(rng.standard_normal(shape) * 3, dtype)
    if spec.unsigned:
        x = jnp.abs(x)
    amax = compute_amax(x, spec)
    qt = quantize(x, spec, amax)
    want = np.asarray(fake_quant_reference(x, spec, amax), np.float32)
    np.testing.assert_array_equal(np.asarray(dequantize(qt), np.float32), want)
    assert dequantize(qt).dtype == dtype and dequantize(qt).shape == shape


def test_storage_types_and_sizes(rng):
    x = jnp.asarray(rng.standard_normal((64, 256)), jnp.float32)
    nv = quantize(x, SPECS["nvfp4"])
    assert nv.data.dtype == jnp.uint8 and nv.data.shape == (64, 128)
    assert nv.scale.dtype == jnp.float8_e4m3fn and nv.scale.shape == (64, 16)
    assert nv.nbytes == 64 * 128 + 64 * 16 + 4  # 4.5 bits per element + one fp32
    assert quantize(x, SPECS["int4_b16"]).data.shape == (64, 128)
    assert quantize(x, SPECS["e4m3_tensor"]).data.dtype == jnp.float8_e4m3fn
    assert quantize(x, SPECS["mxfp4"]).scale.dtype == jnp.uint8
    assert quantize(x, SPECS["int8_axis0"]).data.dtype == jnp.int8


def test_qtensor_is_a_pytree_and_jittable(rng):
    x = jnp.asarray(rng.standard_normal((8, 32)), jnp.float32)
    qt = jax.jit(lambda v: quantize(v, SPECS["nvfp4"]))(x)
    assert isinstance(qt, QTensor)
    leaves = jax.tree_util.tree_leaves(qt)
    assert len(leaves) == 3
    np.testing.assert_array_equal(jax.jit(dequantize)(qt), dequantize(quantize(x, SPECS["nvfp4"])))


def test_int4_nibbles_are_twos_complement_low_first():
    spec = QuantizerSpec(num_bits=4)
    qt = quantize(jnp.array([[-8 / 7, 7 / 7, -1 / 7, 0.0]]), spec, jnp.float32(1.0))
    # codes -8 -> 0x8, 7 -> 0x7, -1 -> 0xF, 0 -> 0x0; element 0 in the low nibble
    np.testing.assert_array_equal(qt.data, [[0x78, 0x0F]])
