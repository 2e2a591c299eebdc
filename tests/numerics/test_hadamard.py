"""The 16x16 random Hadamard transform of TransformerEngine's NVFP4 recipe."""

import jax.numpy as jnp
import numpy as np
import pytest

from jq.numerics import RHT_SIGNS, random_hadamard_transform, rht_matrix, sylvester_hadamard


def test_sylvester_matrix():
    h = sylvester_hadamard(4)
    np.testing.assert_array_equal(h, [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]])
    with pytest.raises(ValueError):
        sylvester_hadamard(12)


def test_rht_matrix_is_orthogonal_with_entries_quarter():
    m = rht_matrix()
    np.testing.assert_array_equal(np.abs(m), 0.25)
    np.testing.assert_allclose(m @ m.T, np.eye(16), atol=1e-7)
    np.testing.assert_array_equal(np.sign(m[:, 0]), RHT_SIGNS)  # first column of H16 is all ones


def test_transform_preserves_products_along_the_contracting_axis(rng):
    a = jnp.asarray(rng.standard_normal((8, 64)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((64, 5)), jnp.float32)
    ra = random_hadamard_transform(a, axis=-1)
    rb = random_hadamard_transform(b, axis=0)
    np.testing.assert_allclose(ra @ rb, a @ b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(random_hadamard_transform(ra, inverse=True), a, atol=1e-5)


def test_axis_length_must_be_a_multiple_of_16():
    with pytest.raises(ValueError, match="multiple of 16"):
        random_hadamard_transform(jnp.ones((3, 20)))
