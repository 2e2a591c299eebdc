"""Dispatch: CPU -> reference, GPU -> kernels where they support the case, user pins, JQ_KERNELS=reference."""

import jax.numpy as jnp
import pytest

from jq import real_quantize
from jq.config import QuantizerSpec
from jq.quantizer import CanonicalView
from kernels import registry

NV1 = QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, "type": "dynamic", "scale_bits": (4, 3)})
NV_ROT = NV1.replace(rotate=True)
FP8 = QuantizerSpec(num_bits=(4, 3))
FP8_CH = QuantizerSpec(num_bits=(4, 3), axis=0)
FP8_TOK = QuantizerSpec(num_bits=(4, 3), block_sizes={-1: None, "type": "dynamic"})
INT8 = QuantizerSpec(num_bits=8)


def _ctx(spec, shape=(64, 256), dtype=jnp.bfloat16, view=None):
    return dict(spec=spec, view=view or CanonicalView.identity(shape), shape=shape, dtype=dtype, has_amax=True)


def test_cpu_always_reference():
    for spec in (NV1, FP8, INT8):
        assert registry.select("fake_quant", spec.kind, "cpu", **_ctx(spec)).name == "reference"


def test_gpu_kernels_where_supported():
    assert registry.select("fake_quant", "nvfp4", "gpu", **_ctx(NV1)).name == "pallas_triton"
    assert registry.select("fake_quant", "fp8", "gpu", **_ctx(FP8)).name == "pallas_triton"
    assert registry.select("fake_quant", "fp8", "gpu", **_ctx(FP8_CH)).name == "pallas_triton"
    assert registry.select("fake_quant", "fp8", "gpu", **_ctx(FP8_TOK)).name == "pallas_triton"
    # not served by a kernel: rotation, batch axes, tiny tensors, int formats, odd dtypes
    assert registry.select("fake_quant", "nvfp4", "gpu", **_ctx(NV_ROT)).name == "reference"
    batched = CanonicalView((0, 1, 2), (2, 64, 256), batch=1)
    assert registry.select("fake_quant", "nvfp4", "gpu", **_ctx(NV1, (2, 64, 256), view=batched)).name == "reference"
    assert registry.select("fake_quant", "nvfp4", "gpu", **_ctx(NV1, (4, 16))).name == "reference"
    assert registry.select("fake_quant", "int", "gpu", **_ctx(INT8)).name == "reference"
    assert registry.select("fake_quant", "fp8", "gpu", **_ctx(FP8, dtype=jnp.int32)).name == "reference"


def test_user_pin_and_env(monkeypatch):
    with registry.pinned("fake_quant", "nvfp4", "gpu", "reference"):
        assert registry.select("fake_quant", "nvfp4", "gpu", **_ctx(NV1)).name == "reference"
    assert registry.select("fake_quant", "nvfp4", "gpu", **_ctx(NV1)).name == "pallas_triton"
    monkeypatch.setenv("JQ_KERNELS", "reference")
    assert registry.select("fake_quant", "nvfp4", "gpu", **_ctx(NV1)).name == "reference"
    assert registry.select("w4a16_matmul", "nvfp4", "gpu").name == "xla"
    with pytest.raises(ValueError):
        registry.use("fake_quant", "nvfp4", "gpu", "no_such_kernel")
        registry.select("fake_quant", "nvfp4", "gpu", **_ctx(NV1))
    registry.use("fake_quant", "nvfp4", "gpu", None)


def test_matmul_and_quantize_ops_registered():
    assert registry.select("w4a16_matmul", "nvfp4", "gpu").name == "mosaic"
    assert registry.select("w4a16_matmul", "int4", "cpu").name == "xla"
    assert registry.select("fp8_matmul", "fp8", "gpu").name == "xla_cublaslt"
    assert registry.select("quantize", "nvfp4", "gpu", spec=NV1, shape=(64, 256), dtype=jnp.bfloat16).name \
        == "pallas_triton"
    assert registry.select("quantize", "nvfp4", "cpu", spec=NV1, shape=(64, 256), dtype=jnp.bfloat16).name \
        == "reference"
    x = jnp.ones((32, 64), jnp.float32)
    qt = real_quantize.quantize(x, NV1, backend="cpu")
    assert qt.data.shape == (32, 32)
    assert jnp.allclose(real_quantize.dequantize(qt, backend="cpu"), x)
