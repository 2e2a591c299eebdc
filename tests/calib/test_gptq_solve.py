"""GPTQ on one matrix: equal to the paper's column-by-column algorithm, better than rounding, exact scales."""

import jax.numpy as jnp
import numpy as np
import pytest

from jq.calib.gptq_solve import (gptq_quantize, hessian_error, inverse_hessian_factor, search_block_amax,
                                 shrink_grid)
from jq.calib.static_amax import static_block_variant
from jq.config import QuantizerSpec
from jq.fake_quant import fake_quant

INT4_G16 = QuantizerSpec(num_bits=4, block_sizes={-1: 16})
INT8_CHANNEL = QuantizerSpec(num_bits=8, axis=0)
FP8 = QuantizerSpec(num_bits=(4, 3))
NVFP4 = static_block_variant(QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, "type": "dynamic",
                                                                          "scale_bits": (4, 3)}))


@pytest.fixture(scope="module")
def problem():
    """A weight and the Hessian of correlated inputs with one outlier channel (rows 8, in 64)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    x = rng.standard_normal((256, 64)) @ rng.standard_normal((64, 64)) * 0.3
    x[:, 5] *= 8.0
    return w, (x.T @ x).astype(np.float32)


def reference_gptq(w, h, spec, amax, perc_damp=0.01, group=None):
    """The paper's algorithm column by column (Optimal Brain Quantization updates, no Cholesky, no lazy
    batches) in float64; each column quantized by the spec with its row amaxes (per-block amaxes computed
    from the updated weights at the block's first column, capped at the largest, whose block keeps it)."""
    w = w.astype(np.float64).copy()
    h = h.astype(np.float64).copy()
    rows, cols = w.shape
    h += perc_damp * np.mean(np.diag(h)) * np.eye(cols)
    hinv = np.linalg.inv(h)
    amax = np.asarray(amax, np.float64).copy()
    big = amax.max()
    pin = np.zeros(amax.shape, bool)
    pin.flat[np.argmax(amax)] = True
    q = np.zeros_like(w)
    for j in range(cols):
        if group and j % group == 0:
            g = j // group
            a = np.minimum(np.abs(w[:, j:j + group]).max(axis=1), big)
            amax[:, g] = np.where(pin[:, g], big, a)
        if group:
            a_col = amax[:, j // group]
            slab = np.zeros((rows, 2 * group), np.float32)
            slab[:, 0] = w[:, j]
            a2 = np.stack([a_col, np.full(rows, big)], 1)
            q[:, j] = np.asarray(fake_quant(jnp.asarray(slab), jnp.asarray(a2, jnp.float32), spec=spec))[:, 0]
        else:
            a_col = np.broadcast_to(np.asarray(amax).reshape(-1, 1) if np.size(amax) > 1 else amax, (rows, 1))
            q[:, j] = np.asarray(fake_quant(jnp.asarray(w[:, j:j + 1], jnp.float32),
                                            jnp.asarray(a_col, jnp.float32), spec=spec))[:, 0]
        err = (w[:, j] - q[:, j]) / hinv[j, j]
        w[:, j:] -= np.outer(err, hinv[j, j:])
        hinv -= np.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
    return q, amax


@pytest.mark.parametrize("spec, group", [(INT8_CHANNEL, None), (INT4_G16, 16)], ids=["int8-channel", "int4-g16"])
def test_equals_the_column_by_column_algorithm(problem, spec, group):
    w, h = problem
    amax = spec.format.compute_amax(jnp.asarray(w), spec)
    q, a, _ = gptq_quantize(w, h, amax, spec=spec, block_size=32)
    q_ref, a_ref = reference_gptq(w, h, spec, amax, group=group)
    same = np.mean(np.isclose(np.asarray(q), q_ref, rtol=1e-5, atol=0))  # amaxes differ in the last float32 bit
    assert same > 0.98, same  # float32 Cholesky vs float64 inverse: rare flips at rounding boundaries
    np.testing.assert_allclose(a, a_ref, rtol=1e-4)
    e, e_ref = (float(hessian_error(jnp.asarray(x, jnp.float32), w, h)) for x in (q, q_ref))
    assert e == pytest.approx(e_ref, rel=0.05)


@pytest.mark.parametrize("spec", [INT4_G16, INT8_CHANNEL, FP8, NVFP4], ids=["int4-g16", "int8", "fp8", "nvfp4"])
def test_beats_round_to_nearest_and_its_amax_reproduces_it(problem, spec):
    w, h = problem
    amax = spec.format.compute_amax(jnp.asarray(w), spec)
    rtn = fake_quant(jnp.asarray(w), amax, spec=spec)
    q, a, err = gptq_quantize(w, h, amax, spec=spec, block_size=32)
    assert float(err) < 0.6 * float(hessian_error(rtn, w, h))
    np.testing.assert_array_equal(fake_quant(q, a, spec=spec), q)  # the stored amax gives exactly q
    assert float(jnp.max(a)) == float(jnp.max(amax))  # the largest block keeps its amax (NVFP4's global scale)


def test_act_order_uses_fixed_block_amaxes(problem):
    w, h = problem
    amax = INT4_G16.format.compute_amax(jnp.asarray(w), INT4_G16)
    q, a, err = gptq_quantize(w, h, amax, spec=INT4_G16, block_size=32, act_order=True)
    np.testing.assert_array_equal(a, amax)  # GPTQ's static groups
    rtn = fake_quant(jnp.asarray(w), amax, spec=INT4_G16)
    assert float(err) < 0.6 * float(hessian_error(rtn, w, h))
    np.testing.assert_array_equal(fake_quant(q, a, spec=INT4_G16), q)


def test_dead_input_channels_get_zero_weights(problem):
    w, h = problem
    h = h.copy()
    h[7, :] = h[:, 7] = 0.0  # channel 7 never saw a nonzero input
    amax = INT8_CHANNEL.format.compute_amax(jnp.asarray(w), INT8_CHANNEL)
    q, _, _ = gptq_quantize(w, h, amax, spec=INT8_CHANNEL, block_size=32)
    assert np.all(np.asarray(q)[:, 7] == 0) and np.all(np.isfinite(np.asarray(q)))


def test_block_size_must_hold_whole_quantization_blocks(problem):
    w, h = problem
    amax = INT4_G16.format.compute_amax(jnp.asarray(w), INT4_G16)
    with pytest.raises(ValueError, match="block_size=24 must be a multiple of the quantization block size 16"):
        gptq_quantize(w, h, amax, spec=INT4_G16, block_size=24)


def test_inverse_hessian_factor():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, 6))
    h = jnp.asarray(a @ a.T, jnp.float32)
    u = inverse_hessian_factor(h, 0.1)
    assert np.allclose(np.tril(np.asarray(u), -1), 0)  # upper triangular
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(np.asarray(h) + 0.1 * np.eye(6)), rtol=1e-3, atol=1e-4)


