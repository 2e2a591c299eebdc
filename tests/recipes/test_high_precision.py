"""HighPrecisionGemms: the named GEMMs multiply the unquantized operands, the others stay as the recipe says."""

import numpy as np
import pytest

from jq.numerics import nvfp4_fake_quant
from jq.recipes import DelayedScaling, HighPrecisionGemms, NVFP4BlockScaling

from ._helpers import normal, vjp_operands

T, K, N = 16, 32, 32
X, W, DY = normal(0, (T, K)), normal(1, (N, K), 0.5), normal(2, (T, N), 1e-3)
RTN = NVFP4BlockScaling(stochastic_rounding=False)


def test_fprop_in_high_precision_backward_still_nvfp4():
    y, _, _, ops = vjp_operands(HighPrecisionGemms(recipe=RTN, gemms=("fprop",)), X, W, DY)
    xq, wq = ops["fprop"]
    np.testing.assert_array_equal(xq, np.asarray(X, np.float32))  # unquantized
    np.testing.assert_array_equal(wq, np.asarray(W, np.float32))
    np.testing.assert_allclose(y, np.asarray(X) @ np.asarray(W).T, rtol=1e-6, atol=1e-6)
    dyq, wtq = ops["dgrad"]  # the backward is the recipe's: 1x16 dy, the 2D-quantized W^T
    np.testing.assert_array_equal(dyq, np.asarray(nvfp4_fake_quant(DY)))
    np.testing.assert_array_equal(wtq, np.asarray(nvfp4_fake_quant(W, two_d=True)).T)


def test_all_gemms_in_high_precision_is_the_plain_product():
    _, dx, dw, _ = vjp_operands(HighPrecisionGemms(recipe=RTN, gemms=("fprop", "dgrad", "wgrad")), X, W, DY)
    np.testing.assert_allclose(dx, np.asarray(DY) @ np.asarray(W), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dw, np.asarray(DY).T @ np.asarray(X), rtol=1e-6, atol=1e-9)


def test_wrapper_keeps_the_recipes_state_and_key():
    r = HighPrecisionGemms(recipe=DelayedScaling(amax_history_len=3))
    assert r.stateful and not r.needs_key and r.init_state().x.amax_history.shape == (3,)
    assert HighPrecisionGemms(recipe=NVFP4BlockScaling()).needs_key


@pytest.mark.parametrize("gemms", [(), ("fwd",)])
def test_unknown_gemm_names_are_refused(gemms):
    with pytest.raises(ValueError, match="HighPrecisionGemms.gemms"):
        HighPrecisionGemms(recipe=RTN, gemms=gemms)
