"""Property-based tests of the numerics (hypothesis): random shapes, block sizes, formats and amax edge cases.

Properties, for every format family (INT2..8 signed/unsigned/narrow per tensor/axis/block; FP8 E4M3/E5M2 per
tensor/axis/block; NVFP4 1D/2D; MXFP8/MXFP4/MXINT8):

* ``dequantize(quantize(x)) == fake_quant_reference(x) == fake_quant(x)`` (the primitive), bit for bit, with
  two documented exceptions: storage without a negative zero (integer codes; E2M1 code 8, which decodes to
  +0 as in ModelOpt) gives +0 where fake quant gives -0; formats without a NaN code (INT, MXINT8, E2M1
  elements) cannot store a NaN input, so NaN inputs are drawn only for FP8, MXFP8 and NVFP4 (whose NaN
  lands in the E4M3 block scale);
* idempotence ``fq(fq(x)) == fq(x)`` with a fixed amax (INT, FP8, NVFP4's global amax), for MX (the block
  exponent of ``fq(x)`` is that of ``x``) and for dynamic per-tensor INT (the recomputed scale
  ``fl(maxb / fl(maxb / s))`` equals ``s``). It does not always hold when FP8's amax or NVFP4's global amax
  is taken from the input: ``max|fq(x)|`` can be an ulp below ``amax``, which moves every scale
  (``test_fake_quant_with_an_amax_taken_from_its_input_is_not_always_idempotent`` shows one of each);
* outputs on the format's grid: ``y = q / s`` with integer ``q`` in range (INT), ``y = v * (1 / s)`` with
  ``v`` an FP8 value (FP8, checked with ml_dtypes), ``y / 2^k`` on the element grid (MX);
* NaN/inf rules: a NaN or infinite static amax gives NaN everywhere it applies; with a static amax a NaN
  element stays NaN alone and an infinite one saturates like the largest float; an MX block whose amax is
  infinite or NaN gets the largest exponent (127); NVFP4 with a tiny amax quantizes to zeros.
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jq.config import QuantizerSpec
from jq.fake_quant import fake_quant
from jq.numerics import E2M1_GRID, int_bounds, mx_quantize, MX_FORMATS
from jq.qtensor import dequantize, quantize
from jq.quantizer import compute_amax, fake_quant_reference

warnings.filterwarnings("ignore", category=RuntimeWarning)  # numpy reference math on inf/NaN
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EDGE_AMAX = [0.0, 1e-40, 2.0**-24, 2.0**-23, 1e-3, 1.0, 3e4, 3e38, np.inf, np.nan]
NVFP4_1D = {"num_bits": (2, 1), "block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (4, 3)}}
NVFP4_2D = {"num_bits": (2, 1), "block_sizes": {-1: 16, -2: 16, "type": "dynamic", "scale_bits": (4, 3)}}


def _mx(bits):
    return {"num_bits": bits, "block_sizes": {-1: 32, "type": "dynamic", "scale_bits": (8, 0)}}


# -- strategies ------------------------------------------------------------------------------------


@st.composite
def int_specs(draw):
    d = {"num_bits": draw(st.integers(2, 8)), "unsigned": draw(st.booleans()), "narrow_range": draw(st.booleans())}
    granularity = draw(st.sampled_from(["tensor", "axis", "block"]))
    if granularity == "axis":
        d["axis"] = draw(st.sampled_from([0, -1]))
    elif granularity == "block":
        d["block_sizes"] = {-1: draw(st.sampled_from([2, 3, 4, 8, 16]))}
    return QuantizerSpec.from_dict(d)


@st.composite
def fp8_specs(draw):
    d = {"num_bits": draw(st.sampled_from([(4, 3), (5, 2)]))}
    granularity = draw(st.sampled_from(["tensor", "axis", "block", "block2d"]))
    if granularity == "axis":
        d["axis"] = draw(st.sampled_from([0, -1]))
    elif granularity == "block":
        d["block_sizes"] = {-1: draw(st.sampled_from([2, 4, 8]))}
    elif granularity == "block2d":
        d["block_sizes"] = {-1: draw(st.sampled_from([2, 4])), -2: draw(st.sampled_from([1, 2]))}
    return QuantizerSpec.from_dict(d)


SPECS = {
    "int": int_specs(),
    "fp8": fp8_specs(),
    "nvfp4": st.sampled_from([QuantizerSpec.from_dict(NVFP4_1D), QuantizerSpec.from_dict(NVFP4_2D)]),
    "mx": st.sampled_from([QuantizerSpec.from_dict(_mx(b)) for b in [(4, 3), (2, 1), 8]]),
}
STORES_NAN = ("fp8", "mxfp8", "nvfp4")
STORES_NEGATIVE_ZERO = ("fp8", "mxfp8")


def floats(allow_nan=False, allow_infinity=False, max_magnitude=1e6):
    finite = st.floats(-max_magnitude, max_magnitude, width=32, allow_subnormal=True)
    special = [st.just(0.0), st.just(-0.0), st.sampled_from([1e-40, -1e-40, 2.0**-24, 6.0, -448.0, 57344.0])]
    if allow_nan:
        special.append(st.just(float("nan")))
    if allow_infinity:
        special.append(st.sampled_from([float("inf"), float("-inf")]))
    return st.one_of(finite, *special)


SHAPES = [(1, 16), (2, 7), (3, 33), (2, 64)]  # few shapes: each (spec, shape) compiles once


def tensors(allow_nan=False, allow_infinity=False):
    return hnp.arrays(np.float32, st.sampled_from(SHAPES), elements=floats(allow_nan, allow_infinity))


@st.composite
def amaxes(draw, x, spec, edge=True):
    """The max-calibrated amax of ``x``, or (sometimes) the same shape filled with edge values."""
    amax = compute_amax(jnp.asarray(x), spec)
    if amax is None or not edge or draw(st.booleans()):
        return amax
    values = draw(hnp.arrays(np.float32, np.shape(amax), elements=st.sampled_from(EDGE_AMAX)))
    return jnp.asarray(values)


# -- helpers ---------------------------------------------------------------------------------------


def _assert_same(a, b, signed_zero: bool):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    keep = ~np.isnan(a)
    np.testing.assert_array_equal(a[keep], b[keep])
    if signed_zero:
        np.testing.assert_array_equal(np.signbit(a[keep]), np.signbit(b[keep]))


@functools.lru_cache(maxsize=None)
def _jitted(spec):
    """``fake_quant_reference``, ``dequantize(quantize(.))`` and the ``fake_quant`` primitive, jitted for ``spec``."""
    return (jax.jit(lambda x, a: fake_quant_reference(x, spec, a)),
            jax.jit(lambda x, a: dequantize(quantize(x, spec, a), jnp.float32)),
            jax.jit(lambda x, a: fake_quant(x, a, spec=spec)),
            jax.jit(lambda x, a: quantize(x, spec, a).scale))


def _fq(x, spec, amax):
    return np.asarray(_jitted(spec)[0](jnp.asarray(x), amax), np.float32)


# -- dequantize(quantize(x)) == fake quant ---------------------------------------------------------


@SETTINGS
@given(data=st.data(), family=st.sampled_from(sorted(SPECS)))
def test_dequantize_of_quantize_equals_fake_quant(data, family):
    spec = data.draw(SPECS[family])
    x = data.draw(tensors(allow_nan=spec.kind in STORES_NAN, allow_infinity=True))
    amax = data.draw(amaxes(x, spec))
    reference, storage, primitive, _ = _jitted(spec)
    y = np.asarray(reference(jnp.asarray(x), amax))
    _assert_same(storage(jnp.asarray(x), amax), y, signed_zero=spec.kind in STORES_NEGATIVE_ZERO)
    _assert_same(primitive(jnp.asarray(x), amax), y, signed_zero=True)


# -- idempotence -----------------------------------------------------------------------------------


@SETTINGS
@given(data=st.data(), family=st.sampled_from(sorted(SPECS)))
def test_fake_quant_is_idempotent_with_a_fixed_amax(data, family):
    spec = data.draw(SPECS[family])
    x = data.draw(tensors())
    amax = compute_amax(jnp.asarray(x), spec)  # fixed: reused for the second application
    if amax is not None:
        amax = jnp.maximum(amax, 2.0**-20)  # a normal scale (tiny amaxes quantize to zeros: trivially idempotent)
    y = _fq(x, spec, amax)
    _assert_same(_fq(y, spec, amax), y, signed_zero=True)


@pytest.mark.parametrize("spec,seed", [(QuantizerSpec(num_bits=(4, 3), type="dynamic"), 3),
                                       (QuantizerSpec.from_dict(NVFP4_1D), 1)], ids=["fp8_dynamic", "nvfp4_dynamic_global"])
def test_fake_quant_with_an_amax_taken_from_its_input_is_not_always_idempotent(spec, seed):
    # max|fq(x)| = 448 * (1 / s) (FP8) or 6 * s_b * gs (NVFP4) is an ulp below amax here: the scale moves
    x = np.random.default_rng(seed).standard_normal((1, 16)).astype(np.float32)
    y = _fq(x, spec, None)
    assert np.abs(y).max() < np.abs(x).max()
    assert not np.array_equal(_fq(y, spec, None), y)


@SETTINGS
@given(data=st.data())
def test_dynamic_int_fake_quant_is_idempotent(data):
    # fl(maxb / fl(maxb / fl(maxb / amax))) == fl(maxb / amax): the recomputed scale is the same
    d = {"num_bits": data.draw(st.integers(2, 8)), "type": "dynamic"}
    spec = QuantizerSpec.from_dict(d)
    x = data.draw(tensors())
    y = _fq(x, spec, None)
    _assert_same(_fq(y, spec, None), y, signed_zero=True)


# -- outputs on the format's grid ------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_int_outputs_are_integer_codes_over_the_scale(data):
    spec = data.draw(int_specs())
    x = data.draw(tensors())
    amax = data.draw(amaxes(x, spec, edge=False))
    stored_scale = np.asarray(_jitted(spec)[3](jnp.asarray(x), amax))
    y = _fq(x, spec, amax)
    lo, hi = int_bounds(spec.num_bits, spec.unsigned, spec.narrow_range)
    # independent of jq's arithmetic: recover q = round(y * s) and check y == q / s in numpy (IEEE division)
    scale = _broadcast_scale(spec, stored_scale, x.shape)
    q = np.round(y * scale)
    assert ((q >= lo) & (q <= hi)).all()
    np.testing.assert_array_equal(q / scale, y)


def _broadcast_scale(spec, s, shape):
    """Per-element scale from a QTensor's per-tensor/axis/block scale."""
    if spec.block_sizes is None:
        return np.broadcast_to(s, shape).astype(np.float32)
    (axis, b), = spec.block_sizes.sizes
    return np.repeat(s, b, axis=-1)[..., :shape[-1]].astype(np.float32)


