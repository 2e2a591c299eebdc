"""Block layouts: shapes, zero padding of partial blocks, per-block amax, merge is the inverse of split."""

import jax.numpy as jnp
import numpy as np
import pytest

from jq.numerics import BlockLayout, reduce_amax


def test_partial_blocks_are_zero_padded_and_sliced_back(rng):
    x = jnp.asarray(rng.standard_normal((4, 40)), jnp.float32)
    layout = BlockLayout.create(x.shape, {-1: 16})
    assert layout.blocked_shape == (4, 3, 16) and layout.num_blocks_shape == (4, 3)
    xb = layout.split(x)
    np.testing.assert_array_equal(xb[:, 2, 8:], 0)
    np.testing.assert_array_equal(layout.merge(xb), x)
    amax = layout.squeeze_stats(layout.block_amax(x))
    np.testing.assert_array_equal(amax[:, 2], np.abs(np.asarray(x)[:, 32:]).max(1))


def test_two_dimensional_tiles(rng):
    x = jnp.asarray(rng.standard_normal((40, 48)), jnp.float32)
    layout = BlockLayout.create(x.shape, {-1: 16, -2: 16})
    amax = np.asarray(layout.squeeze_stats(layout.block_amax(x)))
    assert amax.shape == (3, 3)
    assert amax[1, 2] == np.abs(np.asarray(x)[16:32, 32:48]).max()
    assert amax[2, 0] == np.abs(np.asarray(x)[32:40, 0:16]).max()


def test_none_block_size_is_the_whole_axis():
    layout = BlockLayout.create((3, 10), {-1: None})
    assert layout.blocked_shape == (3, 1, 10)


def test_reduce_amax_keep_axes():
    x = jnp.arange(24.0).reshape(2, 3, 4) - 12
    assert reduce_amax(x).shape == ()
    np.testing.assert_array_equal(reduce_amax(x, 0).ravel(), [12, 11])
    assert reduce_amax(x, (0, 2)).shape == (2, 1, 4)
    with pytest.raises(ValueError, match="out of range"):
        reduce_amax(x, 3)
