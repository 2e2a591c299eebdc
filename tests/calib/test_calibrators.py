"""Per-quantizer calibrators: the config field's forms (name or ModelOpt-style dict, frozen, round-tripping),
the errors for specs they cannot calibrate, which calibrator each quantizer ends up with, and their amaxes
through quantize / calibrate (weights from the params, activations from data, NaN in the data)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq
from jq.calib import calibrators as C
from jq.calib import histogram as H
from jq.calib import mse
from jq.calib.stats import Histogram
from jq.config import QuantConfig, QuantizerSpec

NVFP4_DYNAMIC = {"num_bits": (2, 1), "block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (4, 3)}}
MXFP8 = {"num_bits": (4, 3), "block_sizes": {-1: 32, "type": "dynamic", "scale_bits": (8, 0)}}


@pytest.mark.parametrize("value,want", [
    ("max", C.MaxCalibrator()),
    ("histogram", C.HistogramCalibrator()),
    ("percentile", C.HistogramCalibrator("percentile", percentile=99.99, num_bins=2048)),
    ({"method": "percentile", "percentile": 99.9, "num_bins": 1024}, C.HistogramCalibrator("percentile", 1024, 99.9)),
    ({"method": "entropy", "start_bin": 64, "stride": 2}, C.HistogramCalibrator("entropy", start_bin=64, stride=2)),
    ({"method": "mse_sweep", "step_size": 0.05}, C.MseSweepCalibrator(step_size=0.05)),
])
def test_config_forms_parse_freeze_and_round_trip(value, want):
    spec = QuantizerSpec.from_dict({"num_bits": 8, "calibrator": value})
    assert spec.calibrator == want
    hash(spec)  # specs stay hashable (jit cache keys)
    d = spec.to_dict()
    assert isinstance(d["calibrator"], (str, dict)) and C.parse(d["calibrator"]) == want
    assert QuantizerSpec.from_dict(json.loads(json.dumps(d))) == spec  # JSON checkpoints too


def test_to_config_writes_only_changed_options():
    assert C.parse({"method": "percentile", "percentile": 99.99}).to_config() == "percentile"
    assert C.parse({"method": "entropy", "num_bins": 512}).to_config() == {"method": "entropy", "num_bins": 512}


@pytest.mark.parametrize("value,match", [
    ("histgram", "calibrator must be one of"),
    ({"percentile": 99.0}, "needs a 'method'"),
    ({"method": "entropy", "percentile": 99.0}, "has no option 'percentile'"),
    ({"method": "percentile", "percentile": 120.0}, "percentile must be a number in"),
    ({"method": "percentile", "percentile": float("nan")}, "percentile must be a number"),
    ({"method": "mse", "num_bins": 1.5}, "num_bins must be an int"),
    ({"method": "mse", "num_bins": 64}, "start_bin must be an int"),  # the default start_bin 128 >= 64 bins
    ({"method": "mse_sweep", "start_multiplier": 2.0, "stop_multiplier": 1.0}, "stop_multiplier"),
    ({"method": "mse_sweep", "fp8_scale_sweep": "yes"}, "fp8_scale_sweep must be a bool"),
    (["percentile"], "calibrator must be one of"),
])
def test_bad_calibrator_values_name_the_problem(value, match):
    with pytest.raises(ValueError, match=match):
        QuantizerSpec.from_dict({"num_bits": 8, "calibrator": value})


@pytest.mark.parametrize("spec,calibrator,match", [
    (NVFP4_DYNAMIC, "percentile", "nvfp4 b16: its block scales are computed from the tensor at run time"),
    (MXFP8, "entropy", "mxfp8 b32"),
    ({"num_bits": 8, "type": "dynamic"}, "histogram", "it is dynamic"),
    (MXFP8, "mse_sweep", "it is dynamic"),
    ({"num_bits": 8}, {"method": "mse_sweep", "fp8_scale_sweep": True}, "searches static E4M3 block scales"),
    (NVFP4_DYNAMIC, {"method": "mse_sweep", "fp8_scale_sweep": True}, "searches static E4M3 block scales"),
    ({"num_bits": 8, "axis": 0}, "mse", "one histogram per tensor"),
    ({"num_bits": 4, "block_sizes": {-1: 128}}, "percentile", "one histogram per tensor"),
])
def test_histogram_calibrators_reject_what_they_cannot_calibrate(spec, calibrator, match):
    with pytest.raises(ValueError, match=match) as e:
        QuantConfig.from_dict({"quant_cfg": {"*input_quantizer": {**spec, "calibrator": calibrator}}})
    name = calibrator if isinstance(calibrator, str) else calibrator["method"]
    assert "quant_cfg['*input_quantizer']" in str(e.value) and repr(name) in str(e.value)


def test_sweep_calibrates_per_axis_and_per_block_specs():
    QuantizerSpec(num_bits=8, axis=0, calibrator="mse_sweep")
    QuantizerSpec(num_bits=4, block_sizes={-1: 128}, calibrator="mse_sweep")


def test_selection_explicit_wins_histogram_takes_the_method_max_takes_the_algorithms():
    percentile = C.HistogramCalibrator("percentile")
    sel = C.Selection(activations=percentile, weights=C.MseSweepCalibrator(), histogram_method="mse")
    assert sel(QuantizerSpec(num_bits=8)) == percentile
    assert sel(QuantizerSpec(num_bits=8, calibrator="entropy")) == C.HistogramCalibrator("entropy")
    assert sel(QuantizerSpec(num_bits=8, calibrator={"method": "histogram", "num_bins": 512})) == \
        C.HistogramCalibrator("mse", num_bins=512)
    assert sel(QuantizerSpec(num_bits=8, axis=0), is_weight=True) == C.MseSweepCalibrator()
    assert sel(QuantizerSpec(num_bits=8, axis=0)) == C.MaxCalibrator()  # no per-axis histograms: stays max
    assert sel(QuantizerSpec(**MXFP8), is_weight=True) == C.MaxCalibrator()
    assert C.Selection()(QuantizerSpec(num_bits=8, calibrator="histogram")).method == "entropy"  # the default


def test_weight_calibrators_see_the_weight_itself(rng):
    w = jnp.asarray(rng.laplace(size=(64, 48)), jnp.float32)  # [in, out]
    pct99 = {"method": "percentile", "percentile": 99.0}
    cfg = {"quant_cfg": {"*weight_quantizer": {"num_bits": 8, "calibrator": pct99},
                         "*input_quantizer": {"enable": False}}, "algorithm": "max"}
    qm = jq.quantize({"w": w}, lambda p, x: x @ p["w"], cfg, example_args=(jnp.ones((2, 64)),), progress=False)
    h = Histogram.of(w)
    assert float(qm.qstate["w.weight_quantizer"]["amax"]) == H.percentile_amax(h.counts, h.range, 99.0)
    cfg["quant_cfg"]["*weight_quantizer"] = {"num_bits": 4, "axis": 0, "calibrator": "mse_sweep"}
    qm = jq.quantize({"w": w}, lambda p, x: x @ p["w"], cfg, example_args=(jnp.ones((2, 64)),), progress=False)
    spec = QuantizerSpec(num_bits=4, axis=0)
    want = mse.sweep_amax(w.T, spec, 0, mse.multipliers())
    np.testing.assert_array_equal(qm.qstate["w.weight_quantizer"]["amax"], want)


def test_activation_histogram_over_batches_is_the_histogram_of_all_batches(rng):
    xs = [jnp.asarray(rng.laplace(size=(32, 16)) * s, jnp.float32) for s in (1.0, 3.0, 0.5)]
    pct = {"method": "percentile", "percentile": 99.5}
    cfg = {"quant_cfg": {"*weight_quantizer": {"num_bits": 8}, "*input_quantizer": {"num_bits": 8, "calibrator": pct}},
           "algorithm": "max"}
    qm = jq.quantize({"w": jnp.eye(16)}, lambda p, x: x @ p["w"], cfg, calib_data=[(x,) for x in xs], progress=False)
    h = Histogram.of(jnp.concatenate(xs))
    assert float(qm.qstate["w.input_quantizer"]["amax"]) == H.percentile_amax(h.counts, h.range, 99.5)


def test_nan_in_calibration_data_names_the_quantizer_and_batch(rng):
    good = jnp.asarray(rng.standard_normal((8, 16)), jnp.float32)
    cfg = {"quant_cfg": {"*weight_quantizer": {"num_bits": 8},
                         "*input_quantizer": {"num_bits": 8, "calibrator": "entropy"}}, "algorithm": "max"}
    with pytest.raises(ValueError, match=r"calibration batch 1 has NaN or inf values reaching quantizer\(s\) "
                                         r"\['w.input_quantizer'\]"):
        jq.quantize({"w": jnp.eye(16)}, lambda p, x: x @ p["w"], cfg,
                    calib_data=[(good,), (good.at[3, 3].set(jnp.inf),)], progress=False)


def test_a_two_pass_calibrator_needs_data_it_can_read_twice(rng):
    xs = [jnp.asarray(rng.standard_normal((8, 16)), jnp.float32) for _ in range(2)]
    cfg = {"quant_cfg": {"*input_quantizer": {"num_bits": 8, "calibrator": "mse_sweep"}}, "algorithm": "max"}
    with pytest.warns(UserWarning, match="got no calibration data"):
        qm = jq.quantize({"w": jnp.eye(16)}, lambda p, x: x @ p["w"], cfg, example_args=(xs[0],), progress=False)
    with pytest.raises(ValueError, match="read the data twice"):
        jq.calibrate(qm, ((x,) for x in xs), progress=False)
    # a list works: the amax is the sweep over all batches (losses summed over batches)
    out = jq.calibrate(qm, [(x,) for x in xs], progress=False)
    want = mse.sweep_amax(jnp.concatenate(xs), QuantizerSpec(num_bits=8), 0, mse.multipliers())
    assert float(out.qstate["w.input_quantizer"]["amax"]) == pytest.approx(float(want), rel=1e-6)
    assert jax.tree_util.tree_structure(out.qstate) == jax.tree_util.tree_structure(
        {"w.input_quantizer": {"amax": 0}, "w.weight_quantizer": {"amax": 0}})