@SETTINGS
@given(data=st.data())
def test_fp8_outputs_are_fp8_values_times_the_inverse_scale(data):
    fmt = data.draw(st.sampled_from([((4, 3), ml_dtypes.float8_e4m3fn, 448.0), ((5, 2), ml_dtypes.float8_e5m2, 57344.0)]))
    spec = QuantizerSpec(num_bits=fmt[0])
    x = data.draw(tensors(allow_infinity=True))
    amax = np.float32(max(np.abs(x[np.isfinite(x)]).max(initial=0), 2.0**-20))
    y = _fq(x, spec, jnp.float32(amax))
    s = np.float32(fmt[2]) * (np.float32(1) / amax)  # ModelOpt's scale arithmetic
    v = np.clip(y * s, -fmt[2], fmt[2]).astype(fmt[1]).astype(np.float32)  # nearest FP8 value (ml_dtypes RNE)
    np.testing.assert_array_equal(v * (np.float32(1) / s), y)


MX_SPECS = {"mxfp8": QuantizerSpec.from_dict(_mx((4, 3))), "mxfp4": QuantizerSpec.from_dict(_mx((2, 1))),
            "mxint8": QuantizerSpec.from_dict(_mx(8))}


@functools.lru_cache(maxsize=None)
def _mx_elements_and_exponents(name):
    def fn(x):
        q, k, layout = mx_quantize(x, MX_FORMATS[name])
        return layout.merge(q), layout.merge(jnp.broadcast_to(k, layout.blocked_shape))
    return jax.jit(fn)


