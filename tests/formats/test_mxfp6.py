"""MXFP6 (OCP MX v1.0 E3M2 / E2M3 elements): the format added as one file (jq/formats/mxfp6.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

import jq
from jq.config import QuantizerSpec
from jq.formats.mxfp6 import E2M3, E3M2, MXFP6_E2M3, MXFP6_E3M2
from jq.numerics import round_to_minifloat
from jq.qtensor import dequantize, quantize

MX = {-1: 32, "type": "dynamic", "scale_bits": (8, 0)}


def _grid(fmt):
    """Every non-negative value of the element format, from its definition (OCP MX v1.0 §5.3.2)."""
    m, bias = fmt.mantissa_bits, 1 - fmt.min_exponent
    vals = [(k / 2**m) * 2.0 ** (1 - bias) for k in range(2**m)]  # subnormals (exponent field 0)
    for e in range(1, 2**fmt.exponent_bits):
        vals += [(1 + k / 2**m) * 2.0 ** (e - bias) for k in range(2**m)]
    return np.array(vals, np.float32)


@pytest.mark.parametrize("fmt, top, step", [(E3M2, 28.0, 0.0625), (E2M3, 7.5, 0.125)])
def test_element_grids_match_the_ocp_definition(fmt, top, step):
    grid = _grid(fmt)
    assert grid.max() == top == fmt.max_value and grid[1] == step
    assert np.array_equal(np.asarray(round_to_minifloat(jnp.asarray(grid), fmt)), grid)


@pytest.mark.parametrize("fmt", [MXFP6_E3M2, MXFP6_E2M3])
def test_all_64_codes_round_trip(fmt):
    grid = _grid(fmt.minifloat)
    values = np.concatenate([grid, -grid]).astype(np.float32)
    codes = np.asarray(fmt.encode(jnp.asarray(values)))
    assert sorted(set(codes.tolist())) == list(range(64))
    assert np.array_equal(np.asarray(fmt.decode(jnp.asarray(codes))), values)


@pytest.mark.parametrize("bits, name", [((3, 2), "mxfp6_e3m2"), ((2, 3), "mxfp6_e2m3")])
def test_quantize_round_trips_and_scales_are_powers_of_two(bits, name):
    spec = QuantizerSpec(num_bits=bits, block_sizes=MX)
    x = jnp.linspace(-3.0, 5.0, 64).reshape(2, 32)
    qt = quantize(x, spec)
    assert qt.format == name and qt.data.dtype == jnp.uint8 and qt.scale.shape == (2, 1)
    y = dequantize(qt)
    assert np.array_equal(np.asarray(y), np.asarray(jq.fake_quant(x, spec=spec)))
    # the block maximum is representable without clipping: ceil(log2(amax / dmax)) keeps it in range
    assert float(jnp.max(jnp.abs(y[1]))) == pytest.approx(5.0, rel=2 ** -spec.num_bits[1])


def test_bits_and_description():
    spec = QuantizerSpec(num_bits=(2, 3), block_sizes=MX)
    assert spec.bits_per_element == 6.25 and spec.describe() == "mxfp6_e2m3 b32"


def test_an_mxfp6_model_runs_without_calibration():
    cfg = {"quant_cfg": {"*weight_quantizer": {"num_bits": (3, 2), "block_sizes": MX},
                         "*input_quantizer": {"num_bits": (2, 3), "block_sizes": MX}}, "algorithm": None}
    w = jnp.linspace(-1, 1, 64 * 32).reshape(64, 32)
    x = jnp.linspace(-2, 2, 4 * 64).reshape(4, 64)
    qm = jq.quantize({"w": w}, lambda p, x: x @ p["w"], cfg, calib_data=[(x,)], progress=False)
    y = qm.apply(qm.params, x)
    assert np.abs(np.asarray(y - x @ w)).max() < 0.1 * np.abs(np.asarray(x @ w)).max()
    assert qm.qstate == {}
