"""Dynamic block-scaled FP8 (one E4M3 scale per group of G channels of each token, computed per call): the
activation scaling of DeepSeek-V3 / vLLM "block FP8" (1 x 128 groups) and TransformerEngine's Float8BlockScaling.

Reference: numpy with ml_dtypes' float8_e4m3fn cast (round to nearest even), per group ``s = 448 * (1 / amax)``,
``x̂ = e4m3(clip(x s, ±448)) * (1 / s)``, an all-zero group counting as amax 1 (jq/formats/fp8.py).
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jq.config import QuantizerSpec
from jq.fake_quant import fake_quant
from jq.qtensor import dequantize, quantize

GROUPED = {
    "block_sizes carries the type": {"num_bits": (4, 3), "block_sizes": {-1: 64, "type": "dynamic"}},
    "spec carries the type": {"num_bits": (4, 3), "type": "dynamic", "block_sizes": {-1: 64}},
}


def reference(x: np.ndarray, group: int) -> np.ndarray:
    """Per-group E4M3 fake quantization of the last axis (zero-padded partial last group)."""
    n = x.shape[-1]
    pad = -n % group
    xp = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    xb = xp.reshape(*x.shape[:-1], -1, group)
    amax = np.abs(xb).max(-1, keepdims=True)
    amax = np.where(amax <= 2.0 ** -24, np.float32(1), amax)
    s = np.float32(448) * (np.float32(1) / amax)
    q = np.clip(xb * s, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    return (q * (np.float32(1) / s)).reshape(xp.shape)[..., :n]


def activations(shape, seed=0) -> np.ndarray:
    """Tokens whose channels span several decades (outlier channels, as in an LLM's residual stream)."""
    rng = np.random.default_rng(seed)
    channel_scale = np.exp(2.0 * rng.standard_normal(shape[-1]))
    return (rng.standard_normal(shape) * channel_scale).astype(np.float32)


@pytest.mark.parametrize("form", GROUPED)
def test_dynamic_groups_of_64_match_numpy(form):
    spec = QuantizerSpec.from_dict(GROUPED[form])
    assert spec.is_dynamic and not spec.format.needs_amax(spec)  # nothing to calibrate
    x = activations((2, 3, 576))
    y = jax.jit(lambda v: fake_quant(v, spec=spec))(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y), reference(x, 64))


def test_partial_last_group_and_all_zero_group():
    """576 channels in groups of 128: the last group has 64 channels (zero padding leaves its amax alone); an
    all-zero group stays zero (its amax counts as 1, no 0/0)."""
    spec = QuantizerSpec(num_bits=(4, 3), block_sizes={-1: 128, "type": "dynamic"})
    x = activations((4, 576), seed=1)
    x[1, 128:256] = 0.0
    y = np.asarray(fake_quant(jnp.asarray(x), spec=spec))
    np.testing.assert_array_equal(y, reference(x, 128))
    assert np.all(y[1, 128:256] == 0.0)


def test_quantize_stores_one_scale_per_group_and_round_trips():
    spec = QuantizerSpec(num_bits=(4, 3), block_sizes={-1: 32, "type": "dynamic"})
    x = activations((5, 96), seed=2)
    qt = quantize(jnp.asarray(x), spec)
    assert qt.data.dtype == jnp.float8_e4m3fn and qt.scale.shape == (5, 3)
    amax = np.abs(x.reshape(5, 3, 32)).max(-1)
    np.testing.assert_allclose(np.asarray(qt.scale), np.float32(448) * (np.float32(1) / amax), rtol=0)
    np.testing.assert_array_equal(np.asarray(dequantize(qt, jnp.float32)), reference(x, 32))


def test_groups_keep_small_channels_out_of_the_subnormals():
    """A token whose outlier channel is 2^16 times its other channels: with one scale per token those fall
    scale to 0.0091, below E4M3's smallest normal 2^-6, where the step is the subnormal 2^-9 (4.67 steps -> 5:
    1.333 comes back as 1.429, 7 % off); a group without the outlier gets its own scale and keeps E4M3's
    normal relative bound (half an ulp: <= 2^-4 per element)."""
    x = np.full((1, 128), 1.0 + 1.0 / 3.0, np.float32)
    x[0, 0] = 2.0 ** 16
    per_token = QuantizerSpec(num_bits=(4, 3), block_sizes={-1: None, "type": "dynamic"})
    grouped = QuantizerSpec(num_bits=(4, 3), block_sizes={-1: 64, "type": "dynamic"})
    yt = np.asarray(fake_quant(jnp.asarray(x), spec=per_token))[0, 64:]
    yg = np.asarray(fake_quant(jnp.asarray(x), spec=grouped))[0, 64:]
    assert np.max(np.abs(yg - x[0, 64:]) / x[0, 64:]) <= 2.0 ** -4
    np.testing.assert_allclose(yt, 5 * 2.0 ** -9 * 2.0 ** 16 / 448, rtol=1e-6)  # beyond the normal bound