@SETTINGS
@given(x=tensors(), name=st.sampled_from(sorted(MX_FORMATS)))
def test_mx_outputs_are_element_grid_values_times_the_block_power_of_two(x, name):
    elements, exponent = (np.asarray(v) for v in _mx_elements_and_exponents(name)(jnp.asarray(x)))
    if name == "mxfp4":
        assert np.isin(np.abs(elements), E2M1_GRID).all()
    elif name == "mxint8":
        assert (elements == np.round(elements)).all() and (np.abs(elements) <= 127).all()
    else:
        assert (elements.astype(ml_dtypes.float8_e4m3fn).astype(np.float32) == elements).all()
    want = np.ldexp(elements, exponent).astype(np.float32)
    y = _fq(x, MX_SPECS[name], None)
    normal = (want == 0) | (np.abs(want) >= np.finfo(np.float32).tiny)  # XLA CPU flushes subnormal results
    np.testing.assert_array_equal(y[normal], want[normal])


# -- NaN and infinity ------------------------------------------------------------------------------


@SETTINGS
@given(data=st.data(), family=st.sampled_from(["int", "fp8", "nvfp4"]), bad=st.sampled_from([np.nan, np.inf]))
def test_a_nan_or_infinite_static_amax_gives_nan_everywhere(data, family, bad):
    spec = data.draw(SPECS[family])
    x = data.draw(tensors())
    amax = compute_amax(jnp.asarray(x), spec)
    y = _fq(x, spec, jnp.full(np.shape(amax), bad, jnp.float32))
    assert np.isnan(y).all()


