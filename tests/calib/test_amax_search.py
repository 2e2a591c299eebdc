"""The ``percentile``, ``entropy`` and ``mse`` algorithms (``jq.calibrate(qm, data, algorithm=...)``): which
quantizers they change (activations from histograms of all the batches, weights as ModelOpt's), per layer in a
layer scan, and the error when a model has nothing they can calibrate."""

import jax.numpy as jnp
import numpy as np
import pytest

import jq
from jq.calib import algorithms, mse
from jq.calib import histogram as H
from jq.calib.stats import Histogram
from jq.config import QuantizerSpec
from tests import _models as M


@pytest.fixture(scope="module")
def plain():
    rng = np.random.default_rng(1)
    p = {"w": jnp.asarray(rng.standard_normal((32, 16)), jnp.float32)}
    xs = [jnp.asarray(rng.laplace(size=(64, 32)) * s, jnp.float32) for s in (1.0, 2.5)]
    qm = jq.quantize(p, lambda p, x: x @ p["w"], jq.INT8_DEFAULT_CFG, calib_data=[(x,) for x in xs], progress=False)
    return qm, xs


def test_names_and_options_are_registered():
    assert {"percentile", "entropy", "mse"} <= set(algorithms.names())
    assert algorithms.make({"method": "percentile", "percentile": 99.9}).percentile == 99.9
    with pytest.raises(ValueError, match="has no option 'alpha'"):
        algorithms.make({"method": "entropy", "alpha": 0.5})
    with pytest.raises(ValueError, match="percentile must be a number"):
        algorithms.make({"method": "percentile", "percentile": 101})
    with pytest.raises(ValueError, match="activations must be"):
        algorithms.make({"method": "mse", "activations": "kl"})


@pytest.mark.parametrize("algorithm", ["percentile", "entropy", "mse"])
def test_activations_from_the_histogram_of_all_batches_weights_as_modelopt(plain, algorithm):
    qm, xs = plain
    out = jq.calibrate(qm, [(x,) for x in xs], algorithm=algorithm, progress=False)
    h = Histogram.of(jnp.concatenate(xs))
    spec = QuantizerSpec(num_bits=8)
    want = {"percentile": lambda: H.percentile_amax(h.counts, h.range, 99.99),
            "entropy": lambda: H.entropy_amax(h.counts, h.range),
            "mse": lambda: float(H.mse_amax(h.counts, h.range, spec))}[algorithm]()
    assert float(out.qstate["w.input_quantizer"]["amax"]) == want
    assert want < float(qm.qstate["w.input_quantizer"]["amax"])  # the max
    w_amax = out.qstate["w.weight_quantizer"]["amax"]
    if algorithm == "mse":  # ModelOpt's mse: the multiplier sweep per output channel
        want_w = mse.sweep_amax(qm.params["w"].T, QuantizerSpec(num_bits=8, axis=0), 0, mse.multipliers())
        np.testing.assert_array_equal(w_amax, want_w)
        assert not np.array_equal(w_amax, qm.qstate["w.weight_quantizer"]["amax"])
    else:  # percentile / entropy: weights keep max, as ModelOpt's ONNX PTQ
        np.testing.assert_array_equal(w_amax, qm.qstate["w.weight_quantizer"]["amax"])


def test_mse_sweep_of_activations_reads_the_data_twice(plain):
    qm, xs = plain
    out = jq.calibrate(qm, [(x,) for x in xs], algorithm={"method": "mse", "activations": "sweep"}, progress=False)
    want = mse.sweep_amax(jnp.concatenate(xs), QuantizerSpec(num_bits=8), 0, mse.multipliers())
    assert float(out.qstate["w.input_quantizer"]["amax"]) == pytest.approx(float(want), rel=1e-6)


