"""GPTQ calibration: sequential Hessians on the quantized model, weights written back, scans, NVFP4, errors."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq
import jq.models as jm
from jq.presets import with_output_head
from jq.calib.gptq_solve import gptq_quantize, shrink_grid
from jq.fake_quant import fake_quant
from tests import _models as M
from tests.models.conftest import tiny_model

W4 = {"num_bits": 4, "block_sizes": {-1: 16}, "enable": True}
INT4_G16 = with_output_head(jq.merge_presets(jq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG, {"quant_cfg": {"*weight_quantizer": W4}}))
W4A8 = jq.merge_presets(INT4_G16, {"quant_cfg": {"*input_quantizer": {"num_bits": 8, "axis": None}}})


def mlp(p, x):
    return jax.nn.gelu(x @ p["w1"]) @ p["w2"]


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    p = {"w1": jnp.asarray(rng.standard_normal((32, 48)) / 5, jnp.float32),
         "w2": jnp.asarray(rng.standard_normal((48, 8)) / 7, jnp.float32)}
    x = rng.standard_normal((64, 32)).astype(np.float32)
    x[:, 3] *= 6.0
    return p, jnp.asarray(x)


def _gptq(p, x, cfg, **options):
    alg = {"method": "gptq", "block_size": 16, **options}
    return jq.quantize(p, mlp, {**with_output_head(cfg), "algorithm": alg}, calib_data=[(x[:32],), (x[32:],)], progress=False)


@pytest.mark.parametrize("sequential", [True, False])
def test_hessians_come_from_the_inputs_the_quantized_model_produces(problem, sequential):
    p, x = problem
    qm = _gptq(p, x, W4A8, sequential=sequential, scale_search=False)
    spec = qm.spec("w2.weight_quantizer")
    # sequential: w1 is GPTQ-quantized (its new params sit on the grid) before w2's Hessian; otherwise float
    w1 = qm.params["w1"] if sequential else p["w1"]
    xq = fake_quant(x, qm.qstate["w1.input_quantizer"]["amax"], spec=qm.spec("w1.input_quantizer"))
    hid = jax.nn.gelu(xq @ w1)
    hq = fake_quant(hid, qm.qstate["w2.input_quantizer"]["amax"], spec=qm.spec("w2.input_quantizer"))
    amax0 = spec.format.compute_amax(p["w2"].T, spec)  # max calibration of the original weight
    want, _, _ = gptq_quantize(p["w2"].T, hq.T @ hq, amax0, spec=spec, block_size=16)
    np.testing.assert_allclose(qm.params["w2"].T, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("search_hessian", [True, False], ids=["hessian-weighted", "plain"])
def test_scale_search_options_reach_the_solver(problem, search_hessian):
    p, x = problem
    qm = _gptq(p, x, INT4_G16, sequential=False, scale_search=True, min_shrink=0.5, shrink_step=0.05,
               search_norm=2.0, search_hessian=search_hessian)
    spec = qm.spec("w2.weight_quantizer")
    hid = jax.nn.gelu(x @ p["w1"])  # non-sequential: float w1, float inputs (no input quantizer)
    amax0 = spec.format.compute_amax(p["w2"].T, spec)
    want, amax, _ = gptq_quantize(p["w2"].T, hid.T @ hid, amax0, spec=spec, block_size=16,
                                  shrink=shrink_grid(0.5, 0.05), norm=2.0, hessian_weighted=search_hessian)
    plain, _, _ = gptq_quantize(p["w2"].T, hid.T @ hid, amax0, spec=spec, block_size=16)
    np.testing.assert_allclose(qm.params["w2"].T, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(qm.qstate["w2.weight_quantizer"]["amax"], amax, rtol=1e-6)
    assert not np.allclose(want, plain)


def test_beats_round_to_nearest_and_folds_to_itself(problem):
    p, x = problem
    ref = mlp(p, x)
    rtn = jq.quantize(p, mlp, INT4_G16, calib_data=[(x,)], progress=False)
    qm = _gptq(p, x, INT4_G16)
    err = lambda q: float(jnp.mean((jax.jit(q.apply)(q.params, x) - ref) ** 2))  # noqa: E731
    assert err(qm) < 0.7 * err(rtn)
    folded = jq.fold_weights(qm)  # the updated weights already sit on the grid of their stored amaxes
    for k in p:
        np.testing.assert_array_equal(folded.params[k], qm.params[k])
    np.testing.assert_allclose(jax.jit(folded.apply)(folded.params, x), jax.jit(qm.apply)(qm.params, x),
                               rtol=1e-5, atol=1e-6)  # same weights; XLA fuses the two programs differently


def test_passes_over_the_data(problem):
    p, x = problem
    calls = []

    def loop(run):
        calls.append(1)
        run(x)

    for sequential, passes in ((True, 3), (False, 2)):  # max calibration + one per level (w1, w2) / one for all
        calls.clear()
        jq.quantize(p, mlp, {**INT4_G16, "algorithm": {"method": "gptq", "block_size": 16, "sequential": sequential}},
                    forward_loop=loop, progress=False)
        assert len(calls) == 1 + passes  # a forward_loop is first called once to trace the model


def test_layer_scan_layers_are_quantized_one_after_another():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((64, 5)), jnp.float32)
    params, apply = M.linen(M.ScanStack(n_layers=2), x)
    rtn = jq.quantize(params, apply, INT4_G16, calib_data=[(x,)], progress=False)
    qm = jq.quantize(params, apply, {**INT4_G16, "algorithm": {"method": "gptq", "block_size": 16}},
                     calib_data=[(x,)], progress=False)
    w_old, w_new = (m["params"]["layers"]["fc"]["kernel"] for m in (params, qm.params))
    assert w_new.shape == w_old.shape == (2, 16, 16)
    assert not np.allclose(w_new[0], w_old[0]) and not np.allclose(w_new[1], w_old[1])
    assert qm.qstate["layers.fc.weight_quantizer"]["amax"].shape == (2, 16, 1)
    ref = apply(params, x)
    err = lambda q: float(jnp.mean((jax.jit(q.apply)(q.params, x) - ref) ** 2))  # noqa: E731
    assert err(qm) < err(rtn)


def test_nvfp4_weights_switch_to_static_block_amaxes(problem):
    p, x = problem
    qm = _gptq(p, x, jq.W4A16_NVFP4_CFG)
    spec = qm.spec("w1.weight_quantizer")
    assert spec.describe() == "nvfp4 b16 static"
    amax = qm.qstate["w1.weight_quantizer"]["amax"]
    assert amax.shape == (48, 2) and float(jnp.max(amax)) == float(jnp.max(jnp.abs(p["w1"])))  # same global scale
    np.testing.assert_array_equal(fake_quant(qm.params["w1"].T, amax, spec=spec), qm.params["w1"].T)
    rtn = jq.quantize(p, mlp, with_output_head(jq.W4A16_NVFP4_CFG), calib_data=[(x,)], progress=False)
    ref = mlp(p, x)
    err = lambda q: float(jnp.mean((jax.jit(q.apply)(q.params, x) - ref) ** 2))  # noqa: E731
    assert err(qm) < err(rtn)


def test_a_weight_no_calibration_data_reaches_is_named(problem):
    p, x = problem

    def branchy(p, x, use_w2):
        h = jax.nn.gelu(x @ p["w1"])
        return jax.lax.cond(use_w2, lambda: h @ p["w2"], lambda: h[:, :8])

    with pytest.raises(ValueError, match=r"no calibration data reached site 'w2' \(weight quantizer "
                                         r"'w2.weight_quantizer'\)"):
        jq.quantize(p, branchy, {**INT4_G16, "algorithm": {"method": "gptq", "block_size": 16}},
                    calib_data=[(x, jnp.bool_(False))], progress=False)


def _backend_compilations(fn) -> int:
    """How many XLA compilations ``fn()`` triggers (jax.monitoring's backend-compile events)."""
    count = [0]

    def listener(event, duration, **kwargs):
        count[0] += event == "/jax/core/compile/backend_compile_duration"

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        fn()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return count[0]


def test_compilations_do_not_grow_with_the_number_of_layers(no_compilation_cache):
    # 4 levels per block (q/k/v, o, gate/up, down): 8 levels for 2 layers, 12 for 3. Every level runs the same
    # compiled collection pass and the same per-shape GPTQ solves, so 3 layers compile exactly as often as 2.
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 48, (2, 16)), jnp.int32)

    def compilations(n_layers):
        _, config, params = tiny_model(0, num_hidden_layers=n_layers)
        forward = jm.make_forward(config)
        return _backend_compilations(lambda: jq.quantize(
            params, forward, {**INT4_G16, "algorithm": {"method": "gptq", "block_size": 16}},
            calib_data=[(tokens,)], progress=False))

    compilations(1)  # first use of each weight shape and eager op compiles once for the whole process
    two, three = compilations(2), compilations(3)
    assert three == two, (two, three)


