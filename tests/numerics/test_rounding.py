"""Minifloat rounding: round-half-to-even onto E4M3 / E5M2 / E2M1 grids, saturation, stochastic rounding.

Reference values: ml_dtypes' float8_e4m3fn / float8_e5m2 / float4_e2m1fn casts (IEEE round-to-nearest-even
conversions) on clamped inputs.
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jq.numerics import E2M1, E4M3, E5M2, exact_divide, round_to_minifloat, stochastic_round_to_minifloat

CASTS = [(E4M3, ml_dtypes.float8_e4m3fn), (E5M2, ml_dtypes.float8_e5m2), (E2M1, ml_dtypes.float4_e2m1fn)]


@pytest.mark.parametrize("fmt,dtype", CASTS, ids=lambda v: getattr(v, "name", str(v)))
def test_equals_ml_dtypes_cast_on_random_values(fmt, dtype, rng):
    x = (rng.standard_normal(200_000) * fmt.max_value / 3).astype(np.float32)
    x = np.concatenate([x, x * 1e-3, x * 1e-6]).clip(-fmt.max_value, fmt.max_value)
    want = x.astype(dtype).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(round_to_minifloat(x, fmt)), want)


def _grid(fmt, dtype):
    if fmt is E2M1:
        return np.asarray([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)
    values = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)
    return np.unique(np.abs(values[np.isfinite(values)]))


@pytest.mark.parametrize("fmt,dtype", CASTS, ids=lambda v: getattr(v, "name", str(v)))
def test_every_grid_point_and_midpoint(fmt, dtype):
    grid = _grid(fmt, dtype)
    np.testing.assert_array_equal(np.asarray(round_to_minifloat(grid, fmt)), grid)
    mids = ((grid[1:] + grid[:-1]) / 2).astype(np.float32)
    want = mids.astype(dtype).astype(np.float32)  # ties go to the even mantissa
    np.testing.assert_array_equal(np.asarray(round_to_minifloat(mids, fmt)), want)


def test_saturates_instead_of_overflowing():
    np.testing.assert_array_equal(round_to_minifloat(jnp.array([500.0, -1e30, jnp.inf]), E4M3), [448, -448, 448])
    np.testing.assert_array_equal(round_to_minifloat(jnp.array([7.0, 100.0, -6.5]), E2M1), [6, 6, -6])
    np.testing.assert_array_equal(round_to_minifloat(jnp.array([1e9]), E5M2), [57344])


def test_nan_propagates_and_sign_of_zero_is_kept():
    out = np.asarray(round_to_minifloat(jnp.array([jnp.nan, -0.1, -0.0]), E2M1))
    assert np.isnan(out[0])
    assert out[1] == 0 and np.signbit(out[1]) and np.signbit(out[2])


def test_subnormals_of_e4m3():
    # 2^-9 is the smallest E4M3 subnormal: 2^-10 is a tie between 0 and 2^-9 and goes to 0 (even)
    out = round_to_minifloat(jnp.array([2.0**-9, 2.0**-10, 1.5 * 2.0**-10, 3 * 2.0**-10]), E4M3)
    np.testing.assert_array_equal(out, [2.0**-9, 0.0, 2.0**-9, 2 * 2.0**-9])


def test_stochastic_rounding_picks_neighbours_and_is_unbiased():
    x = jnp.full((200_000,), 2.6, jnp.float32)  # between 2 and 3 on the E2M1 grid
    bits = jax.random.bits(jax.random.key(0), x.shape, jnp.uint8)
    out = np.asarray(stochastic_round_to_minifloat(x, E2M1, bits))
    assert set(np.unique(out)) == {2.0, 3.0}
    assert abs(out.mean() - 2.6) < 0.01  # E[q] = x; 8 random bits give a 1/256 bias at most
    on_grid = jnp.asarray([0.5, -3.0, 6.0])
    np.testing.assert_array_equal(stochastic_round_to_minifloat(on_grid, E2M1, jnp.full((3,), 255, jnp.uint8)),
                                  on_grid)


def test_exact_divide_is_a_true_division_under_jit(rng):
    # XLA rewrites a / broadcast(b) into a * (1/b); exact_divide must give numpy's correctly rounded quotient
    a = rng.standard_normal((64, 256)).astype(np.float32) * 100
    b = (rng.random((64, 1)) + 0.1).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(jax.jit(exact_divide)(a, b)), a / b)


# Divisors whose float32 reciprocal rounds the product the other way: 127 / d != 127 * (1 / d) for each.
RECIPROCAL_SENSITIVE = np.array([1.3, 3.0, 6.0, 7.0, 9.0], np.float32)


def test_plain_division_by_a_jit_constant_is_rewritten_by_xla():
    # Why exact_divide exists: XLA's algebraic simplifier turns A / C into A * (1 / C) for a constant C
    # (here a closed-over amax behind a where, as in int_quant_scale). If XLA ever stops doing this,
    # this test fails and the barrier could be revisited.
    d = jnp.asarray(RECIPROCAL_SENSITIVE)
    got = np.asarray(jax.jit(lambda: 127.0 / jnp.where(d > 0, d, 1.0))())
    assert (got != np.float32(127) / RECIPROCAL_SENSITIVE).all()
    np.testing.assert_array_equal(got, np.float32(127) * (np.float32(1) / RECIPROCAL_SENSITIVE))


@pytest.mark.parametrize("form", ["numerator traced", "all constant", "both traced"])
def test_exact_divide_is_a_true_division_when_operands_are_jit_constants(form):
    d = jnp.asarray(RECIPROCAL_SENSITIVE)
    a = jnp.full(d.shape, 127.0, jnp.float32)
    fn = lambda a, d: exact_divide(a, jnp.where(d > 0, d, 1.0))  # noqa: E731
    got = {"numerator traced": lambda: jax.jit(lambda a: fn(a, d))(a),
           "all constant": lambda: jax.jit(lambda: fn(a, d))(),
           "both traced": lambda: jax.jit(fn)(a, d)}[form]()
    np.testing.assert_array_equal(np.asarray(got), np.float32(127) / RECIPROCAL_SENSITIVE)


def test_exact_divide_survives_a_nested_division_in_the_numerator(rng):
    # (A / B) / C is rewritten to A / (B * C) by XLA unless the barrier hides A / B.
    a = rng.standard_normal(4096).astype(np.float32)
    b = (rng.random(4096) + 0.5).astype(np.float32)
    c = (rng.random(4096) + 0.5).astype(np.float32)
    got = jax.jit(lambda a, b, c: exact_divide(exact_divide(a, b), c))(a, b, c)
    np.testing.assert_array_equal(np.asarray(got), (a / b) / c)
