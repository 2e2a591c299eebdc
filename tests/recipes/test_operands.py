"""Operand quantizers: each equals its jq.numerics / TransformerEngine reference, on the right grid."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jq.numerics import (
    E2M1,
    E4M3,
    E5M2,
    MXFP8,
    minifloat_floor_ceil,
    mx_fake_quant,
    nvfp4_fake_quant,
    nvfp4_quantize,
    random_hadamard_transform,
)
from jq.recipes import (
    Float8BlockOperand,
    Float8CurrentOperand,
    Float8DelayedOperand,
    MXFP8Operand,
    NVFP4Operand,
    OperandContext,
    fp8_scale_from_amax,
)

from ._helpers import normal

CTX = OperandContext()


def run(op, a, ctx=CTX):
    """Apply an operand quantizer under jit (eager op-by-op dispatch is slow on the CI machine)."""
    return jax.jit(lambda a, ctx: op(a, ctx))(a, ctx)


def run_t(op, a):
    """``(op(a^T), op(a))`` in one compile."""
    return jax.jit(lambda a: (op(a.T, CTX).dequantized, op(a, CTX).dequantized))(a)


@pytest.mark.parametrize(
    "amax, power_2, expected",
    [
        (3.5, False, 128.0),  # 448 / 3.5 exactly
        (3.0, False, float(np.float32(448) / np.float32(3))),  # correctly rounded division (TE's __fdiv_rn)
        (3.0, True, 128.0),  # 149.33 truncated to a power of two
        (3.5, True, 128.0),  # an exact power of two stays
        (0.0, False, 1.0),  # TE: zero amax -> scale 1
        (float("inf"), False, 1.0),
        (float("nan"), True, 1.0),
        (1e-37, False, float(np.finfo(np.float32).max)),  # overflowing scale -> FLT_MAX
        (1e-37, True, 2.0**127),
    ],
)
def test_fp8_scale_from_amax_matches_te_compute_scale_from_amax(amax, power_2, expected):
    assert float(fp8_scale_from_amax(jnp.float32(amax), 448.0, power_2=power_2)) == expected


def test_amax_epsilon_floors_the_amax():
    assert float(fp8_scale_from_amax(jnp.float32(0.0), 448.0, epsilon=2.0)) == 224.0


def _fp8_reference(a, scale, f8):
    """Independent reference: clamp, cast with ml_dtypes (round to nearest even), multiply by 1/s."""
    a, scale = np.asarray(a, np.float32), np.float32(scale)
    fmax = float(ml_dtypes.finfo(f8).max)
    q = np.clip(a * scale, -fmax, fmax).astype(f8).astype(np.float32)
    return q * (np.float32(1) / scale)


@pytest.mark.parametrize("fmt, f8", [(E4M3, ml_dtypes.float8_e4m3fn), (E5M2, ml_dtypes.float8_e5m2)])
def test_current_scaling_uses_this_tensors_amax(fmt, f8):
    a = normal(0, (8, 48), 3.0)
    q = run(Float8CurrentOperand(tensor="x", fmt=fmt), a)
    s = np.float32(fmt.max_value) / np.float32(np.abs(np.asarray(a)).max())
    np.testing.assert_array_equal(q.dequantized, _fp8_reference(a, s, f8))
    np.testing.assert_array_equal(q.values * q.scale_inv, q.dequantized)  # what a real FP8 GEMM consumes
    np.testing.assert_array_equal(q.values.astype(f8).astype(np.float32), q.values)  # on the FP8 grid


def test_delayed_operand_uses_the_given_scale_and_saturates():
    a = jnp.array([[1.0, 2.0, 100.0, -0.3]])
    q = run(Float8DelayedOperand(tensor="x", fmt=E4M3), a, OperandContext(scale=jnp.float32(8.0)))
    np.testing.assert_array_equal(q.dequantized, [[1.0, 2.0, 56.0, -0.3125]])  # 800 saturates at 448/8


def test_block_fp8_gives_each_1x128_block_its_power_of_two_scale():
    a = np.array(normal(1, (4, 256)))
    a[1, 200] = 1000.0  # an outlier in the second block of row 1 only
    q = np.asarray(run(Float8BlockOperand(tensor="x", fmt=E4M3), jnp.asarray(a)).dequantized)
    for r in range(4):
        for b in range(2):
            blk = a[r, 128 * b : 128 * (b + 1)]
            s = 2.0 ** np.floor(np.log2(448.0 / np.abs(blk).max()))
            np.testing.assert_array_equal(q[r, 128 * b : 128 * (b + 1)], _fp8_reference(blk, s, ml_dtypes.float8_e4m3fn))


@pytest.mark.parametrize(
    "op",
    [
        Float8BlockOperand(tensor="w", fmt=E4M3, two_d=True),
        NVFP4Operand(tensor="w", two_d=True),
        Float8CurrentOperand(tensor="w", fmt=E4M3),
    ],
    ids=["fp8-128x128", "nvfp4-16x16", "fp8-per-tensor"],
)
def test_two_d_and_per_tensor_quantization_is_transpose_invariant(op):
    q_t, q = run_t(op, normal(2, (144, 160)))
    np.testing.assert_array_equal(q_t, q.T)


def test_one_d_blocks_are_not_transpose_invariant():
    a = normal(3, (32, 48), 1.0) * jnp.exp(normal(4, (32, 48)))  # ragged magnitudes
    q_t, q = run_t(NVFP4Operand(tensor="x"), a)
    assert not np.array_equal(q_t, q.T)


def test_mxfp8_operand_is_jq_mx_fake_quant_and_finer_than_1x128():
    a = np.array(normal(5, (2, 128)))
    a[0, 3] = 1e6  # outlier in the first 32-block: under one 1x128 scale the rest falls below E4M3's normals
    q = run(MXFP8Operand(tensor="x"), jnp.asarray(a)).dequantized
    np.testing.assert_array_equal(q, jax.jit(mx_fake_quant, static_argnums=1)(jnp.asarray(a), MXFP8))
    blk = run(Float8BlockOperand(tensor="x", fmt=E4M3), jnp.asarray(a)).dequantized
    # the other 32-blocks of row 0 keep their own finer scale under MX, not under one 1x128 scale
    assert np.abs(q[0, 32:] - a[0, 32:]).max() < np.abs(blk[0, 32:] - a[0, 32:]).max()


def test_nvfp4_round_to_nearest_is_jq_nvfp4():
    a = normal(6, (16, 64))
    got_1d, got_2d, ref_1d, ref_2d = jax.jit(
        lambda a: (
            NVFP4Operand(tensor="x")(a, CTX).dequantized,
            NVFP4Operand(tensor="w", two_d=True)(a, CTX).dequantized,
            nvfp4_fake_quant(a),
            nvfp4_fake_quant(a, two_d=True),
        )
    )(a)
    np.testing.assert_array_equal(got_1d, ref_1d)
    np.testing.assert_array_equal(got_2d, ref_2d)


def test_nvfp4_rht_quantizes_the_transformed_operand():
    a = normal(7, (8, 64))
    q = run(NVFP4Operand(tensor="x", rht=True), a).dequantized
    np.testing.assert_array_equal(q, jax.jit(lambda a: nvfp4_fake_quant(random_hadamard_transform(a, axis=-1)))(a))


def test_nvfp4_rht_needs_a_multiple_of_16():
    with pytest.raises(ValueError, match="multiple of 16"):
        NVFP4Operand(tensor="x", rht=True)(jnp.ones((2, 24)), CTX)


def test_nvfp4_sr_without_key_is_an_error():
    with pytest.raises(ValueError, match="needs a PRNG key"):
        NVFP4Operand(tensor="dy", stochastic_rounding=True)(jnp.ones((2, 16)), CTX)


@jax.jit
def _sr_draws_jit(a, keys):
    op = NVFP4Operand(tensor="dy", stochastic_rounding=True)
    return jax.vmap(lambda k: op(a, OperandContext(key=k)).dequantized)(keys)


def _sr_draws(a, n):
    """``n`` stochastically rounded NVFP4 quantizations of ``a``, one per key."""
    return np.asarray(_sr_draws_jit(a, jax.random.split(jax.random.key(0), n)))


@jax.jit
def _grid_neighbours_jit(a):
    q, s, gs, layout = nvfp4_quantize(a)
    step = layout.merge(jnp.broadcast_to(s * gs, q.shape))
    v = jnp.abs(a) / step
    lo, hi = minifloat_floor_ceil(v, E2M1)
    sign = jnp.sign(a)
    return step, v, lo, hi, sign * lo * step, sign * hi * step


def _grid_neighbours(a):
    """Per element: the block step ``s_b * gs``, ``|a|`` in steps, the grid points below and above it, and
    those two points dequantized with ``a``'s sign."""
    return (np.asarray(t) for t in _grid_neighbours_jit(a))


def test_nvfp4_sr_lands_on_the_two_neighbouring_grid_points():
    a = normal(8, (32, 32))
    *_, down, up = _grid_neighbours(a)
    draws = _sr_draws(a, 256)[:32]
    assert ((draws == down) | (draws == up)).all()
    assert (draws == down).any() and (draws == up).any()


def test_nvfp4_sr_is_unbiased_within_its_variance():
    n = 256
    a = normal(9, (32, 32))
    step, v, lo, hi, _, _ = _grid_neighbours(a)
    keep = v <= E2M1.max_value  # elements above 6 saturate under any rounding (block scale rounded down)
    assert keep.mean() > 0.95
    var = (hi - v) * (v - lo) * step**2  # Bernoulli between lo and hi
    bias_bound = (hi - lo) * step / 256  # 8 random bits: P(up) = ceil(256 frac) / 256
    err = (_sr_draws(a, n).mean(0) - np.asarray(a))[keep]
    assert (np.abs(err) <= 5 * np.sqrt(var[keep] / n) + bias_bound[keep] + 1e-7).all()
    total = err.sum() / np.sqrt(var[keep].sum() / n + 1e-30)
    assert abs(total) < 5 + bias_bound[keep].sum() / np.sqrt(var[keep].sum() / n)
