"""MSE amax search: ModelOpt's multiplier sweep per amax entry (tensor, channel, block), and NVFP4's search over
the E4M3 block scales, which is never worse than max calibration on any block and keeps the global scale."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq
from jq import numerics as nx
from jq.calib import mse
from jq.config import QuantizerSpec

NVFP4_STATIC = QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, "type": "static", "scale_bits": (4, 3)})
NVFP4_STATIC_2D = QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, -2: 16, "type": "static", "scale_bits": (4, 3)})


def block_sq_error(w, spec, amax):
    layout = spec.format.blocks(spec, w.shape)
    err = (spec.format.fake_quant(w, spec, amax) - w) ** 2
    return layout.squeeze_stats(jnp.sum(layout.split(err), axis=layout.in_block_axes, keepdims=True))


@pytest.fixture
def weight(rng):
    """Rows of very different scales, an all-zero row, an outlier, and 40 columns (a partial 16-block)."""
    w = rng.standard_normal((48, 40)) * np.exp(rng.standard_normal((48, 1)) * 1.5)
    w[5] = 0.0
    w[7, 3] = 80.0
    return jnp.asarray(w, jnp.float32)


def test_modelopt_multipliers():
    m = mse.multipliers()
    assert len(m) == 39 and m[0] == 0.25 and m[-1] == 4.0  # ceil((4 - 0.25) / 0.1) + 1 candidates
    assert len(mse.multipliers(0.5, 1.0, 0.05)) == 11


@pytest.mark.parametrize("spec,shape", [
    (QuantizerSpec(num_bits=8), ()),
    (QuantizerSpec(num_bits=4, axis=0), (48, 1)),
    (QuantizerSpec(num_bits=4, block_sizes={-1: 16}), (48, 3)),
    (QuantizerSpec(num_bits=(4, 3), axis=0), (48, 1)),
], ids=["per-tensor", "per-channel", "per-block", "fp8-per-channel"])
def test_sweep_is_the_best_candidate_of_every_amax_entry(weight, spec, shape):
    ms = mse.multipliers()
    got = mse.sweep_amax(weight, spec, 0, ms)
    amax0 = spec.format.compute_amax(weight, spec)
    assert got.shape == amax0.shape == shape
    # brute force: every candidate on the whole tensor, the error of each entry's elements, best per entry
    errs = []
    for m in ms:
        err = (spec.format.fake_quant(weight, spec, amax0 * m) - weight) ** 2
        errs.append(mse.reduce_to_amax(err, amax0, spec))
    want = amax0 * ms[np.argmin(np.stack(errs), axis=0)]
    np.testing.assert_array_equal(got, want)


def test_reduce_to_amax_sums_the_elements_each_entry_scales(weight):
    e = jnp.ones_like(weight)
    assert float(mse.reduce_to_amax(e, jnp.float32(1), QuantizerSpec(num_bits=8))) == 48 * 40
    np.testing.assert_array_equal(mse.reduce_to_amax(e, jnp.ones((48, 1)), QuantizerSpec(num_bits=8, axis=0)), 40)
    blocks = mse.reduce_to_amax(e, jnp.ones((48, 3)), QuantizerSpec(num_bits=4, block_sizes={-1: 16}))
    np.testing.assert_array_equal(blocks[0], [16, 16, 8])  # the partial block counts its real elements


@pytest.mark.parametrize("spec,gain", [(NVFP4_STATIC, 0.9), (NVFP4_STATIC_2D, 0.99)], ids=["1d", "2d"])
def test_nvfp4_block_search_is_never_worse_than_max_on_any_block(weight, spec, gain):
    got = spec.format.mse_block_amax(weight, spec)
    amax_max = spec.format.compute_amax(weight, spec)
    assert got.shape == amax_max.shape
    assert float(jnp.max(got)) == float(jnp.max(jnp.abs(weight)))  # the global scale is max calibration's
    e_mse, e_max = block_sq_error(weight, spec, got), block_sq_error(weight, spec, amax_max)
    assert bool(jnp.all(e_mse <= e_max))
    assert float(e_mse.sum()) < gain * float(e_max.sum())  # measured: 0.80 (1D), 0.97 (16x16 tiles)


@pytest.mark.parametrize("pinned", [False, True])
def test_nvfp4_block_search_picks_each_blocks_best_e4m3_scale(rng, pinned):
    """Brute force on one row of 4 blocks: each block gets the best of the 126 E4M3 scales at the max-calibrated
    global scale; if no block chose 448, the block holding the max keeps 448 (max calibration's scale), so the
    largest stored amax still defines that global scale."""
    rows = rng.standard_normal((1, 64)) * [[0.3] * 16 + [0.01] * 16 + [3.0] * 16 + [0.2] * 16]
    rows[0, 35] = 12.0  # block 2 holds the max
    if pinned:  # a block where clipping its max wins: [1, 0.55 x 15] quantizes better with 4 s = 0.55
        rows[0, 32:48] = 12.0 * np.array([1.0] + [0.55] * 15)
    w = jnp.asarray(rows, jnp.float32)
    got = NVFP4_STATIC.format.mse_block_amax(w, NVFP4_STATIC)
    g = jnp.max(jnp.abs(w))
    gs = float(nx.nvfp4_global_scale(g))
    layout = NVFP4_STATIC.format.blocks(NVFP4_STATIC, w.shape)

    def error(block_amax):  # per block, at the fixed global amax g
        y = nx.nvfp4_fake_quant(w, g, block_amax=block_amax)
        return layout.squeeze_stats(jnp.sum(layout.split((y - w) ** 2), axis=-1, keepdims=True))[0]

    scales = np.arange(1, 127, dtype=np.uint8).view(jnp.float8_e4m3fn).astype(np.float32)
    e = np.asarray(jax.jit(jax.vmap(lambda v: error(jnp.full((1, 4), 6 * gs * v, jnp.float32))))(scales))
    want = e.min(axis=0)
    top = len(scales) - 1
    assert np.any(np.argmin(e, axis=0) == top) != pinned
    if pinned:
        want[2] = e[top, 2]
    np.testing.assert_allclose(error(got), want, rtol=1e-5)
    np.testing.assert_array_equal(float(jnp.max(got)), g)


def test_nvfp4_block_search_needs_static_blocks():
    dynamic = QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, "type": "dynamic", "scale_bits": (4, 3)})
    assert dynamic.format.mse_block_amax(jnp.ones((2, 16)), dynamic) is None
    assert dynamic.format.static_variant(dynamic) == NVFP4_STATIC


def test_mse_algorithm_with_fp8_scale_sweep_switches_nvfp4_weights_to_static_blocks(rng):
    p = {"w": jnp.asarray(rng.standard_normal((64, 32)) * np.exp(rng.standard_normal((1, 32))), jnp.float32)}
    x = jnp.asarray(rng.standard_normal((8, 64)), jnp.float32)
    cfg = {**jq.NVFP4_DEFAULT_CFG, "algorithm": {"method": "mse", "fp8_scale_sweep": True}}
    qm = jq.quantize(p, lambda p, x: x @ p["w"], cfg, calib_data=[(x,)], progress=False)
    wspec = qm.spec("w.weight_quantizer")
    assert wspec == NVFP4_STATIC
    assert qm.spec("w.input_quantizer").is_dynamic  # activations keep their run-time block scales
    amax = qm.qstate["w.weight_quantizer"]["amax"]
    np.testing.assert_array_equal(amax, NVFP4_STATIC.format.mse_block_amax(p["w"].T, NVFP4_STATIC))
    again = jq.QuantizedModel.create(qm.params, qm.apply_fn, qm.config.to_dict(), qm.qstate)
    np.testing.assert_array_equal(again(x), qm(x))  # the switched config round-trips
    e_mse = jnp.sum(block_sq_error(p["w"].T, wspec, amax))
    e_max = jnp.sum(block_sq_error(p["w"].T, wspec, wspec.format.compute_amax(p["w"].T, wspec)))
    assert float(e_mse) < float(e_max)


def test_fp8_scale_sweep_leaves_other_weights_at_max(rng):
    p = {"w": jnp.asarray(rng.laplace(size=(32, 16)), jnp.float32)}
    x = jnp.asarray(rng.standard_normal((4, 32)), jnp.float32)
    cfg = {**jq.INT8_DEFAULT_CFG, "algorithm": {"method": "mse", "fp8_scale_sweep": True, "activations": "max"}}
    with pytest.raises(ValueError, match="applies to no quantizer"):
        jq.quantize(p, lambda p, x: x @ p["w"], cfg, calib_data=[(x,)], progress=False)
    cfg["algorithm"]["fp8_scale_sweep"] = False  # the multiplier sweep, per output channel
    qm = jq.quantize(p, lambda p, x: x @ p["w"], cfg, calib_data=[(x,)], progress=False)
    spec = QuantizerSpec(num_bits=8, axis=0)
    np.testing.assert_array_equal(qm.qstate["w.weight_quantizer"]["amax"],
                                  mse.sweep_amax(p["w"].T, spec, 0, mse.multipliers()))
    assert float(qm.qstate["w.input_quantizer"]["amax"]) == float(jnp.max(jnp.abs(x)))  # activations="max"
    jax.block_until_ready(qm(x))
