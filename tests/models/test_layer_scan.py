"""jq.models.layer_scan: calibrating through the layer-scanned twin gives the unrolled model's calibration.

Reference: ``jq.quantize`` of the unrolled ``jq.models.forward`` on the same data. Maxima are the same maximum;
AWQ's losses are f32 sums whose order differs, so the chosen scales agree to f32 rounding (rtol 1e-5).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq
import jq.models as jm
from jq import deploy
from jq.models import layer_scan
from tests.models.conftest import tiny_model

CALIB = jnp.asarray([[3, 17, 5, 40, 22, 9, 31, 0], [1, 2, 3, 4, 5, 6, 7, 8]], jnp.int32)


@pytest.mark.parametrize("presets", [("FP8_DEFAULT_CFG", "FP8_KV_CFG"), ("INT4_AWQ_CFG",)])
def test_scanned_calibration_equals_the_unrolled_one(presets):
    _, config, params = tiny_model()
    cfg = jq.merge_presets(*(getattr(jq, p) for p in presets))
    ref = jq.quantize(params, jm.make_forward(config), cfg, calib_data=[(CALIB,)], progress=False)
    qm = layer_scan.quantize_scanned(params, config, cfg, calib_data=[(CALIB,)], progress=False)
    assert sorted(qm.qstate) == sorted(ref.qstate)
    for name, entry in ref.qstate.items():
        assert sorted(qm.qstate[name]) == sorted(entry), name
        for key, v in entry.items():
            np.testing.assert_allclose(np.asarray(qm.qstate[name][key]), np.asarray(v), rtol=1e-5, atol=1e-7,
                                       err_msg=f"{name}[{key}]")
    # the result is the unrolled model: its logits and its realized weights are the reference's
    # under jit: op by op the fake quant costs seconds of eager compiles
    np.testing.assert_allclose(np.asarray(jax.jit(qm.apply)(qm.params, CALIB)),
                               np.asarray(jax.jit(ref.apply)(ref.params, CALIB)), rtol=1e-4, atol=1e-4)
    assert deploy.realize(qm).plan == deploy.realize(ref).plan


def test_scanned_forward_is_forward():
    _, config, params = tiny_model()
    np.testing.assert_allclose(
        np.asarray(layer_scan.scanned_forward(layer_scan.stack_layers(params), CALIB, config=config)),
        np.asarray(jm.forward(params, CALIB, config=config)), rtol=1e-5, atol=1e-5)


def test_unstack_qstate_slices_layer0_names_per_layer_and_refuses_a_missing_layer_axis():
    state = {"model.layers.0.mlp.up_proj.input_quantizer": {"amax": jnp.asarray([1.0, 2.0, 3.0])},
             "lm_head.input_quantizer": {"amax": jnp.asarray(5.0)}}
    out = layer_scan.unstack_qstate(state, 3)
    assert [float(out[f"model.layers.{i}.mlp.up_proj.input_quantizer"]["amax"]) for i in range(3)] == [1, 2, 3]
    assert float(out["lm_head.input_quantizer"]["amax"]) == 5.0
    with pytest.raises(ValueError, match=r"model.layers.0.mlp.up_proj.input_quantizer\['amax'\] has shape \(3,\)"):
        layer_scan.unstack_qstate(state, 4)


def test_quantize_scanned_refuses_per_layer_configs_and_empty_data():
    _, config, params = tiny_model()
    cfg = jq.as_config(jq.FP8_DEFAULT_CFG).with_entries(("model.layers.1.mlp.up_proj.input_quantizer", False))
    with pytest.raises(ValueError, match="model.layers.1.mlp.up_proj.input_quantizer"):
        layer_scan.quantize_scanned(params, config, cfg, calib_data=[(CALIB,)], progress=False)
    with pytest.raises(ValueError, match="needs calibration data"):
        layer_scan.quantize_scanned(params, config, jq.FP8_DEFAULT_CFG, calib_data=[])
