"""NVFP4 two-level quantization: global scale, E4M3 block scales, E2M1 elements."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jq.numerics import (
    E2M1_GRID,
    nvfp4_block_scale,
    nvfp4_fake_quant,
    nvfp4_global_scale,
    nvfp4_layout,
    nvfp4_quantize,
)


def test_block_with_the_tensor_amax_gets_scale_448():
    # r = amax_b / (6 * amax / 2688) = 448 exactly when amax_b == amax
    x = jnp.concatenate([jnp.full((16,), 6.0), jnp.linspace(-1, 1, 16)])
    q, s, gs, _ = nvfp4_quantize(x)
    assert float(gs) == float(np.float32(6.0) / np.float32(2688))
    assert float(s[0, 0]) == 448.0
    np.testing.assert_array_equal(q[0], 6.0)


def test_reference_block_scale_by_hand():
    # amax 2688 -> gs 1; a block with amax 3 has r = 3/6 = 0.5 (an E4M3 value): elements divide by 0.5
    x = jnp.concatenate([jnp.full((16,), 2688.0), jnp.array([3.0, 1.0, 0.26, -0.74] + [0.0] * 12)])
    q, s, gs, _ = nvfp4_quantize(x)
    assert float(gs) == 1.0 and float(s[1, 0]) == 0.5
    np.testing.assert_array_equal(q[1, :4], [6.0, 2.0, 0.5, -1.5])


def test_block_scales_are_clamped_to_e4m3_range():
    s = nvfp4_block_scale(jnp.array([1e-12, 0.0, 1e9]), jnp.float32(1.0))
    np.testing.assert_array_equal(s, [2.0**-9, 1.0, 448.0])  # zero block -> 1


def test_all_zero_tensor_gives_zeros_not_nan():
    # ModelOpt's CPU path gives NaN here (see tests/data/modelopt/README.md); jq gives zeros
    y = nvfp4_fake_quant(jnp.zeros((4, 32)))
    np.testing.assert_array_equal(y, 0)
    assert float(nvfp4_global_scale(jnp.float32(0))) == 1.0


def test_one_zero_block_among_nonzero_blocks(rng):
    x = jnp.asarray(rng.standard_normal((2, 48)), jnp.float32).at[1, 16:32].set(0)
    y = np.asarray(nvfp4_fake_quant(x))
    np.testing.assert_array_equal(y[1, 16:32], 0)
    assert np.isfinite(y).all()


def test_shape_not_divisible_by_16_pads_with_zeros(rng):
    x = jnp.asarray(rng.standard_normal((3, 40)), jnp.float32)
    y = nvfp4_fake_quant(x)
    assert y.shape == (3, 40)
    padded = jnp.pad(x, [(0, 0), (0, 8)])
    np.testing.assert_array_equal(y, nvfp4_fake_quant(padded, jnp.max(jnp.abs(x)))[:, :40])


def test_elements_land_on_the_scaled_grid(rng):
    x = jnp.asarray(rng.standard_normal((8, 64)), jnp.float32)
    q, s, gs, layout = nvfp4_quantize(x)
    assert set(np.unique(np.abs(np.asarray(q)))) <= set(E2M1_GRID.tolist())
    assert float(jnp.max(jnp.abs(q))) == 6.0


def test_two_d_tiles_share_one_scale(rng):
    x = jnp.asarray(rng.standard_normal((32, 32)), jnp.float32)
    _, s, _, layout = nvfp4_quantize(x, two_d=True)
    assert layout.num_blocks_shape == (2, 2)
    assert layout.squeeze_stats(s).shape == (2, 2)
    tile = x[16:32, 0:16]
    amax = float(jnp.max(jnp.abs(x)))
    want = float(nvfp4_block_scale(jnp.max(jnp.abs(tile)), nvfp4_global_scale(amax)))
    assert float(layout.squeeze_stats(s)[1, 0]) == want


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtype_is_kept(dtype, rng):
    x = jnp.asarray(rng.standard_normal((4, 32)), dtype)
    y = nvfp4_fake_quant(x)
    assert y.dtype == dtype
    ref = nvfp4_fake_quant(x.astype(jnp.float32)).astype(dtype)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(ref, np.float32))


def test_stochastic_rounding_is_unbiased(rng):
    x = jnp.asarray(rng.uniform(-1, 1, (1, 64)), jnp.float32)
    amax = jnp.max(jnp.abs(x))
    keys = jax.random.split(jax.random.key(0), 2000)
    ys = jax.vmap(lambda k: nvfp4_fake_quant(x, amax, random_bits=jax.random.bits(k, x.shape, jnp.uint8)))(keys)
    np.testing.assert_allclose(np.asarray(ys).mean(0), np.asarray(x), atol=0.02)
    rn = nvfp4_fake_quant(x, amax)
    assert float(jnp.abs(rn - x).mean()) < float(jnp.abs(ys[0] - x).mean())  # SR is noisier per draw


def test_layout_helper():
    assert nvfp4_layout((4, 40)).blocked_shape == (4, 3, 16)
    assert nvfp4_layout((20, 40), two_d=True).num_blocks_shape == (2, 3)
