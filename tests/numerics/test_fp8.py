"""FP8 fake quantization (ModelOpt ``scaled_e4m3`` CPU reference)."""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jq.numerics import fp8_fake_quant, fp8_quant_scale, fp8_quantize


def test_amax_equal_to_max_value_is_a_plain_cast(rng):
    x = (rng.standard_normal(1000) * 100).astype(np.float32).clip(-448, 448)
    y = fp8_fake_quant(jnp.asarray(x), jnp.float32(448.0))
    np.testing.assert_array_equal(y, x.astype(ml_dtypes.float8_e4m3fn).astype(np.float32))


def test_scale_is_max_times_reciprocal_of_amax():
    # PyTorch evaluates 448.0 / amax as (1 / amax) * 448: the value ModelOpt actually uses
    amax = np.float32(3.5762787e-03)
    assert float(fp8_quant_scale(jnp.float32(amax))) == float(np.float32(448) * (np.float32(1) / amax))


def test_values_beyond_amax_saturate_at_448():
    y = np.asarray(fp8_fake_quant(jnp.array([10.0, -10.0, 1.0]), jnp.float32(2.0)))
    np.testing.assert_allclose(y, [2.0, -2.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize("amax", [0.0, 2.0**-30, 2.0**-24])
def test_tiny_amax_is_treated_as_one(amax):
    x = jnp.array([0.3, -0.02, 1e-9])
    np.testing.assert_array_equal(fp8_fake_quant(x, jnp.float32(amax)), fp8_fake_quant(x, jnp.float32(1.0)))


def test_e5m2_range():
    q, s = fp8_quantize(jnp.array([57344.0, 1e6, 3.0]), jnp.float32(57344.0), "e5m2")
    np.testing.assert_array_equal(q, [57344, 57344, 3])


def test_unknown_format_name():
    with pytest.raises(ValueError, match="unknown FP8 format"):
        fp8_fake_quant(jnp.ones(2), jnp.float32(1), "e3m4")
