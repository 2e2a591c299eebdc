"""NVFP4 with adaptive block scales (4/6): each block's amax mapped to E2M1's 6 or 4, the smaller error wins."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jq.numerics import (
    FOUR_OVER_SIX_AMAX_DIVISOR,
    four_over_six_fake_quant,
    nvfp4_block_scale,
    nvfp4_fake_quant,
    nvfp4_global_scale,
    nvfp4_layout,
)
from jq.numerics.rounding import E2M1, round_to_minifloat
from jq.recipes.operands import NVFP4Operand


def _candidate(x, target, two_d=False):
    """One candidate of 4/6 at 4/6's global scale (amax / 1792), merged back to ``x``'s shape."""
    layout = nvfp4_layout(x.shape, two_d)
    gs = nvfp4_global_scale(jnp.max(jnp.abs(x)), divisor=FOUR_OVER_SIX_AMAX_DIVISOR)
    xb = layout.split(x)
    s = nvfp4_block_scale(layout.block_amax(x), gs, target=target) * gs
    return layout.merge(round_to_minifloat(xb / s, E2M1) * s)


def _block_sse(y, x, two_d=False):
    layout = nvfp4_layout(x.shape, two_d)
    return np.asarray(jnp.sum(jnp.square(layout.split(y) - layout.split(x)), axis=layout.in_block_axes))


def test_block_whose_max_is_best_kept_exact_maps_to_4_by_hand():
    # amax 5: gs = 5/1792. To 4: r = 448, s_b = 1.25, 5 -> 4 * 1.25 = 5 exactly, 1 -> 1.0 * 1.25 (SSE 0.0625).
    # To 6: r = 298.67 -> E4M3 288, s_b = 0.8036: 5 -> 6 s_b = 4.82, 1 -> 1.0 s_b = 0.80 (SSE 0.071). 4 wins.
    y = four_over_six_fake_quant(jnp.array([5.0, 1.0] + [0.0] * 14))
    np.testing.assert_array_equal(y[:2], [5.0, 1.25])
    np.testing.assert_array_equal(y[2:], 0.0)


def test_block_where_6_errs_less_keeps_6_by_hand():
    # amax 6: to 6: s_b = 288 * 6/1792, 6 -> 6 s_b = 5.786, 2 -> 2 s_b = 1.929 (SSE 0.051);
    # to 4: s_b = 1.5, 6 -> 6 exactly, 2 -> 1.5 * 1.5 = 2.25 (SSE 0.0625). 6 wins.
    y = four_over_six_fake_quant(jnp.array([6.0, 2.0] + [0.0] * 14))
    s_b = np.float32(288.0) * (np.float32(6.0) / np.float32(1792.0))
    np.testing.assert_allclose(y[:2], [6 * s_b, 2 * s_b], rtol=1e-6)


@pytest.mark.parametrize("two_d", [False, True])
def test_every_block_is_the_better_candidate_and_never_worse_than_either(two_d):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(k1, (48, 64)) * jnp.exp(jax.random.normal(k2, (48, 64)))  # heavy-tailed
    y = four_over_six_fake_quant(x, two_d=two_d)
    y6, y4 = _candidate(x, 6.0, two_d), _candidate(x, 4.0, two_d)
    e, e6, e4 = _block_sse(y, x, two_d), _block_sse(y6, x, two_d), _block_sse(y4, x, two_d)
    np.testing.assert_array_equal(e, np.minimum(e6, e4))
    if not two_d:  # 1x16 blocks: both candidates win somewhere on this data (16x16 tiles: 6 wins all 12 here)
        assert (e4 < e6).any() and (e6 <= e4).any()


def test_lower_error_than_plain_nvfp4_on_heavy_tailed_data():
    # measured 0.0502 against plain NVFP4's 0.0537 (1x16 blocks, this tensor): the near-max values gain most
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(k1, (64, 256)) * jnp.exp(jax.random.normal(k2, (64, 256)))
    mse = float(jnp.mean(jnp.square(four_over_six_fake_quant(x) - x)))
    mse_plain = float(jnp.mean(jnp.square(nvfp4_fake_quant(x) - x)))
    assert mse < 0.97 * mse_plain


@pytest.mark.parametrize("two_d", [False, True])
def test_each_block_is_one_nvfp4_candidate_bit_for_bit(two_d):
    # both candidates are plain NVFP4 encodings (E2M1 x E4M3 block scale x global scale amax / 1792)
    x = jax.random.normal(jax.random.PRNGKey(3), (32, 64))
    layout = nvfp4_layout(x.shape, two_d)
    blocks = lambda y: np.asarray(layout.split(y)).reshape(-1, 16 * (16 if two_d else 1))
    y, y6, y4 = (blocks(v) for v in (four_over_six_fake_quant(x, two_d=two_d), _candidate(x, 6.0, two_d),
                                       _candidate(x, 4.0, two_d)))
    assert all((b == b6).all() or (b == b4).all() for b, b6, b4 in zip(y, y6, y4))


def test_two_d_tiles_are_transpose_invariant_and_zero_gives_zero():
    x = jax.random.normal(jax.random.PRNGKey(1), (32, 48))
    np.testing.assert_array_equal(four_over_six_fake_quant(x.T, two_d=True), four_over_six_fake_quant(x, two_d=True).T)
    np.testing.assert_array_equal(four_over_six_fake_quant(jnp.zeros((4, 16))), 0.0)


def test_operand_refuses_four_over_six_with_stochastic_rounding():
    with pytest.raises(ValueError, match="'dy'.*stochastic_rounding"):
        NVFP4Operand(tensor="dy", stochastic_rounding=True, four_over_six=True)
