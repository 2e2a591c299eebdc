"""Recipe objects: TE's defaults, the operand plan of each GEMM, and validation errors."""

import dataclasses

import pytest

from jq.numerics import E4M3, E5M2
from jq.recipes import (
    DelayedScaling,
    Float8BlockScaling,
    Float8CurrentScaling,
    GemmPlan,
    MXFP8BlockScaling,
    NVFP4BlockScaling,
)


def test_nvfp4_defaults_follow_te_recipe():
    # TE NVFP4BlockScaling: disable_rht / disable_stochastic_rounding / disable_2d_quantization all False
    p = NVFP4BlockScaling().plan()
    assert (p.fprop_x.two_d, p.fprop_x.rht, p.fprop_x.stochastic_rounding) == (False, False, False)
    assert (p.fprop_w.two_d, p.fprop_w.rht, p.fprop_w.stochastic_rounding) == (True, False, False)
    assert p.dgrad_w == p.fprop_w  # one 16x16-quantized W serves fprop and dgrad
    assert (p.dgrad_dy.rht, p.dgrad_dy.stochastic_rounding) == (False, True)  # RHT only for wgrad
    assert (p.wgrad_dy.rht, p.wgrad_dy.stochastic_rounding) == (True, True)
    assert (p.wgrad_x.rht, p.wgrad_x.stochastic_rounding) == (True, False)  # SR only on gradients
    assert NVFP4BlockScaling().needs_key


@pytest.mark.parametrize(
    "toggle, changed",
    [
        ("rht", {"wgrad_dy", "wgrad_x"}),
        ("stochastic_rounding", {"dgrad_dy", "wgrad_dy"}),
        ("weight_2d", {"fprop_w", "dgrad_w"}),
    ],
)
def test_each_nvfp4_toggle_changes_exactly_its_operands(toggle, changed):
    on, off = NVFP4BlockScaling().plan(), NVFP4BlockScaling(**{toggle: False}).plan()
    differs = {slot for slot in GemmPlan.SLOTS if getattr(on, slot) != getattr(off, slot)}
    assert differs == changed


def test_four_over_six_is_off_by_default_and_touches_only_the_round_to_nearest_operands():
    assert not any(getattr(NVFP4BlockScaling().plan(), slot).four_over_six for slot in GemmPlan.SLOTS)
    on = NVFP4BlockScaling(four_over_six=True).plan()
    assert {slot for slot in GemmPlan.SLOTS if getattr(on, slot).four_over_six} == {
        "fprop_x", "fprop_w", "dgrad_w", "wgrad_x"}  # the gradient operands keep SR
    assert on.dgrad_w == on.fprop_w


def test_sr_off_needs_no_key():
    assert not NVFP4BlockScaling(stochastic_rounding=False).needs_key


def test_fp8_current_scaling_is_hybrid_by_default():
    p = Float8CurrentScaling().plan()
    assert p.fprop_x.fmt == E4M3 and p.fprop_w.fmt == E4M3 and p.dgrad_w.fmt == E4M3
    assert p.dgrad_dy.fmt == E5M2 and p.wgrad_dy.fmt == E5M2 and p.wgrad_x.fmt == E4M3
    assert Float8CurrentScaling(fp8_format="e4m3").plan().dgrad_dy.fmt == E4M3


def test_delayed_scaling_defaults_are_te_defaults():
    r = DelayedScaling()
    assert (r.margin, r.fp8_format, r.amax_history_len, r.amax_compute_algo) == (0, "hybrid", 1024, "max")
    assert r.stateful and r.plan().wgrad_dy.fmt == E5M2


def test_float8_block_scaling_defaults():
    # TE: E4M3 everywhere, x 1x128, W 128x128, grad 1x128, power-of-two scales
    p = Float8BlockScaling().plan()
    assert [getattr(p, s).two_d for s in GemmPlan.SLOTS] == [False, True, False, True, False, False]
    assert all(getattr(p, s).fmt == E4M3 and getattr(p, s).power_2 and getattr(p, s).block == 128 for s in GemmPlan.SLOTS)


def test_mxfp8_defaults_e4m3_everywhere_and_hybrid_gives_e5m2_gradients():
    assert MXFP8BlockScaling().plan().dgrad_dy.fmt.element == E4M3
    assert MXFP8BlockScaling(fp8_format="hybrid").plan().wgrad_dy.fmt.element == E5M2


def test_recipes_are_frozen_and_keyword_only():
    r = NVFP4BlockScaling()
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.rht = False
    with pytest.raises(TypeError):
        NVFP4BlockScaling(False)
    assert hash(r) == hash(NVFP4BlockScaling())  # usable as a static (jit / custom_vjp) argument


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Float8CurrentScaling(fp8_format="e5m2"), "fp8_format"),
        (lambda: DelayedScaling(amax_compute_algo="mean"), "amax_compute_algo"),
        (lambda: DelayedScaling(amax_history_len=0), "amax_history_len"),
        (lambda: Float8BlockScaling(x_block_scaling_dim=3), "x_block_scaling_dim"),
        (lambda: Float8BlockScaling(x_block_scaling_dim=2), "at most one"),
        (lambda: MXFP8BlockScaling(fp8_format="E4"), "MXFP8BlockScaling.fp8_format"),
    ],
)
def test_bad_recipe_fields_name_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()
