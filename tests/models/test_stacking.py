"""jq.models.stacking.stack_trees: leaf ``i`` of the result's slice ``i`` is tree ``i``'s leaf."""

import jax.numpy as jnp
import numpy as np
import pytest

from jq.models.stacking import stack_trees


def test_leaves_stack_on_a_new_leading_axis_in_tree_order():
    trees = [{"w": jnp.full((2, 3), float(i)), "b": [jnp.asarray(i, jnp.int32)]} for i in range(4)]
    out = stack_trees(trees)
    assert out["w"].shape == (4, 2, 3) and out["b"][0].dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out["w"][:, 0, 0]), [0.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(np.asarray(out["b"][0]), [0, 1, 2, 3])


def test_different_structures_or_shapes_are_refused():
    with pytest.raises(ValueError):
        stack_trees([{"w": jnp.zeros(3)}, {"v": jnp.zeros(3)}])
    with pytest.raises(ValueError):
        stack_trees([{"w": jnp.zeros(3)}, {"w": jnp.zeros(4)}])
