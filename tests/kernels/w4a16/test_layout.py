"""pack_w4: the decode GEMM's weight layout, bit for bit the pre-split layout (golden of commit e520b16), its scale
bytes, and its input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jq_kernels.w4a16 import layout as L
from jq_kernels.w4a16.emulate import bf16_bits_to_f32
from tests.kernels.w4a16 import golden
from tests.kernels.w4a16._weights import I4, NV1, packed, quantize, weight

ARRAYS, META = golden.load()


@pytest.mark.parametrize("case", META["cases"], ids=lambda c: c["key"])
def test_pack_w4_matches_pre_split_golden(case):
    pw = golden.pack_case(ARRAYS, case)
    assert (pw.fmt, pw.n, pw.k, pw.dtype) == (case["fmt"], case["n"], case["k"], case["dtype"])
    for field in ("codes", "scales", "factor"):
        got, want = np.asarray(getattr(pw, field)), ARRAYS[f"{case['key']}/{field}"]
        assert got.dtype == want.dtype and got.shape == want.shape, field
        np.testing.assert_array_equal(got.reshape(-1).view(np.uint8), want.reshape(-1).view(np.uint8), field)


def test_bf16_scale_bytes_match_pre_split_golden():
    v = jax.lax.bitcast_convert_type(jnp.arange(256, dtype=jnp.uint8), jnp.float8_e4m3fn).astype(jnp.float32)
    np.testing.assert_array_equal(np.asarray(L.bf16_scale_bytes(v)), ARRAYS["bf16_scale_bytes_all_e4m3"])


def test_bf16_scale_bytes_cover_e4m3():
    v = jax.lax.bitcast_convert_type(jnp.arange(256, dtype=jnp.uint8), jnp.float8_e4m3fn).astype(jnp.float32)
    byte = np.asarray(L.bf16_scale_bytes(v)).astype(np.uint32)
    assert byte.max() < 256
    got = bf16_bits_to_f32(((byte << 4) + (L.BF16_SCALE_BIAS << 7)) & 0xFFFF)
    vv = np.asarray(v)
    ok = (vv > 0) & np.isfinite(vv)
    np.testing.assert_array_equal(got[ok], vv[ok] * np.float32(2.0**119))
    assert np.all(np.isnan(got[np.isnan(vv)]))


def test_thread_coords_cover_each_chunk_element_once():
    rows, cols = L.thread_coords()
    assert sorted(zip(rows.reshape(-1), cols.reshape(-1))) == [(r, c) for r in range(64) for c in range(16)]


def test_uint8_scale_bits_pack_like_e4m3_scales():
    qt = quantize(weight((64, 128), 0), NV1)
    bits = jax.lax.bitcast_convert_type(qt.scale, jnp.uint8)
    for dtype in ("f16", "bf16"):
        a = packed(qt, dtype)
        b = L.pack_w4(qt.data, bits, qt.global_scale, fmt="nvfp4", shape=qt.shape, dtype=dtype)
        np.testing.assert_array_equal(np.asarray(a.codes), np.asarray(b.codes))
        np.testing.assert_array_equal(np.asarray(a.scales), np.asarray(b.scales))


def test_padding_rounds_n_to_64_and_k_to_128():
    pw = packed(quantize(weight((70, 200), 1), I4), "f16")
    assert pw.codes.shape == (2, 16, 128) and pw.scales.shape == (2, 2, 32) and (pw.n, pw.k) == (70, 200)


def test_rejects_bad_arguments():
    nv = quantize(weight((64, 128), 2), NV1)
    i4 = quantize(weight((64, 128), 2), I4)
    with pytest.raises(ValueError, match="fmt"):
        L.pack_w4(nv.data, nv.scale, nv.global_scale, fmt="nvfp8", shape=nv.shape)
    with pytest.raises(ValueError, match="dtype"):
        L.pack_w4(nv.data, nv.scale, nv.global_scale, fmt="nvfp4", shape=nv.shape, dtype="f32")
    with pytest.raises(ValueError, match="2D"):
        L.pack_w4(nv.data, nv.scale, nv.global_scale, fmt="nvfp4", shape=(1, 64, 128))
    with pytest.raises(ValueError, match="global scale"):
        L.pack_w4(nv.data, nv.scale, None, fmt="nvfp4", shape=nv.shape)
    with pytest.raises(ValueError, match="codes"):  # INT4 codes must be padded to the 128-element block
        L.pack_w4(i4.data[:, :40], i4.scale, None, fmt="int4", shape=(64, 80))
    with pytest.raises(ValueError, match="one per 16"):  # 2D (16x16) NVFP4 blocks: one scale row per 16 rows
        L.pack_w4(nv.data, nv.scale[:4], nv.global_scale, fmt="nvfp4", shape=nv.shape)
    with pytest.raises(ValueError, match="one per 128"):
        L.pack_w4(i4.data, jnp.ones((64, 2)), None, fmt="int4", shape=i4.shape)