def test_shrink_grid_is_autogptqs():
    grid = shrink_grid(0.21, 0.01)  # AutoGPTQ mse=True: grid 100, maxshrink 0.8 -> 1 - i/100 for i < 80
    assert len(grid) == 80 and grid[0] == 1.0 and grid[-1] == 0.21
    assert shrink_grid(0.5, 0.25) == (1.0, 0.75, 0.5)


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "column-weighted"])
def test_search_block_amax_picks_the_grid_minimum_per_block(weighted):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    x[0, 3] = 9.0  # an outlier: clipping it is worth it for the other 15 values of its block
    d = rng.uniform(0.1, 10.0, 64).astype(np.float32) if weighted else np.ones(64, np.float32)
    amax = INT4_G16.format.compute_amax(jnp.asarray(x), INT4_G16)
    keep = np.zeros(amax.shape, bool)
    keep[1, 2] = True
    grid = shrink_grid(0.3, 0.05)
    got = np.asarray(search_block_amax(x, amax, keep, spec=INT4_G16, shrink=grid, norm=2.4,
                                       col_weight=jnp.asarray(d) if weighted else None))
    # brute force per block, in numpy
    for r in range(4):
        for b in range(4):
            xs, ds, a = x[r, 16 * b:16 * b + 16], d[16 * b:16 * b + 16], float(amax[r, b])
            if keep[r, b]:
                assert got[r, b] == a
                continue
            losses = [np.sum(ds * np.abs(np.asarray(fake_quant(jnp.asarray(xs[None]), jnp.full((1, 1), a * m),
                                                               spec=INT4_G16))[0] - xs) ** 2.4) for m in grid]
            assert got[r, b] == pytest.approx(a * grid[int(np.argmin(losses))], rel=1e-6)
    assert got[0, 0] < float(amax[0, 0])  # the outlier block shrinks (clips the outlier)


def test_search_keeps_max_for_a_block_already_on_its_grid():
    x = jnp.asarray(np.tile(np.arange(-7, 9, dtype=np.float32).clip(max=7) / 7, (2, 1)))  # INT4 grid of amax 1
    amax = INT4_G16.format.compute_amax(x, INT4_G16)
    got = search_block_amax(x, amax, jnp.zeros(amax.shape, bool), spec=INT4_G16, shrink=shrink_grid(0.5, 0.05))
    np.testing.assert_array_equal(got, amax)


