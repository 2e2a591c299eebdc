"""Real-quantized matmuls on CPU: the decode-GEMM weight layout + in-register decode (emulated bit for bit),
the XLA W4A16 and FP8 paths, and that the Mosaic GPU kernel lowers (the Python half of its compilation)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jq import numerics as nx
from jq import qtensor
from jq.config import QuantizerSpec
from kernels import gemm as G

NV1 = QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, "type": "dynamic", "scale_bits": (4, 3)})
I4 = QuantizerSpec(num_bits=4, block_sizes={-1: 128})


@pytest.mark.parametrize("shape", [(200, 300), (128, 256)])
def test_nvfp4_layout_decode_is_exact(shape):
    w = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
    qt = qtensor.quantize(w, NV1)
    pw = G.pack_w4(qt)
    n, k = shape
    emu = G.emulate_decode(pw)  # f16 fragments: code * 2^-14 * e4m3 scale, exact
    assert np.all(emu[n:] == 0) and np.all(emu[:, k:] == 0)
    # the kernel's result = emu * (gs * 2^14): equal to q * s * gs, the dequantized weight, to one f32 rounding
    q = np.asarray(nx.e2m1_decode(nx.unpack_nibbles(qt.data)), np.float64)[:, :k]
    s = np.repeat(np.asarray(qt.scale.astype(jnp.float32), np.float64), 16, axis=1)[:, :k]
    exact = q * s * float(qt.global_scale)
    np.testing.assert_array_equal(emu[:n, :k].astype(np.float64) * 2.0**14, q * s)
    np.testing.assert_allclose(emu[:n, :k] * np.float32(pw.factor), exact, rtol=6e-8, atol=0)  # one rounding
    # the reference dequantizes as q * fl(s * gs): two roundings (the GEMM's result is the more exact one)
    np.testing.assert_allclose(np.asarray(qtensor.dequantize(qt)), exact, rtol=1.2e-7, atol=0)


def test_int4_layout_decode():
    w = jnp.asarray(np.random.default_rng(1).standard_normal((192, 256)), jnp.float32)
    qt = qtensor.quantize(w, I4, None)
    pw = G.pack_w4(qt)
    emu = G.emulate_decode(pw)[:192, :256]
    ref = np.asarray(qtensor.dequantize(qt))
    # f16 group scale (amax/7 rounded to f16) and f16 product: relative error <= 2^-10
    np.testing.assert_allclose(emu, ref, rtol=2e-3, atol=1e-6)


def test_xla_paths_match_dequantized_dot():
    rng = np.random.default_rng(2)
    w = jnp.asarray(rng.standard_normal((96, 256)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((5, 256)), jnp.bfloat16)
    for spec in (NV1, I4):
        qt = qtensor.quantize(w, spec)
        ref = x.astype(jnp.float32) @ qtensor.dequantize(qt, jnp.bfloat16).astype(jnp.float32).T
        y = G.w4a16_matmul_xla(x, qt, out_dtype=jnp.float32)
        np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-4)
    qt = qtensor.quantize(w, I4)
    wi, inv = G.int4_xla_weights(qt)
    y = G.w4a16_matmul_xla_int4(x, wi, inv, out_dtype=jnp.float32)
    ref = x.astype(jnp.float32) @ qtensor.dequantize(qt, jnp.float32).T
    assert float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref)) < 1e-2


def test_fp8_linear_equals_fake_quant_dot():
    rng = np.random.default_rng(3)
    w = jnp.asarray(rng.standard_normal((64, 128)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((4, 128)), jnp.float32)
    wq, winv = G.prepare_fp8_weight(w, jnp.max(jnp.abs(w)))
    y = G.fp8_linear(x, wq, winv, jnp.float32(2.0), out_dtype=jnp.float32)
    ref = nx.fp8_fake_quant(x, jnp.float32(2.0)) @ nx.fp8_fake_quant(w, jnp.max(jnp.abs(w))).T
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", [NV1, I4], ids=["nvfp4", "int4"])
@pytest.mark.parametrize("b,cfg", [(4, G.MosaicConfig()), (33, G.MosaicConfig(rows=1, split_k=2))])
def test_mosaic_kernel_lowers(spec, b, cfg):
    w = jnp.asarray(np.random.default_rng(4).standard_normal((256, 512)), jnp.float32)
    pw = G.pack_w4(qtensor.quantize(w, spec))
    x = jax.ShapeDtypeStruct((b, 512), jnp.bfloat16)
    txt = jax.jit(lambda x, p: G.w4a16_matmul_mosaic(x, p, cfg)).trace(x, pw).lower(
        lowering_platforms=("cuda",)).as_text()
    assert "mosaic_gpu" in txt
