"""MX formats: E8M0 scale exponents, element rounding, zero blocks."""

import jax.numpy as jnp
import numpy as np
import pytest

from jq.numerics import MXFP4, MXFP8, MXINT8, e8m0_exponent, mx_fake_quant, mx_quantize


@pytest.mark.parametrize("amax,dmax,want", [
    (448.0, 448.0, 0), (449.0, 448.0, 1), (224.0, 448.0, -1), (300.0, 448.0, 0),
    (6.0, 6.0, 0), (6.1, 6.0, 1), (7.0, 6.0, 1), (12.0, 6.0, 1), (127.0, 127.0, 0), (0.0, 6.0, -127),
    (1e38, 6.0, 124), (1e-40, 6.0, -127),
])
def test_e8m0_exponent_is_ceil_log2_of_amax_over_dmax(amax, dmax, want):
    assert int(e8m0_exponent(jnp.float32(amax), dmax)) == want


def test_scale_keeps_block_max_in_range(rng):
    x = jnp.asarray(rng.standard_normal((4, 64)) * 50, jnp.float32)
    for fmt in (MXFP8, MXFP4, MXINT8):
        q, k, _ = mx_quantize(x, fmt)
        assert float(jnp.max(jnp.abs(q))) <= fmt.dmax


def test_mxfp4_ties_round_to_even():
    # ModelOpt's MXFP4QTensor rounds exact ties toward zero (0.75 -> 0.5); jq follows OCP: ties to even
    x = jnp.array([6.0, 0.75, 1.75, 3.5, 2.5] + [0.0] * 27)
    np.testing.assert_array_equal(mx_fake_quant(x, MXFP4)[:5], [6.0, 1.0, 2.0, 4.0, 2.0])


def test_mxint8_reference_values():
    x = jnp.array([1.0, 0.5, -0.25, 0.3] + [0.0] * 28)  # amax 1: k = ceil(log2(1/127)) = -6, s = 1/64
    y = np.asarray(mx_fake_quant(x, MXINT8))
    np.testing.assert_array_equal(y[:4], [1.0, 0.5, -0.25, np.round(0.3 * 64) / 64])


def test_zero_block_and_ragged_last_block(rng):
    x = jnp.asarray(rng.standard_normal((2, 40)), jnp.float32).at[0, :32].set(0)
    y = mx_fake_quant(x, MXFP8)
    assert y.shape == (2, 40)
    np.testing.assert_array_equal(y[0, :32], 0)
    assert np.isfinite(np.asarray(y)).all()
