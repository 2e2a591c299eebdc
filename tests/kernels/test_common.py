"""Bit-trick helpers of jq_kernels/_common.py equal the jq.numerics rounding rules on every input class."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jq import numerics as nx
from jq_kernels import _common as C


def _all_bf16_magnitudes():
    b = np.arange(0x8000, dtype=np.uint16).view(jnp.bfloat16).astype(np.float32)
    return jnp.asarray(b[np.isfinite(b)])


@pytest.mark.parametrize("fmt,fn,top", [(nx.E4M3, C.e4m3_round, 448.0), (nx.E2M1, C.e2m1_round, 6.0)])
def test_magic_round_matches_reference(fmt, fn, top):
    a = jnp.concatenate([_all_bf16_magnitudes(), jnp.asarray(np.random.default_rng(0).uniform(0, top, 100000),
                                                             jnp.float32)])
    a = jnp.minimum(a, top)
    got = jax.jit(fn)(a)
    ref = jax.jit(lambda v: nx.round_to_minifloat(v, fmt))(a)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))


def test_e2m1_index_and_e4m3_bits():
    grid = jnp.asarray(nx.E2M1_GRID)
    np.testing.assert_array_equal(np.asarray(C.e2m1_index(grid)), np.arange(8))
    vals = np.arange(0, 127, dtype=np.uint8).view(jnp.float8_e4m3fn).astype(np.float32)  # every positive code
    bits = np.asarray(jax.jit(C.e4m3_bits_from_value)(jnp.asarray(vals)))
    np.testing.assert_array_equal(bits, np.arange(0, 127))
    allc = jnp.arange(256, dtype=jnp.int32)
    dec = np.asarray(jax.jit(C.e4m3_value_from_bits)(allc))
    ref = np.arange(256, dtype=np.uint8).view(jnp.float8_e4m3fn).astype(np.float32)
    ok = ~np.isnan(ref)
    np.testing.assert_array_equal(dec[ok], ref[ok])


@pytest.mark.parametrize("n,want", [(63000, 512), (1 << 20, 512), (5, 512), (257, 32), (64, 32), (1, 512)])
def test_pick_block(n, want):
    b, npad = C.pick_block(n, want)
    assert b & (b - 1) == 0 and b <= max(want, 1) and npad % b == 0 and npad >= n
    assert npad - n < b


def test_hash_is_deterministic_uint32():
    x = jnp.arange(1000, dtype=jnp.uint32)
    h = C.hash_u32(x)
    assert h.dtype == jnp.uint32 and len(np.unique(np.asarray(h))) == 1000
    np.testing.assert_array_equal(np.asarray(h), np.asarray(jax.jit(C.hash_u32)(x)))