def test_a_configured_calibrator_is_kept_and_histogram_takes_the_algorithms_method(plain):
    qm, xs = plain
    pct90 = {"method": "percentile", "percentile": 90.0}
    cfg = {"quant_cfg": {**jq.INT8_DEFAULT_CFG["quant_cfg"], "*input_quantizer": {"num_bits": 8, "calibrator": pct90}},
           "algorithm": "entropy"}
    h = Histogram.of(jnp.concatenate(xs))
    kept = jq.quantize(qm.params, qm.apply_fn, cfg, calib_data=[(x,) for x in xs], progress=False)
    assert float(kept.qstate["w.input_quantizer"]["amax"]) == H.percentile_amax(h.counts, h.range, 90.0)
    cfg["quant_cfg"]["*input_quantizer"] = {"num_bits": 8, "calibrator": "histogram"}
    cfg["algorithm"] = "percentile"
    took = jq.quantize(qm.params, qm.apply_fn, cfg, calib_data=[(x,) for x in xs], progress=False)
    assert float(took.qstate["w.input_quantizer"]["amax"]) == H.percentile_amax(h.counts, h.range, 99.99)


def test_per_layer_amaxes_in_a_layer_scan(rng):
    """Histograms of a layer scan's quantizers are kept per layer, for activations (stacked statistics) and for
    weights (calibrated per layer under vmap)."""
    x = jnp.asarray(rng.laplace(size=(32, 8)), jnp.float32)
    p, f = M.linen(M.ScanStack(), x)
    cfg = {"quant_cfg": {**jq.FP8_DEFAULT_CFG["quant_cfg"],
                         "*weight_quantizer": {"num_bits": (4, 3), "calibrator": {"method": "percentile",
                                                                                  "percentile": 99.0}}},
           "algorithm": "entropy"}
    qm = jq.quantize(p, f, cfg, calib_data=[(x,)], progress=False)
    acts = qm.qstate["layers.fc.input_quantizer"]["amax"]
    assert acts.shape == (3,) and len(set(np.asarray(acts).tolist())) == 3 and bool(jnp.all(acts > 0))
    kernel = p["params"]["layers"]["fc"]["kernel"]  # (layers, in, out)
    for layer in range(3):
        h = Histogram.of(kernel[layer])
        want = H.percentile_amax(h.counts, h.range, 99.0)
        assert float(qm.qstate["layers.fc.weight_quantizer"]["amax"][layer]) == want


def test_an_algorithm_that_changes_nothing_is_an_error(rng):
    x = jnp.asarray(rng.standard_normal((4, 32)), jnp.float32)
    qm = jq.quantize({"w": jnp.eye(32)}, lambda p, x: x @ p["w"], jq.MXFP8_DEFAULT_CFG, calib_data=[(x,)],
                     progress=False)
    with pytest.raises(ValueError, match="calibration algorithm 'entropy' applies to no quantizer of this model"):
        jq.calibrate(qm, [(x,)], algorithm="entropy", progress=False)
    with pytest.raises(ValueError, match="unknown calibration algorithm 'entropie'.*did you mean 'entropy'"):
        jq.calibrate(qm, [(x,)], algorithm="entropie", progress=False)


def test_the_mse_algorithm_hands_its_sweep_options_to_the_sweep_calibrators():
    from jq.calib.amax_search import MSECalibration
    from jq.calib.calibrators import MseSweepCalibrator

    sel = MSECalibration(start_multiplier=0.5, stop_multiplier=2.0, step_size=0.5, fp8_scale_sweep=True,
                         activations="sweep").selection()
    assert sel.weights == MseSweepCalibrator(0.5, 2.0, 0.5, fp8_scale_sweep=True)
    assert sel.activations == MseSweepCalibrator(0.5, 2.0, 0.5)  # block-scale search is for weights only


@pytest.mark.parametrize("method, options, field", [("percentile", {"num_bins": 1}, "num_bins"),
                                                    ("entropy", {"stride": 0}, "stride"),
                                                    ("mse", {"step_size": 0}, "step_size")])
def test_bad_options_are_refused_when_the_algorithm_is_built(method, options, field):
    with pytest.raises(ValueError, match=field):
        algorithms.make({"method": method, **options})
