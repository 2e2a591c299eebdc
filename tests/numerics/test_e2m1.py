"""E2M1 values, codes and nibble packing.

The boundary table: the E2M1 grid is {0, .5, 1, 1.5, 2, 3, 4, 6}; its decision boundaries are the
midpoints 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, where ties go to the even code (index 0, 2, 2, 4, 4, 6, 6),
matching ModelOpt's NVFP4QTensor._cast_fp4 (searchsorted plus one at 0.75, 1.75 and 3.5).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from jq.numerics import E2M1, e2m1_decode, e2m1_encode, pack_nibbles, round_to_minifloat, unpack_nibbles

BOUNDARY_TABLE = [
    # (x, value at x - 0.1, value at x, value at x + 0.1)
    (0.25, 0.0, 0.0, 0.5),
    (0.75, 0.5, 1.0, 1.0),
    (1.25, 1.0, 1.0, 1.5),
    (1.75, 1.5, 2.0, 2.0),
    (2.5, 2.0, 2.0, 3.0),
    (3.5, 3.0, 4.0, 4.0),
    (5.0, 4.0, 4.0, 6.0),
]


@pytest.mark.parametrize("x,below,at,above", BOUNDARY_TABLE)
def test_boundary_table(x, below, at, above):
    got = np.asarray(round_to_minifloat(jnp.array([x - 0.1, x, x + 0.1]), E2M1))
    np.testing.assert_array_equal(got, [below, at, above])
    got_neg = np.asarray(round_to_minifloat(jnp.array([-x + 0.1, -x, -x - 0.1]), E2M1))
    np.testing.assert_array_equal(got_neg, [-below, -at, -above])


def test_codes_round_trip_all_sixteen():
    values = jnp.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0.0, -.5, -1, -1.5, -2, -3, -4, -6], jnp.float32)
    codes = e2m1_encode(values)
    np.testing.assert_array_equal(codes, np.arange(16))
    np.testing.assert_array_equal(e2m1_decode(codes), np.abs(values) * np.sign(values))


def test_sign_bit_from_the_unrounded_value():
    # ModelOpt: a small negative that rounds to zero keeps its sign bit (code 8), which decodes to +0
    codes = e2m1_encode(jnp.array([0.0, 0.0]), negative=jnp.array([True, False]))
    np.testing.assert_array_equal(codes, [8, 0])
    assert not np.signbit(np.asarray(e2m1_decode(codes))).any()


def test_pack_low_nibble_first_and_unpack():
    codes = jnp.array([[1, 2, 15, 0, 7, 8]], jnp.uint8)
    packed = pack_nibbles(codes)
    np.testing.assert_array_equal(packed, [[0x21, 0x0F, 0x87]])
    np.testing.assert_array_equal(unpack_nibbles(packed), codes)


def test_pack_needs_even_length():
    with pytest.raises(ValueError, match="even"):
        pack_nibbles(jnp.zeros((3,), jnp.uint8))
