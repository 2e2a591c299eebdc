"""Every format keeps the protocol's contracts (jq/formats/base.py): resolution, round trips, geometry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jq import formats
from jq.config import QuantizerSpec
from jq.qtensor import dequantize, quantize
from jq.quantizer import fake_quant_reference

NV = {"type": "dynamic", "scale_bits": (4, 3)}
MX = {-1: 32, "type": "dynamic", "scale_bits": (8, 0)}
SPECS = {
    "int8 per tensor": (QuantizerSpec(num_bits=8), "int"),
    "int8 per channel": (QuantizerSpec(num_bits=8, axis=0), "int"),
    "uint4 blocks": (QuantizerSpec(num_bits=4, unsigned=True, block_sizes={-1: 16}), "int"),
    "int4 blocks": (QuantizerSpec(num_bits=4, block_sizes={-1: 16}), "int"),
    "int8 dynamic per token": (QuantizerSpec(num_bits=8, block_sizes={-1: None, "type": "dynamic"}), "int"),
    "e4m3 per tensor": (QuantizerSpec(num_bits=(4, 3)), "fp8"),
    "e5m2 per channel": (QuantizerSpec(num_bits=(5, 2), axis=0), "fp8"),
    "e4m3 2d blocks": (QuantizerSpec(num_bits=(4, 3), block_sizes={-1: 16, -2: 16}), "fp8"),
    "nvfp4": (QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, **NV}), "nvfp4"),
    "nvfp4 2d": (QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, -2: 16, **NV}), "nvfp4"),
    "nvfp4 dynamic global": (QuantizerSpec(num_bits=(2, 1), type="dynamic", block_sizes={-1: 16, **NV}), "nvfp4"),
    "mxfp8": (QuantizerSpec(num_bits=(4, 3), block_sizes=MX), "mxfp8"),
    "mxfp4": (QuantizerSpec(num_bits=(2, 1), block_sizes=MX), "mxfp4"),
    "mxint8": (QuantizerSpec(num_bits=8, block_sizes=MX), "mxint8"),
    "mxfp6 e3m2": (QuantizerSpec(num_bits=(3, 2), block_sizes=MX), "mxfp6_e3m2"),
    "mxfp6 e2m3": (QuantizerSpec(num_bits=(2, 3), block_sizes=MX), "mxfp6_e2m3"),
}


def _x(shape=(48, 64), seed=0):
    x = jax.random.normal(jax.random.key(seed), shape) * jnp.exp(jax.random.normal(jax.random.key(seed + 1), shape))
    return x.at[0, :5].set(0.0)


@pytest.mark.parametrize("case", sorted(SPECS))
def test_spec_resolves_once_to_its_format(case):
    spec, name = SPECS[case]
    assert spec.format is formats.by_name(name)
    assert spec.format is spec.format  # cached
    assert [f for f in formats.FORMATS if f.claims(spec)][0] is spec.format


@pytest.mark.parametrize("case", sorted(SPECS))
def test_dequantize_of_quantize_is_fake_quant_bit_for_bit(case):
    spec, _ = SPECS[case]
    x = _x()
    amax = spec.format.compute_amax(x, spec)
    y = fake_quant_reference(x, spec, amax)
    z = dequantize(quantize(x, spec, amax))
    # equal values (integer storage has no -0, so a fake-quantized -0.0 comes back as +0.0)
    assert np.array_equal(np.asarray(y), np.asarray(z), equal_nan=True)


@pytest.mark.parametrize("case", sorted(SPECS))
def test_amax_is_what_the_format_needs(case):
    spec, _ = SPECS[case]
    x = _x()
    amax = spec.format.compute_amax(x, spec)
    assert (amax is not None) == spec.format.needs_amax(spec)
    if amax is not None and spec.block_sizes is None and spec.axis is None:
        assert float(amax) == float(jnp.max(jnp.abs(x)))


@pytest.mark.parametrize("case", sorted(SPECS))
def test_describe_and_bits(case):
    spec, name = SPECS[case]
    assert spec.describe().startswith(spec.format.describe(spec).split()[0])
    assert spec.bits_per_element == spec.format.bits_per_element(spec) > 0


def test_padded_axes_name_the_partial_blocks():
    nv = SPECS["nvfp4"][0]
    assert nv.format.padded_axes(nv, (8, 40)) == (1,)
    assert nv.format.padded_axes(nv, (8, 32)) == ()
    i4 = SPECS["int4 blocks"][0]
    assert i4.format.padded_axes(i4, (8, 20)) == (1,)
    assert SPECS["int8 per tensor"][0].format.padded_axes(SPECS["int8 per tensor"][0], (8, 20)) == ()


def test_no_format_claims_an_unimplemented_spec():
    with pytest.raises(ValueError, match="not a format jq implements"):
        QuantizerSpec(num_bits=(1, 2), block_sizes=MX)


def test_kernel_bindings_are_declared_by_formats():
    names = {f.name: {(b.op, b.platform, b.name) for b in f.kernel_bindings()} for f in formats.FORMATS}
    assert ("fake_quant", "gpu", "pallas_triton") in names["nvfp4"]
    assert ("fake_quant", "gpu", "pallas_triton") in names["fp8"]
    assert ("quantize", "gpu", "pallas_triton") in names["mxfp8"]
    assert names["mxfp6_e3m2"] == set() and names["int"] == set()


def test_hf_algorithms_map_back_to_their_format():
    for fmt in formats.FORMATS:
        for algo in fmt.hf_algorithms:
            assert formats.for_hf_algorithm(algo) is fmt
    with pytest.raises(ValueError, match="unknown quant_algo"):
        formats.for_hf_algorithm("W3A3")


STATIC_NV = QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, "type": "static", "scale_bits": (4, 3)})


def test_static_block_nvfp4_equals_dynamic_at_the_true_block_amax():
    """NVFP4 with calibrated per-block amaxes (what MSE / AWQ-clip calibration produce) is the dynamic format
    when every block amax is the block's own max|x|; a smaller amax clips the block."""
    dynamic = SPECS["nvfp4"][0]
    x = _x()
    block_amax = STATIC_NV.format.compute_amax(x, STATIC_NV)
    assert block_amax.shape == (48, 4) and STATIC_NV.format.needs_amax(STATIC_NV) and not STATIC_NV.is_dynamic
    same = fake_quant_reference(x, STATIC_NV, block_amax)
    assert np.array_equal(np.asarray(same), np.asarray(fake_quant_reference(x, dynamic, jnp.max(jnp.abs(x)))))
    clipped = fake_quant_reference(x, STATIC_NV, block_amax * 0.5)
    assert float(jnp.max(jnp.abs(clipped))) <= float(jnp.max(block_amax)) * 0.5 * (1 + 2 ** -3)
    assert np.array_equal(np.asarray(dequantize(quantize(x, STATIC_NV, block_amax * 0.5))), np.asarray(clipped))
    mask = STATIC_NV.format.clip_mask(x, STATIC_NV, block_amax * 0.5)
    assert 0 < int(mask.sum()) < x.size


def test_static_block_nvfp4_is_weight_only_in_onnx():
    from jq.formats import UnsupportedExport
    assert STATIC_NV.format.onnx_form(STATIC_NV, is_weight=True).granularity == "block"
    with pytest.raises(UnsupportedExport, match="weights only"):
        STATIC_NV.format.onnx_form(STATIC_NV, is_weight=False)
    with pytest.raises(ValueError, match="dynamic global amax"):
        QuantizerSpec(num_bits=(2, 1), type="dynamic", block_sizes={-1: 16, "type": "static", "scale_bits": (4, 3)})