@pytest.mark.parametrize("option, match", [
    ({"block_size": "128"}, "block_size must be a positive int"),
    ({"block_size": 0}, "block_size must be a positive int"),
    ({"perc_damp": 0.0}, r"perc_damp must be a number in \(0, 1\]"),
    ({"act_order": "yes"}, "act_order must be a bool"),
    ({"sequential": 1}, "sequential must be a bool"),
    ({"scale_search": 1}, "scale_search must be a bool"),
    ({"min_shrink": 0.0}, r"min_shrink must be a number in \(0, 1\]"),
    ({"shrink_step": 1.5}, r"shrink_step must be a number in \(0, 1\]"),
    ({"search_norm": "2"}, r"search_norm must be a number in \(0, 16\]"),
    ({"percdamp": 0.01}, r"no option 'percdamp' \(did you mean 'perc_damp'\?\)"),
])
def test_bad_options_are_named(problem, option, match):
    p, x = problem
    with pytest.raises(ValueError, match=match):
        jq.quantize(p, mlp, {**INT4_G16, "algorithm": {"method": "gptq", **option}}, calib_data=[(x,)],
                    progress=False)


def test_block_size_must_hold_whole_quantization_blocks(problem):
    p, x = problem
    with pytest.raises(ValueError, match=r"block_size=8 must be a multiple of w1's quantization block"):
        _gptq(p, x, INT4_G16, block_size=8)


def test_sites_gptq_cannot_update_keep_max_calibration_with_a_warning():
    x = jnp.ones((2, 8, 8, 3))
    params, apply = M.linen(M.CNN(), x)
    cfg = {**with_output_head(jq.INT8_WEIGHT_ONLY_CFG), "algorithm": {"method": "gptq"}}
    with pytest.warns(UserWarning, match=r"gptq: 2 weight-quantized site\(s\) keep max calibration.*conv1.*conv site"):
        qm = jq.quantize(params, apply, cfg, calib_data=[(x,)], progress=False)
    np.testing.assert_array_equal(qm.params["params"]["conv1"]["kernel"], params["params"]["conv1"]["kernel"])
    assert not np.array_equal(qm.params["params"]["head"]["kernel"], params["params"]["head"]["kernel"])
