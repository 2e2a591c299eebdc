"""The in-register decode, emulated bit for bit on the CPU: the weight the kernel multiplies equals the dequantized
weight (NVFP4 exactly; INT4 to the f16/bf16 rounding of its group-scale product), and the emulation of the pre-split
code (golden of commit e520b16)."""

import hashlib

import jax.numpy as jnp
import numpy as np
import pytest

from jq import numerics as nx
from jq import qtensor
from jq_kernels.w4a16 import emulate_decode
from tests.kernels.w4a16 import golden
from tests.kernels.w4a16._weights import I4, NV1, packed, quantize, weight

ARRAYS, META = golden.load()


@pytest.mark.parametrize("case", META["cases"], ids=lambda c: c["key"])
def test_emulation_matches_pre_split_golden(case):
    emu = np.ascontiguousarray(emulate_decode(golden.pack_case(ARRAYS, case)), np.float32)
    assert hashlib.sha256(emu.tobytes()).hexdigest() == META["emulate_sha256"][case["key"]]


def _codes_and_scales(qt, k):
    q = np.asarray(nx.e2m1_decode(nx.unpack_nibbles(qt.data)), np.float64)[:, :k]
    s = np.repeat(np.asarray(qt.scale.astype(jnp.float32), np.float64), 16, axis=1)[:, :k]
    return q, s


@pytest.mark.parametrize("shape", [(200, 300), (128, 256)])
def test_nvfp4_f16_decode_is_exact(shape):
    qt = quantize(weight(shape, 0), NV1)
    pw = packed(qt, "f16")
    n, k = shape
    emu = emulate_decode(pw)  # f16 fragments: code * 2^-14 * e4m3 scale, exact
    assert np.all(emu[n:] == 0) and np.all(emu[:, k:] == 0)
    # the kernel's result = emu * (gs * 2^14): equal to q * s * gs, the dequantized weight, to one f32 rounding
    q, s = _codes_and_scales(qt, k)
    exact = q * s * float(qt.global_scale)
    np.testing.assert_array_equal(emu[:n, :k].astype(np.float64) * 2.0**14, q * s)
    np.testing.assert_allclose(emu[:n, :k] * np.float32(pw.factor), exact, rtol=6e-8, atol=0)  # one rounding
    # the reference dequantizes as q * fl(s * gs): two roundings (the GEMM's result is the more exact one)
    np.testing.assert_allclose(np.asarray(qtensor.dequantize(qt)), exact, rtol=1.2e-7, atol=0)


@pytest.mark.parametrize("shape", [(200, 300), (128, 256)])
def test_nvfp4_bf16_decode_is_exact(shape):
    """bf16 operands: the decoded fragment is code * s * 2^-7 exactly (subnormal codes, zero blocks included)."""
    qt = quantize(weight(shape, 5).at[1, 16:32].set(0.0), NV1)
    pw = packed(qt, "bf16")
    n, k = shape
    emu = emulate_decode(pw)
    assert np.all(emu[n:] == 0) and np.all(emu[:, k:] == 0)
    q, s = _codes_and_scales(qt, k)
    assert np.any(np.abs(q) == 0.5)
    np.testing.assert_array_equal(emu[:n, :k].astype(np.float64) * 2.0**7, q * s)
    np.testing.assert_allclose(emu[:n, :k] * np.float32(pw.factor), q * s * float(qt.global_scale), rtol=6e-8, atol=0)


def test_int4_bf16_decode():
    qt = quantize(weight((192, 256), 1), I4)
    emu = emulate_decode(packed(qt, "bf16"))[:192, :256]
    # bf16 group scale and bf16 product: relative error <= 2^-8 (the XLA reference rounds the product to bf16 too)
    np.testing.assert_allclose(emu, np.asarray(qtensor.dequantize(qt)), rtol=8e-3, atol=1e-6)


def test_int4_f16_decode():
    qt = quantize(weight((192, 256), 1), I4)
    emu = emulate_decode(packed(qt, "f16"))[:192, :256]
    # f16 group scale (amax/7 rounded to f16) and f16 product: relative error <= 2^-10
    np.testing.assert_allclose(emu, np.asarray(qtensor.dequantize(qt)), rtol=2e-3, atol=1e-6)