@SETTINGS
@given(data=st.data(), family=st.sampled_from(["int", "fp8"]), position=st.integers(0, 10**6))
def test_with_a_static_amax_nan_stays_alone_and_inf_saturates_like_the_largest_float(data, family, position):
    spec = data.draw(SPECS[family])
    x = data.draw(tensors())
    amax = jnp.maximum(compute_amax(jnp.asarray(x), spec), 2.0**-20)
    i = np.unravel_index(position % x.size, x.shape)
    for special, stand_in in [(np.nan, 0.0), (np.inf, np.finfo(np.float32).max), (-np.inf, -np.finfo(np.float32).max)]:
        xs, xf = x.copy(), x.copy()
        xs[i], xf[i] = special, stand_in
        ys, yf = _fq(xs, spec, amax), _fq(xf, spec, amax)
        others = np.ones(x.shape, bool)
        others[i] = False
        _assert_same(ys[others], yf[others], signed_zero=True)
        assert np.isnan(ys[i]) if np.isnan(special) else ys[i] == yf[i]


@pytest.mark.parametrize("name", sorted(MX_FORMATS))
@pytest.mark.parametrize("special", [np.inf, -np.inf, np.nan])
def test_an_mx_block_with_an_infinite_or_nan_element_gets_the_largest_exponent(name, special):
    # ceil(log2(inf / dmax)) clamps to 127; NaN too, as the kernels' bit-level exponent (field 255) gives
    x = np.linspace(1000, 2000, 64, dtype=np.float32).reshape(2, 32)
    clean = np.asarray(mx_quantize(jnp.asarray(x), MX_FORMATS[name])[1]).ravel()
    x[0, 3] = special
    k = np.asarray(mx_quantize(jnp.asarray(x), MX_FORMATS[name])[1]).ravel()
    assert k[0] == 127 and k[1] == clean[1]
    y = _fq(x, MX_SPECS[name], None)
    assert np.isnan(y[0, 3]) if np.isnan(special) else y[0, 3] == special  # dmax * 2^127 overflows to inf
    assert (y[0, np.arange(32) != 3] == 0).all()  # 1000..2000 * 2^-127 rounds to zero


@SETTINGS
@given(x=tensors(), two_d=st.booleans(), amax=st.sampled_from([0.0, 1e-40, 1e-37, 3e-35, 1e-33]))
def test_nvfp4_with_an_amax_below_the_normal_global_scale_range_gives_zeros(x, two_d, amax):
    # gs = amax / 2688 < 2^-117: XLA CPU flushed s_b * gs to zero and 0 / 0 gave NaN; now gs = 1 (as for amax 0)
    spec = QuantizerSpec.from_dict(NVFP4_2D if two_d else NVFP4_1D)
    xs = (x / max(np.abs(x).max(), 1.0) * amax).astype(np.float32)
    y = _fq(xs, spec, jnp.float32(amax))
    assert not np.isnan(y).any()
    assert (y == 0).all()
