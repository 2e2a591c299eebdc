"""Integer fake quantization (ModelOpt ``_tensor_quant``): ranges, ties, tiny amax, dtypes."""

import jax.numpy as jnp
import numpy as np
import pytest

from jq.numerics import int_bounds, int_fake_quant, int_quantize


@pytest.mark.parametrize("bits,unsigned,narrow,want", [
    (8, False, False, (-128, 127)), (8, False, True, (-127, 127)), (8, True, False, (0, 255)),
    (4, False, False, (-8, 7)), (2, False, True, (-1, 1)),
])
def test_bounds(bits, unsigned, narrow, want):
    assert int_bounds(bits, unsigned, narrow) == want


def test_reference_values_int4():
    # amax 1, 4 bits: scale 7; 0.3*7 = 2.1 -> 2 -> 2/7; -1*7 = -7; 2.0*7 = 14 -> clamp 7 -> 1
    y = int_fake_quant(jnp.array([0.3, -1.0, 2.0, -2.0]), jnp.float32(1.0), 4)
    np.testing.assert_array_equal(y, np.array([2, -7, 7, -8], np.float32) / np.float32(7))


def test_ties_round_half_to_even():
    q, _ = int_quantize(jnp.array([0.5, 1.5, 2.5, -0.5, -2.5]) / 127, jnp.float32(1.0), 8)
    np.testing.assert_array_equal(q, [0, 2, 2, -0.0, -2])


@pytest.mark.parametrize("amax", [0.0, 2.0**-25, 2.0**-24])
def test_amax_at_or_below_2_pow_minus_24_gives_zeros(amax):
    y = int_fake_quant(jnp.array([1e-8, -3e-8, 5.0]), jnp.float32(amax), 8)
    np.testing.assert_array_equal(y, [0, 0, 0])


def test_amax_just_above_threshold_quantizes_normally():
    x = jnp.array([2.0**-23, -2.0**-24])
    y = np.asarray(int_fake_quant(x, jnp.float32(2.0**-23), 8))
    np.testing.assert_allclose(y, np.asarray(x), rtol=1e-2)


def test_unsigned_clamps_negative_values_to_zero():
    # ModelOpt raises on negative inputs for unsigned quantizers; jq (traced, no data-dependent errors) clamps
    y = int_fake_quant(jnp.array([-1.0, 0.5, 1.0]), jnp.float32(1.0), 8, unsigned=True)
    np.testing.assert_allclose(y, [0.0, 128 / 255, 1.0], rtol=1e-6)


def test_keeps_input_dtype_and_computes_in_float32():
    x = jnp.array([0.1, 0.7, -0.33], jnp.bfloat16)
    y = int_fake_quant(x, jnp.float32(1.0), 8)
    assert y.dtype == jnp.bfloat16
    want = (np.round(np.asarray(x, np.float32) * 127) / np.float32(127)).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(want, np.float32))


def test_per_axis_amax_broadcasts(rng):
    x = jnp.asarray(rng.standard_normal((4, 8)), jnp.float32)
    amax = jnp.max(jnp.abs(x), axis=1, keepdims=True)
    y = np.asarray(int_fake_quant(x, amax, 8))
    for r in range(4):
        np.testing.assert_array_equal(y[r], np.asarray(int_fake_quant(x[r], amax[r, 0], 8)))


@pytest.mark.parametrize("amax", [np.nan, np.inf])
def test_nan_or_inf_amax_never_gives_silent_finite_values(amax):
    # a broken calibration must be visible: the outputs are NaN (calibrate() refuses NaN/inf data earlier)
    from jq.numerics import fp8_fake_quant, nvfp4_fake_quant

    x = jnp.array([0.5, -1.0] + [0.25] * 14)
    for y in (int_fake_quant(x, jnp.float32(amax), 8), fp8_fake_quant(x, jnp.float32(amax)),
              nvfp4_fake_quant(x, jnp.float32(amax))):
        assert np.isnan(np.asarray(y)).all()


def test_scale_is_maxb_over_amax_when_amax_is_a_jit_constant():
    # Regression (issue 11): a closed-over per-channel amax made XLA compute 127 * (1 / amax).
    import jax

    from jq.numerics import int_quant_scale

    amax = np.array([[1.3], [3.0], [6.0], [7.0], [9.0]], np.float32)  # 127 / a != 127 * (1 / a) for each
    got = jax.jit(lambda: int_quant_scale(jnp.asarray(amax), 8))()
    np.testing.assert_array_equal(np.asarray(got), np.float32(127) / amax)


def test_fake_quant_under_jit_with_a_constant_amax_equals_eager(rng):
    import jax

    x = rng.standard_normal((64, 128)).astype(np.float32)
    amax = np.abs(x).max(axis=1, keepdims=True)
    eager = np.asarray(int_fake_quant(jnp.asarray(x), jnp.asarray(amax), 8))
    jitted = np.asarray(jax.jit(lambda x: int_fake_quant(x, jnp.asarray(amax), 8))(x))
    np.testing.assert_array_equal(jitted, eager)
