"""The Histogram statistic: bins of |x| over a power-of-two range, and its four merge rules (batches, scan
iterations, branches / while loops, devices), each exact: the merged histogram is the histogram of all the data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jq.calib.stats import Histogram, histogram_range, identity_like, merge_stats, rebin, reduce_steps


def assert_same(a: Histogram, b: Histogram):
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.range, b.range)
    np.testing.assert_array_equal(a.all_finite, b.all_finite)


@pytest.fixture
def parts(rng):
    """Three tensors whose largest |x| differ by factors of 2^k (ranges 1, 8, 0.25 after rounding up)."""
    return [jnp.asarray(rng.standard_normal(300) * s, jnp.float32).clip(-r, r)
            for s, r in ((0.3, 0.9), (3.0, 7.5), (0.05, 0.2))]


def test_counts_by_hand():
    h = Histogram.of(jnp.array([0.5, -1.0, 3.0, 4.0]), num_bins=4)  # range 4: bins [0,1) [1,2) [2,3) [3,4]
    assert float(h.range) == 4.0
    assert h.counts.tolist() == [1.0, 1.0, 0.0, 2.0]  # 4.0 == range goes to the last bin


def test_range_is_the_next_power_of_two():
    assert [float(histogram_range(jnp.float32(v))) for v in (0.0, 0.3, 0.5, 0.51, 3.0, 4.0, 1e6)] == [
        0.0, 0.5, 0.5, 1.0, 4.0, 4.0, 2.0**20]


def test_all_zeros_land_in_bin_zero():
    h = Histogram.of(jnp.zeros((3, 5)), num_bins=8)
    assert float(h.range) == 0.0 and h.counts.tolist() == [15.0] + [0.0] * 7


def test_non_finite_values_are_flagged_and_counted_in_bin_zero():
    h = Histogram.of(jnp.array([1.0, jnp.nan, -jnp.inf, 0.75]), num_bins=4)
    assert not bool(h.all_finite)
    assert float(h.range) == 1.0 and h.counts.tolist() == [2.0, 0.0, 0.0, 2.0]


def test_merge_is_the_histogram_of_all_the_data(parts):
    whole = Histogram.of(jnp.concatenate(parts), num_bins=64)
    hs = [Histogram.of(p, num_bins=64) for p in parts]
    assert sorted(float(h.range) for h in hs) == [0.25, 1.0, 8.0]
    assert_same(hs[0].merge(hs[1]).merge(hs[2]), whole)
    assert_same(hs[2].merge(hs[0]).merge(hs[1]), whole)  # any order
    assert float(whole.counts.sum()) == 900.0


def test_rebin_adds_2_to_the_k_neighbours():
    c = jnp.arange(8.0)
    np.testing.assert_array_equal(rebin(c, jnp.float32(1.0), jnp.float32(4.0)),
                                  [0 + 1 + 2 + 3, 4 + 5 + 6 + 7, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(rebin(c, jnp.float32(2.0), jnp.float32(2.0)), c)  # same range: unchanged
    np.testing.assert_array_equal(rebin(c, jnp.float32(0.0), jnp.float32(2.0)), [28, 0, 0, 0, 0, 0, 0, 0])


def test_reduce_steps_merges_scan_iterations(parts):
    stacked = jax.vmap(lambda p: Histogram.of(p, num_bins=64))(jnp.stack(parts))
    assert stacked.counts.shape == (3, 64)
    assert_same(stacked.reduce_steps(), Histogram.of(jnp.concatenate(parts), num_bins=64))


def test_identity_is_neutral_for_while_loops_and_untaken_branches(parts):
    h = Histogram.of(parts[1], num_bins=64)
    ident = identity_like({("q", "histogram"): jax.eval_shape(lambda: h)})[("q", "histogram")]
    assert_same(ident.merge(h), h)
    assert_same(merge_stats({("q", "histogram"): h}, {("q", "histogram"): ident})[("q", "histogram")], h)


def test_stacked_per_layer_histograms_merge_layer_by_layer(parts):
    a = jax.vmap(lambda p: Histogram.of(p, num_bins=32))(jnp.stack(parts))
    b = jax.vmap(lambda p: Histogram.of(p, num_bins=32))(jnp.stack(parts[::-1]))
    m = a.merge(b)
    for layer, (x, y) in enumerate(zip(parts, parts[::-1])):
        assert_same(jax.tree_util.tree_map(lambda v: v[layer], m), Histogram.of(jnp.concatenate([x, y]), num_bins=32))


def test_batch_axes_get_one_histogram_each(parts):
    h = Histogram.of(jnp.stack(parts), num_bins=16, batch=1)
    assert h.counts.shape == (3, 16) and h.range.shape == (3,)
    assert_same(jax.tree_util.tree_map(lambda v: v[1], h), Histogram.of(parts[1], num_bins=16))


def test_all_reduce_across_devices_is_the_histogram_of_all_shards(rng):
    assert jax.device_count() == 2
    mesh = Mesh(np.array(jax.devices()), ("d",))
    # device 1 holds values up to 6 (range 8), device 0 up to 0.7 (range 1)
    x = jnp.asarray(np.concatenate([rng.uniform(-0.7, 0.7, 64), rng.uniform(-6, 6, 64)]), jnp.float32)

    def local(xs):
        return Histogram.of(xs, num_bins=128).all_reduce("d")

    h = jax.shard_map(local, mesh=mesh, in_specs=P("d"), out_specs=P(), check_vma=False)(x)
    assert_same(h, Histogram.of(x, num_bins=128))
    assert_same(reduce_steps({"k": jax.vmap(lambda p: Histogram.of(p, num_bins=128))(x.reshape(2, 64))})["k"],
                Histogram.of(x, num_bins=128))
