"""Canonical weight axes -> operand axes (jq.export.layout)."""

import jax.numpy as jnp
import numpy as np
import pytest

from jq.export.layout import WeightLayout
from jq.quantizer import CanonicalView


def test_dense_kernel_is_direct():
    lay = WeightLayout.create(CanonicalView((1, 0), (4, 8), 0), (8, 4))  # Flax Dense [in=8, out=4]
    assert lay.direct and lay.operand_axis(0) == 1 and lay.operand_axis(-1) == 0
    stats = np.arange(4 * 2).reshape(4, 2)  # [out, in/4] block statistics
    got = lay.stats_to_operand(stats)
    assert got.shape == (2, 4) and np.array_equal(got, stats.T)


def test_conv_kernel_is_direct():
    view = CanonicalView((3, 2, 0, 1), (16, 8, 3, 3), 0)  # HWIO -> OIHW
    lay = WeightLayout.create(view, (3, 3, 8, 16))
    assert lay.direct and lay.operand_axis(0) == 3 and lay.operand_axis(-1) == 1
    assert lay.stats_to_operand(np.ones((16, 1, 1, 1))).shape == (1, 1, 1, 16)


def test_dense_general_merging_axes_is_not_direct():
    view = CanonicalView((1, 2, 0), (8, 4), 0)  # kernel [d=4, heads=2, hd=4] -> [8, 4]
    lay = WeightLayout.create(view, (4, 2, 4))
    assert not lay.direct
    with pytest.raises(ValueError, match="not a permutation"):
        lay.operand_axis(0)


def test_unit_axes_are_ignored():
    lay = WeightLayout.create(CanonicalView((1, 0, 2), (4, 8), 0), (8, 4, 1))
    assert lay.direct and lay.operand_axis(0) == 1 and lay.operand_axis(1) == 0


@pytest.mark.parametrize("perm, cshape, shape", [((1, 0), (4, 8), (8, 4)), ((1, 2, 0), (8, 4), (4, 2, 4)),
                                                 ((3, 2, 0, 1), (16, 8, 3, 3), (3, 3, 8, 16))])
def test_to_operand_inverts_the_view(perm, cshape, shape):
    view = CanonicalView(perm, cshape, 0)
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    lay = WeightLayout.create(view, shape)
    assert np.array_equal(lay.to_operand(np.asarray(view.to_canonical(jnp.asarray(w)))), w)
