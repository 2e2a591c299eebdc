"""The user-facing API: quantize, calibrate, QuantizedModel, summary, enable/disable, fold, errors."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq
from jq.presets import with_output_head
from tests import _models as M


@pytest.fixture
def mlp(rng):
    x = jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)
    params, apply = M.linen(M.MLP(), x)
    return params, apply, x


def test_quantized_model_is_a_pytree_that_crosses_jit(mlp):
    params, apply, x = mlp
    qm = jq.quantize(params, apply, jq.INT8_DEFAULT_CFG, calib_data=[(x,)], progress=False)
    leaves, treedef = jax.tree_util.tree_flatten(qm)
    assert len(leaves) == len(jax.tree_util.tree_leaves(params)) + len(jax.tree_util.tree_leaves(qm.qstate))
    y = jax.jit(lambda m, v: m(v))(qm, x)
    np.testing.assert_array_equal(y, qm(x))


def test_activation_amax_is_the_max_over_batches(mlp, rng):
    params, apply, x = mlp
    batches = [(x,), (x * 3,), (x * 0.5,)]
    qm = jq.quantize(params, apply, jq.INT8_DEFAULT_CFG, calib_data=batches, progress=False)
    assert float(qm.qstate["fc1.input_quantizer"]["amax"]) == float(jnp.max(jnp.abs(x * 3)))


def test_forward_loop_like_modelopt(mlp):
    params, apply, x = mlp
    seen = []

    def forward_loop(run):
        for b in (x, 2 * x):
            seen.append(run(b).shape)

    qm = jq.quantize(params, apply, jq.FP8_DEFAULT_CFG, forward_loop=forward_loop, progress=False)
    assert seen == [(16, 10), (16, 10)]
    assert float(qm.qstate["fc1.input_quantizer"]["amax"]) == float(jnp.max(jnp.abs(2 * x)))


def test_weights_are_calibrated_without_data_reaching_them(rng):
    p = M.plain_params()
    f = lambda p, x, use: jax.lax.cond(use, lambda a: a @ p["w1"] @ p["w2"], lambda a: a[:, :4], x)  # noqa
    qm = jq.quantize(p, f, jq.INT8_DEFAULT_CFG, calib_data=[(jnp.ones((2, 8)), False)], progress=False)
    np.testing.assert_array_equal(qm.qstate["w2.weight_quantizer"]["amax"][:, 0], jnp.max(jnp.abs(p["w2"]), 0))


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_nan_or_inf_in_calibration_data_names_the_quantizer(mlp, bad):
    params, apply, x = mlp
    with pytest.raises(ValueError, match=r"batch 1 has NaN or inf values reaching quantizer\(s\) \['fc1.input_quantizer"):
        jq.quantize(params, apply, jq.INT8_DEFAULT_CFG, calib_data=[(x,), (x.at[0, 0].set(bad),)], progress=False)


def test_progress_bar_over_batches(mlp, capsys):
    params, apply, x = mlp
    jq.quantize(params, apply, jq.INT8_DEFAULT_CFG, calib_data=[(x,)] * 3, progress=True)
    assert "jq calibrate" in capsys.readouterr().err


def test_summary_lists_every_quantizer(mlp):
    params, apply, x = mlp
    qm = jq.quantize(params, apply, with_output_head(jq.NVFP4_DEFAULT_CFG), calib_data=[(x,)], progress=False)
    buf = io.StringIO()
    jq.print_quant_summary(qm, file=buf)
    text = buf.getvalue()
    assert "fc1.weight_quantizer" in text and "nvfp4 b16" in text and "fc2.output_quantizer" in text
    assert "6 quantizers, 4 enabled, 2 sites" in text


def test_enable_disable_by_glob(mlp):
    params, apply, x = mlp
    qm = jq.quantize(params, apply, with_output_head(jq.INT8_DEFAULT_CFG), calib_data=[(x,)], progress=False)
    off = jq.disable_quantizer(qm, "fc2.*")
    assert off.spec("fc2.weight_quantizer") is None and off.spec("fc1.weight_quantizer") is not None
    none = jq.disable_quantizer(qm, "*")
    np.testing.assert_array_equal(none(x), apply(params, x))
    back = jq.enable_quantizer(off, "fc2.[iw]*_quantizer")
    np.testing.assert_array_equal(back(x), qm(x))
    with pytest.raises(ValueError, match="matches no quantizer"):
        jq.disable_quantizer(qm, "*attention*")


def test_enabling_an_uncalibrated_quantizer_is_an_error(mlp):
    params, apply, x = mlp
    qm = jq.quantize(params, apply, jq.INT8_DEFAULT_CFG, calib_data=[(x,)], progress=False)
    out = jq.enable_quantizer(qm, "fc1.output_quantizer")
    with pytest.raises(ValueError, match="fc1.output_quantizer.*no calibrated amax"):
        out(x)
    recal = jq.calibrate(out, [(x,)], progress=False)
    assert "amax" in recal.qstate["fc1.output_quantizer"]


def test_fold_weights_gives_the_same_outputs(mlp):
    params, apply, x = mlp
    for cfg in (jq.INT8_DEFAULT_CFG, jq.NVFP4_DEFAULT_CFG, jq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG):
        qm = jq.quantize(params, apply, cfg, calib_data=[(x,)], progress=False)
        folded = jq.fold_weights(qm)
        assert folded.spec("fc1.weight_quantizer") is None
        np.testing.assert_array_equal(folded(x), qm(x))
        kernel = folded.params["params"]["fc1"]["kernel"]
        assert len(np.unique(np.asarray(kernel[:, 0]))) <= 16 or cfg is not jq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG


def test_fold_weights_skips_weights_used_elsewhere(rng):
    p = {"emb": jnp.asarray(rng.standard_normal((10, 8)), jnp.float32)}
    f = lambda p, t: p["emb"][t] @ p["emb"].T  # noqa: E731  (tied embedding: gather and head)
    cfg = jq.QuantConfig.from_dict({"quant_cfg": {"*weight_quantizer": {"num_bits": 8, "axis": 0}}})
    qm = jq.quantize(p, f, cfg, calib_data=[(jnp.arange(4),)], progress=False)
    with pytest.warns(UserWarning, match="not folded"):
        folded = jq.fold_weights(qm)
    np.testing.assert_array_equal(folded.params["emb"], p["emb"])


def test_unused_pattern_warning(mlp):
    params, apply, x = mlp
    cfg = jq.merge_presets(jq.INT8_DEFAULT_CFG, {"quant_cfg": {"*decoder.fc9*": {"enable": False}}})
    with pytest.warns(UserWarning, match=r"'\*decoder.fc9\*' matched no quantizer"):
        qm = jq.quantize(params, apply, cfg, calib_data=[(x,)], progress=False)
    assert "*decoder.fc9*" in jq.quant_summary(qm)


def test_nothing_to_trace_is_an_error(mlp):
    params, apply, _ = mlp
    with pytest.raises(ValueError, match="calib_data, forward_loop or example_args"):
        jq.quantize(params, apply, jq.INT8_DEFAULT_CFG)


def test_dynamic_formats_need_no_calibration(mlp):
    params, apply, x = mlp
    qm = jq.quantize(params, apply, jq.MXFP8_DEFAULT_CFG, example_args=(x,))
    assert qm.qstate == {}
    ref = apply(params, x)
    y = jax.jit(qm.apply)(qm.params, x)  # op by op the MXFP8 fake quant costs seconds of eager compiles
    assert float(jnp.mean(jnp.abs(y - ref))) < 0.05 * float(jnp.mean(jnp.abs(ref)))


def test_static_kwargs_and_new_shapes(mlp):
    params, apply, x = mlp

    def fn(p, v, scale=1.0, training=False):
        return apply(p, v * scale) + (1.0 if training else 0.0)

    qm = jq.quantize(params, fn, jq.INT8_DEFAULT_CFG, calib_data=[{"args": (x,), "kwargs": {"training": False}}],
                     progress=False)
    a = qm(x, training=False)
    b = qm(x, training=True)
    np.testing.assert_allclose(b - a, 1.0, rtol=1e-6)
    assert qm(x[:3]).shape == (3, 10)
    assert len(qm._meta.cache.entries) == 3
