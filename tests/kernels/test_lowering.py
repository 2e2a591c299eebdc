"""Every Pallas-Triton kernel lowers for CUDA from a CPU-only jax (the Python half of the Triton lowering:
unsupported primitives show up here; interpret mode does not exercise it). The GPU smoke test
(benchmarks/kernel_bench) covers the Triton compiler half."""

import functools

import jax
import jax.numpy as jnp
import pytest

from jq_kernels import fp8 as F
from jq_kernels import mx as MX
from jq_kernels import nvfp4 as K


def _lower(f, *args):
    return jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


CASES = {
    "nvfp4_q1d": functools.partial(K.nvfp4_quantize, interpret=False),
    "nvfp4_q1d_asm": functools.partial(K.nvfp4_quantize, interpret=False, div_mode="asm"),
    "nvfp4_q2d": functools.partial(K.nvfp4_quantize, two_d=True, interpret=False),
    "nvfp4_fake": functools.partial(K.nvfp4_fake_quant, interpret=False),
    "nvfp4_fake2d": functools.partial(K.nvfp4_fake_quant, two_d=True, interpret=False),
    "nvfp4_sr": functools.partial(K.nvfp4_quantize, sr_seed=3, interpret=False),
    "nvfp4_rht_sr": functools.partial(K.nvfp4_fake_quant, rht=True, sr_seed=3, interpret=False),
    "fp8_q": lambda v: F.fp8_quantize(v, 2.0, interpret=False),
    "fp8_q_cast": lambda v: F.fp8_quantize(v, 2.0, cast=True, interpret=False),
    "fp8_fake_row": lambda v: F.fp8_fake_quant(v, jnp.ones((v.shape[0],)), interpret=False),
    "mxfp8": lambda v: MX.mx_quantize(v, "mxfp8", interpret=False),
    "mxfp4": lambda v: MX.mx_quantize(v, "mxfp4", interpret=False),
    "mxfp8_fake": lambda v: MX.mx_fake_quant(v, "mxfp8", interpret=False),
    "mxfp4_fake": lambda v: MX.mx_fake_quant(v, "mxfp4", interpret=False),
    "mxint8_fake": lambda v: MX.mx_fake_quant(v, "mxint8", interpret=False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_triton_lowering(name):
    txt = _lower(CASES[name], jax.ShapeDtypeStruct((128, 1024), jnp.bfloat16))
    assert "triton" in txt


@pytest.mark.parametrize("name", ["nvfp4_q1d", "nvfp4_fake2d", "fp8_q", "mxfp4", "mxfp8_fake"])
def test_triton_lowering_strided_f32(name):  # f32/f16 inputs use the strided-load variant
    assert "triton" in _lower(CASES[name], jax.ShapeDtypeStruct((128, 1024), jnp.float32))


def test_dequant_lowering():
    d = jax.ShapeDtypeStruct((128, 512), jnp.uint8)
    s = jax.ShapeDtypeStruct((128, 64), jnp.float8_e4m3fn)
    assert "triton" in _lower(lambda d, s: K.nvfp4_dequantize(d, s, 1.0, (128, 1024), interpret=False), d, s)
    q = jax.ShapeDtypeStruct((128, 1024), jnp.float8_e4m3fn)
    assert "triton" in _lower(lambda q: F.fp8_dequantize(q, 2.0, interpret=False), q)


@pytest.mark.parametrize("fmt,data", [("mxfp8", ((128, 1024), jnp.float8_e4m3fn)), ("mxint8", ((128, 1024), jnp.int8)),
                                      ("mxfp4", ((128, 512), jnp.uint8))])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_mx_dequant_lowering(fmt, data, dtype):
    d = jax.ShapeDtypeStruct(*data)
    s = jax.ShapeDtypeStruct((128, 32), jnp.uint8)
    fn = functools.partial(MX.mx_dequantize, shape=(128, 1024), fmt=fmt, dtype=dtype, interpret=False)
    assert "triton" in _lower(fn, d, s)
