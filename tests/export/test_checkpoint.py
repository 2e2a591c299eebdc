"""Orbax save/load of a QuantizedModel (jq.export.save / load): bit-exact and usable."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq
import jq.export
from tests.export.conftest import run_jax
from jq.config import QuantConfig
from tests._models import MLP, nnx_apply


def _leaves_bits(tree):
    return [(jax.tree_util.keystr(p), np.asarray(v).dtype, np.asarray(v).tobytes())
            for p, v in sorted(jax.tree_util.tree_leaves_with_path(tree), key=lambda t: jax.tree_util.keystr(t[0]))]


@pytest.mark.parametrize("preset", ["INT8_DEFAULT_CFG", "NVFP4_DEFAULT_CFG"])
def test_round_trip_is_bit_exact(zoo, tmp_path, preset):
    qm = zoo.qm("transformer", preset)
    m, _, _, x = zoo.model("transformer")
    path = jq.export.save(qm, tmp_path / "ckpt")
    assert (path / "jq_quantized.json").exists()
    qm2 = jq.export.load(path, m.apply)
    assert _leaves_bits(qm2.params) == _leaves_bits(qm.params)
    assert _leaves_bits(qm2.qstate) == _leaves_bits(qm.qstate)
    assert qm2.config == qm.config
    assert np.array_equal(run_jax(qm2, x), run_jax(qm, x))
    assert qm2.quantizer_names == qm.quantizer_names


def test_bfloat16_params_and_disabled_quantizers(tmp_path):
    m = MLP()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 16)), jnp.bfloat16)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), m.init(jax.random.key(0), x))
    qm = jq.quantize(params, m.apply, jq.FP8_DEFAULT_CFG, calib_data=[(x,)], progress=False)
    qm = jq.disable_quantizer(qm, "fc2.*")
    jq.export.save(qm, tmp_path / "bf16")
    qm2 = jq.export.load(tmp_path / "bf16", m.apply, example_args=(x,))
    assert _leaves_bits(qm2.params) == _leaves_bits(qm.params)
    assert all(np.asarray(v).dtype == jnp.bfloat16 for v in jax.tree_util.tree_leaves(qm2.params))
    assert qm2.spec("fc2.input_quantizer") is None and qm2.spec("fc1.input_quantizer") is not None
    assert np.array_equal(run_jax(qm2, x), run_jax(qm, x))


def test_config_round_trips_through_json():
    for preset in ("INT8_DEFAULT_CFG", "W4A8_AWQ_BETA_CFG", "NVFP4_DEFAULT_CFG", "FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG"):
        import json

        cfg = QuantConfig.from_dict(getattr(jq, preset))
        assert QuantConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg, preset


def test_nnx_state_restored_into_its_structure(tmp_path):
    state, apply_fn = nnx_apply()
    x = jnp.ones((2, 8))
    qm = jq.quantize(state, apply_fn, jq.INT8_DEFAULT_CFG, calib_data=[(x,)], progress=False)
    jq.export.save(qm, tmp_path / "nnx")
    qm2 = jq.export.load(tmp_path / "nnx", apply_fn, params_like=state)
    assert jax.tree_util.tree_structure(qm2.params) == jax.tree_util.tree_structure(state)
    assert _leaves_bits(qm2.params) == _leaves_bits(qm.params)
    assert np.array_equal(run_jax(qm2, x), run_jax(qm, x))


def test_errors(tmp_path, zoo):
    qm = zoo.qm("cnn", "INT8_DEFAULT_CFG")
    jq.export.save(qm, tmp_path / "c")
    with pytest.raises(FileExistsError, match="force=True"):
        jq.export.save(qm, tmp_path / "c")
    jq.export.save(qm, tmp_path / "c", force=True)
    with pytest.raises(FileNotFoundError, match="not a jq checkpoint"):
        jq.export.load(tmp_path, lambda p, x: x)
