"""The amax of a histogram: percentile (ModelOpt's left bin edge), TensorRT's entropy (KL) and MSE, checked
against straightforward re-statements of ModelOpt's algorithms (loops over candidates, float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jq.calib import histogram as H
from jq.calib.stats import Histogram
from jq.config import QuantizerSpec


def entropy_reference(counts, levels, start_bin, stride=1):
    """TensorRT / ModelOpt entropy calibration, one candidate at a time (the KL as scipy.stats.entropy)."""
    bins = np.asarray(counts, np.float64).copy()
    bins[0] = bins[1]
    best_i, best_kl = None, np.inf
    for i in range(start_bin, len(bins) + 1, stride):
        level = np.array([j * levels // i for j in range(i)])
        nonzero = bins[:i] > 0
        q = np.zeros(i)
        for g in range(levels):
            members = (level == g) & nonzero
            if members.any():
                q[members] = bins[:i][members].sum() / members.sum()
        p = bins[:i].copy()
        p[-1] += bins[i:].sum()
        p, q = p / p.sum(), q / q.sum()
        kl = np.inf if np.any((p > 0) & (q == 0)) else float(np.sum(p[p > 0] * np.log(p[p > 0] / q[p > 0])))
        if kl <= best_kl:  # the last minimum
            best_i, best_kl = i, kl
    return best_i


@pytest.fixture
def gaussian(rng):
    return jnp.asarray(rng.standard_normal(20000), jnp.float32)


def test_percentile_is_the_left_edge_of_the_bin_reaching_it():
    h = Histogram.of(jnp.arange(1000.0), num_bins=1024)  # range 1024: value k in bin k
    assert H.percentile_amax(h.counts, h.range, 50.0) == 499.0  # 500 values <= 499
    assert H.percentile_amax(h.counts, h.range, 100.0) == 999.0  # the bin of the max, its left edge
    assert H.percentile_amax(h.counts, h.range, 0.05) == 0.0


def test_percentile_of_a_gaussian(gaussian):
    h = Histogram.of(gaussian)
    want = np.percentile(np.abs(np.asarray(gaussian)), 99.0)
    assert abs(H.percentile_amax(h.counts, h.range, 99.0) - want) <= float(h.range) / 2048


@pytest.mark.parametrize("levels,start_bin,stride", [(128, 128, 1), (16, 40, 3)])
def test_entropy_matches_the_tensorrt_algorithm(rng, levels, start_bin, stride):
    x = np.concatenate([rng.laplace(size=5000), rng.standard_normal(5000) * 0.1])
    h = Histogram.of(jnp.asarray(x, jnp.float32), num_bins=512)
    got = H.entropy_amax(h.counts, h.range, levels, start_bin, stride)
    assert got == float(h.range) * entropy_reference(h.counts, levels, start_bin, stride) / 512


def test_entropy_threshold_of_a_heavy_tail_clips_it(rng):
    x = jnp.asarray(rng.laplace(size=20000), jnp.float32)
    h = Histogram.of(x)
    amax = H.entropy_amax(h.counts, h.range)
    assert 4.0 < amax < 0.9 * float(jnp.max(jnp.abs(x)))


def test_entropy_of_all_zeros_is_the_range():
    h = Histogram.of(jnp.zeros(10), num_bins=256)
    assert H.entropy_amax(h.counts, h.range) == 0.0


@pytest.mark.parametrize("num_bits", [8, (4, 3)], ids=["int8", "fp8"])
def test_mse_is_the_best_bin_centre(rng, num_bits):
    spec = QuantizerSpec(num_bits=num_bits)
    h = Histogram.of(jnp.asarray(rng.laplace(size=4000), jnp.float32), num_bins=256)
    got = float(H.mse_amax(h.counts, h.range, spec, start_bin=64, stride=1))
    centres = np.asarray(h.range) * (np.arange(256) + 0.5) / 256
    c = jnp.asarray(centres, jnp.float32)
    err = jax.vmap(lambda a: jnp.sum(h.counts * (spec.format.fake_quant(c, spec, a) - c) ** 2))(c[64:])
    assert got == pytest.approx(centres[64 + int(np.argmin(err))], rel=1e-6)


def test_levels_per_format():
    assert H.quant_levels(QuantizerSpec(num_bits=8)) == 128
    assert H.quant_levels(QuantizerSpec(num_bits=8, unsigned=True)) == 256
    assert H.quant_levels(QuantizerSpec(num_bits=4)) == 8
    assert H.quant_levels(QuantizerSpec(num_bits=(4, 3))) == 128


def test_stacked_histograms_per_layer_also_under_vmap(rng):
    xs = jnp.asarray(rng.standard_normal((3, 500)) * np.array([[0.1], [1.0], [30.0]]), jnp.float32)
    h = jax.vmap(lambda v: Histogram.of(v, num_bins=256))(xs)
    fn = lambda c, r: H.percentile_amax(c, r, 99.0)  # noqa: E731
    want = [H.percentile_amax(h.counts[k], h.range[k], 99.0) for k in range(3)]
    np.testing.assert_array_equal(H.host_amax(fn, h.counts, h.range), np.float32(want))
    # weights are calibrated per layer under vmap: the host computation runs through pure_callback
    np.testing.assert_array_equal(jax.vmap(lambda c, r: H.host_amax(fn, c, r))(h.counts, h.range), np.float32(want))
