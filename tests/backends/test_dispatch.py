"""Dispatch (jq.backends): CPU -> reference, GPU -> kernels where they support the case, user pins, JQ_KERNELS."""

import jax.numpy as jnp
import pytest

from jq import backends
from jq.config import QuantizerSpec
from jq.formats.linear import FP8Linear, W4A16Linear
from jq.quantizer import CanonicalView

NV1 = QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, "type": "dynamic", "scale_bits": (4, 3)})
NV_ROT = NV1.replace(rotate=True)
FP8 = QuantizerSpec(num_bits=(4, 3))
FP8_CH = QuantizerSpec(num_bits=(4, 3), axis=0)
FP8_TOK = QuantizerSpec(num_bits=(4, 3), block_sizes={-1: None, "type": "dynamic"})
INT8 = QuantizerSpec(num_bits=8)
INT4 = QuantizerSpec(num_bits=4, block_sizes={-1: 128})


def _ctx(shape=(64, 256), dtype=jnp.bfloat16, view=None):
    return dict(view=view or CanonicalView.identity(shape), shape=shape, dtype=dtype, has_amax=True)


def test_cpu_always_reference():
    for spec in (NV1, FP8, INT8):
        assert backends.select("fake_quant", spec, "cpu", **_ctx()).name == "reference"


def test_gpu_kernels_where_supported():
    assert backends.select("fake_quant", NV1, "gpu", **_ctx()).name == "pallas_triton"
    assert backends.select("fake_quant", FP8, "gpu", **_ctx()).name == "pallas_triton"
    assert backends.select("fake_quant", FP8_CH, "gpu", **_ctx()).name == "pallas_triton"
    assert backends.select("fake_quant", FP8_TOK, "gpu", **_ctx()).name == "pallas_triton"
    # not served by a kernel: rotation, batch axes, tiny tensors, int formats, odd dtypes
    assert backends.select("fake_quant", NV_ROT, "gpu", **_ctx()).name == "reference"
    batched = CanonicalView((0, 1, 2), (2, 64, 256), batch=1)
    assert backends.select("fake_quant", NV1, "gpu", **_ctx((2, 64, 256), view=batched)).name == "reference"
    assert backends.select("fake_quant", NV1, "gpu", **_ctx((4, 16))).name == "reference"
    assert backends.select("fake_quant", INT8, "gpu", **_ctx()).name == "reference"
    assert backends.select("fake_quant", FP8, "gpu", **_ctx(dtype=jnp.int32)).name == "reference"


def test_user_pin_and_env(monkeypatch):
    with backends.pinned("fake_quant", "nvfp4", "gpu", "reference"):
        assert backends.select("fake_quant", NV1, "gpu", **_ctx()).name == "reference"
    assert backends.select("fake_quant", NV1, "gpu", **_ctx()).name == "pallas_triton"
    monkeypatch.setenv("JQ_KERNELS", "reference")
    assert backends.select("fake_quant", NV1, "gpu", **_ctx()).name == "reference"
    with pytest.raises(ValueError):
        backends.use("fake_quant", "nvfp4", "gpu", "no_such_kernel")
        backends.select("fake_quant", NV1, "gpu", **_ctx())
    backends.use("fake_quant", "nvfp4", "gpu", None)


def test_quantize_ops_registered_and_round_trip():
    assert backends.select("quantize", NV1, "gpu", shape=(64, 256), dtype=jnp.bfloat16).name == "pallas_triton"
    assert backends.select("quantize", NV1, "cpu", shape=(64, 256), dtype=jnp.bfloat16).name == "reference"
    x = jnp.ones((32, 64), jnp.float32)
    qt = backends.quantize(x, NV1, platform_="cpu")
    assert qt.data.shape == (32, 32)
    assert jnp.allclose(backends.dequantize(qt, platform_="cpu"), x)


def test_every_format_has_a_reference_for_every_op():
    from jq import formats
    for fmt in formats.FORMATS:
        for op in ("fake_quant", "quantize", "dequantize"):
            for plat in backends.PLATFORMS:
                assert "reference" in backends.registry().candidates(op, fmt.name, plat)


def test_formats_offer_linear_kernels():
    """The weight's format picks the real-quantized linear layer (jq.deploy serves sites with it)."""
    assert NV1.format.linear_kernel(NV1, None) == W4A16Linear("nvfp4")
    assert NV1.format.linear_kernel(NV1, NV1).name == "nvfp4_w4a16"
    assert INT4.format.linear_kernel(INT4, None).name == "int4_w4a16"
    assert FP8.format.linear_kernel(FP8, FP8) == FP8Linear()
    assert FP8.format.linear_kernel(FP8, None) is None  # weight-only FP8 has no kernel yet
    assert INT8.format.linear_kernel(INT8, INT8) is None