@pytest.mark.parametrize("spec", [INT4_G16, NVFP4], ids=["int4-g16", "nvfp4"])
@pytest.mark.parametrize("act_order", [False, True], ids=["in-order", "act-order"])
def test_scale_search_changes_the_block_amaxes_and_keeps_them_exact(problem, spec, act_order):
    w, h = problem
    amax = spec.format.compute_amax(jnp.asarray(w), spec)
    q0, a0, _ = gptq_quantize(w, h, amax, spec=spec, block_size=32, act_order=act_order)
    q, a, _ = gptq_quantize(w, h, amax, spec=spec, block_size=32, act_order=act_order,
                            shrink=shrink_grid(0.21, 0.01), hessian_weighted=True)
    assert not np.array_equal(np.asarray(a), np.asarray(a0)) and not np.array_equal(np.asarray(q), np.asarray(q0))
    assert float(jnp.min(a / a0)) >= 0.21 - 1e-6 or not act_order  # shrunk from the static-group max
    np.testing.assert_array_equal(fake_quant(q, a, spec=spec), q)  # the stored amax gives exactly q
    assert float(jnp.max(a)) == float(jnp.max(amax))  # the largest block keeps its amax (NVFP4's global scale)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hessian_weighted_scale_search_lowers_the_layer_error(seed):
    """INT4-g16, 64 x 128, correlated inputs with an outlier channel: the in-order solver with the H_jj-weighted
    search beats the plain search, which beats no search (measured margins >= 5 %)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    x = rng.standard_normal((512, 128)) @ rng.standard_normal((128, 128)) * 0.3
    x[:, 5] *= 8.0
    h = (x.T @ x).astype(np.float32)
    amax = INT4_G16.format.compute_amax(jnp.asarray(w), INT4_G16)
    grid = shrink_grid(0.21, 0.01)
    errs = [float(gptq_quantize(w, h, amax, spec=INT4_G16, block_size=32, shrink=s, hessian_weighted=hw)[2])
            for s, hw in ((None, False), (grid, False), (grid, True))]
    assert errs[1] < 0.95 * errs[0] and errs[2] < 0.97 * errs[1], errs


FP8_TILES = QuantizerSpec(num_bits=(4, 3), block_sizes={-1: 16, -2: 3})  # DeepSeek-style 2-D tiles, ragged rows
FP8_ROWS = QuantizerSpec(num_bits=(4, 3), block_sizes={-1: 16})


@pytest.mark.parametrize("act_order", [False, True], ids=["in-order", "act-order"])
def test_two_dimensional_tiles_are_static_groups_shared_by_their_rows(problem, act_order):
    """A [3 x 16] tile's amax is fixed up front from the original weight (rows 8 = 3 + 3 + 2: the last tile is
    ragged) and each row quantizes with it: the same weights as one amax per row and block, expanded from the
    tiles, with static groups; the stored tile amaxes reproduce the weight exactly."""
    w, h = problem
    amax = FP8_TILES.format.compute_amax(jnp.asarray(w), FP8_TILES)
    assert amax.shape == (3, 4)
    q, a, err = gptq_quantize(w, h, amax, spec=FP8_TILES, block_size=32, act_order=act_order)
    np.testing.assert_array_equal(a, amax)
    np.testing.assert_array_equal(fake_quant(q, a, spec=FP8_TILES), q)
    if act_order:  # (in order, one amax per row and block would be refreshed from the updated weights)
        per_row = jnp.repeat(amax, 3, axis=0)[:8]
        q_rows, _, _ = gptq_quantize(w, h, per_row, spec=FP8_ROWS, block_size=32, act_order=True)
        np.testing.assert_array_equal(q, q_rows)
    rtn = fake_quant(jnp.asarray(w), amax, spec=FP8_TILES)
    assert float(err) < 0.6 * float(hessian_error(rtn, w, h))


def test_scale_search_on_two_dimensional_tiles_picks_each_tiles_grid_minimum():
    """Ragged rows (5 = 3 + 2): each tile's factor minimises its own summed error, as a brute force over the grid
    finds it; the search used to fail on the tile amax's shape."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 32)).astype(np.float32)
    x[0, 3] = 9.0  # an outlier in tile (0, 0)
    spec = QuantizerSpec(num_bits=4, block_sizes={-1: 16, -2: 3})
    amax = spec.format.compute_amax(jnp.asarray(x), spec)
    grid = shrink_grid(0.5, 0.05)
    got = np.asarray(search_block_amax(x, amax, jnp.zeros(amax.shape, bool), spec=spec, shrink=grid, norm=2.0))
    for r, rows in enumerate((slice(0, 3), slice(3, 5))):
        for b in range(2):
            tile = x[rows, 16 * b:16 * (b + 1)]
            a = float(amax[r, b])
            losses = []
            for m in grid:
                full = np.zeros_like(x)
                full[rows, 16 * b:16 * (b + 1)] = tile
                am = np.full(amax.shape, 1.0, np.float32)
                am[r, b] = a * m
                fq = np.asarray(fake_quant(jnp.asarray(full), jnp.asarray(am), spec=spec))
                losses.append(np.sum((fq[rows, 16 * b:16 * (b + 1)] - tile) ** 2))
            assert got[r, b] == pytest.approx(a * grid[int(np.argmin(losses))], rel=1e-6)
    assert got[0, 0] < float(amax[0, 0])
