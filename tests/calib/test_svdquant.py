"""SVDQuant: the low-rank factors, the site's forward ``op(q(x), q(W - LR)) + op(x, LR)``, per-layer factors in a
layer scan, fold_weights, ONNX and Hugging Face export, and the errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq
from jq.presets import with_output_head
from jq.calib.svdquant import LORA_A, LORA_B, SVDQuant, low_rank_factors, remove_low_rank
from tests import _models as M


class TwoDense(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(24, name="fc2")(nn.gelu(nn.Dense(48, name="fc1")(x)))


def outlier_problem(seed=0):
    """``x @ W`` with a weight that has an outlier input row and an outlier output column (what SVDQuant is for)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    w = rng.standard_normal((32, 48)).astype(np.float32) * 0.1
    w[3, :] *= 40.0
    w[:, 7] += 3.0
    return jnp.asarray(x), {"w": jnp.asarray(w)}, lambda p, x: x @ p["w"]


def svd_cfg(base, **opts):
    return {**with_output_head(base), "algorithm": {"method": "svdquant", **opts}}


def mse(a, b):
    return float(jnp.mean((a - b) ** 2))


def test_factors_are_the_truncated_svd(rng):
    w = rng.standard_normal((2, 6, 10))  # one leading (layer) axis
    a, b = low_rank_factors(w, 3, 1)
    assert a.shape == (2, 3, 10) and b.shape == (2, 6, 3) and a.dtype == np.float32
    for i in range(2):  # Eckart-Young: L R is the best rank-3 approximation
        u, s, vt = np.linalg.svd(w[i], full_matrices=False)
        np.testing.assert_allclose(b[i] @ a[i], (u[:, :3] * s[:3]) @ vt[:3], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a[i] @ a[i].T, np.eye(3), atol=1e-5)  # R has orthonormal rows
    a, b = low_rank_factors(w[0], 32, 0)  # rank above min(out, in) is clipped, and then exact
    assert a.shape == (6, 10) and b.shape == (6, 6)
    np.testing.assert_allclose(b @ a, w[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("smooth", [False, True], ids=["raw", "awq_smoothed"])
def test_full_rank_with_quantizers_off_is_the_float_layer(smooth):
    x, params, f = outlier_problem()
    qm = jq.quantize(params, f, svd_cfg(jq.INT4_AWQ_CFG, lowrank=32, smooth=smooth), calib_data=[(x,)],
                     progress=False)
    st = qm.qstate["w.weight_quantizer"]
    assert st[LORA_A].shape == (32, 32) and st[LORA_B].shape == (48, 32)  # rank min(out=48, in=32)
    assert ("pre_quant_scale" in qm.qstate.get("w.input_quantizer", {})) == smooth
    assert float(jnp.abs(qm.params["w"]).max()) < 1e-4 * float(jnp.abs(params["w"]).max())  # residual ~ 0
    off = jq.disable_quantizer(qm, "*")
    np.testing.assert_allclose(off(x), f(params, x), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("base", ["NVFP4_DEFAULT_CFG", "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"])
def test_svdquant_lowers_the_output_error_of_max_on_outliers(base):
    x, params, f = outlier_problem()
    ref = f(params, x)
    cfg = getattr(jq, base)
    rtn = jq.quantize(params, f, cfg, calib_data=[(x,)], progress=False)
    svd = jq.quantize(params, f, svd_cfg(cfg, lowrank=8), calib_data=[(x,)], progress=False)
    # measured (default AWQ smoothing, rank 8 of 32): NVFP4 W4A4 0.345 -> 0.0035, INT4-g128 weight-only 0.205 -> 0.0057
    assert mse(svd(x), ref) < 0.1 * mse(rtn(x), ref)
    assert jax.tree_util.tree_structure(svd.params) == jax.tree_util.tree_structure(params)


def test_per_layer_factors_in_a_layer_scan(rng):
    x = jnp.asarray(rng.standard_normal((16, 5)), jnp.float32)
    params, apply = M.linen(M.ScanStack(n_layers=2), x)  # two layers tell the per-layer factors apart
    cfg = jq.merge_presets(jq.INT4_AWQ_CFG, {"quant_cfg": {"*weight_quantizer": {
        "num_bits": 4, "block_sizes": {-1: 16}, "enable": True}}})
    qm = jq.quantize(params, apply, svd_cfg(cfg, lowrank=4), calib_data=[(x,)], progress=False)
    st = qm.qstate["layers.fc.weight_quantizer"]
    assert st[LORA_A].shape == (2, 4, 16) and st[LORA_B].shape == (2, 16, 4)
    assert not np.allclose(st[LORA_A][0], st[LORA_A][1])  # one SVD per layer
    np.testing.assert_allclose(jq.disable_quantizer(qm, "*")(x), apply(params, x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jax.jit(qm.apply)(qm.params, x), qm(x), rtol=1e-5, atol=1e-6)
    back = remove_low_rank(qm)  # undo: the float weights again, no factors
    assert LORA_A not in back.qstate["layers.fc.weight_quantizer"]
    np.testing.assert_allclose(back.params["params"]["layers"]["fc"]["kernel"],
                               params["params"]["layers"]["fc"]["kernel"], rtol=1e-5, atol=1e-6)


def test_calibrating_again_starts_from_the_float_weights(rng):
    x = jnp.asarray(rng.standard_normal((32, 32)), jnp.float32)
    m = TwoDense()
    p = m.init(jax.random.key(0), x)
    cfg = svd_cfg(jq.merge_presets(jq.INT4_AWQ_CFG, {"quant_cfg": {"*weight_quantizer": {
        "num_bits": 4, "block_sizes": {-1: 16}, "enable": True}}}), lowrank=4)
    qm = jq.quantize(p, m.apply, cfg, calib_data=[(x,)], progress=False)
    again = jq.calibrate(qm, [(x,)], progress=False)
    for key in (LORA_B, "amax"):
        np.testing.assert_allclose(again.qstate["fc1.weight_quantizer"][key], qm.qstate["fc1.weight_quantizer"][key],
                                   rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jax.jit(again.apply)(again.params, x), jax.jit(qm.apply)(qm.params, x), rtol=1e-4,
                               atol=1e-4)  # under jit: op by op the fake quant costs seconds of eager compiles


def test_fold_weights_keeps_the_branch(rng):
    x = jnp.asarray(rng.standard_normal((32, 32)), jnp.float32)
    m = TwoDense()
    p = m.init(jax.random.key(0), x)
    qm = jq.quantize(p, m.apply, svd_cfg(jq.INT4_AWQ_CFG, lowrank=4), calib_data=[(x,)], progress=False)
    folded = jq.fold_weights(qm)
    assert folded.spec("fc1.weight_quantizer") is None and LORA_A in folded.qstate["fc1.weight_quantizer"]
    np.testing.assert_allclose(folded(x), qm(x), rtol=1e-5, atol=1e-5)  # AWQ scale: within float32 rounding


def test_onnx_export_adds_a_matmul_branch(rng):
    pytest.importorskip("jax2onnx")
    import jq.export

    x = jnp.asarray(rng.standard_normal((8, 32)), jnp.float32)
    m = TwoDense()
    p = m.init(jax.random.key(0), x)
    qm = jq.quantize(p, m.apply, svd_cfg(jq.INT8_DEFAULT_CFG, lowrank=4, smooth=False), calib_data=[(x,)],
                     progress=False)
    res = jq.export.export(qm, (x,))
    ref = np.asarray(jax.jit(qm.apply)(qm.params, x))
    (y,) = jq.export.run_onnxruntime(res.proto, [np.asarray(x)])
    assert float(np.abs(y - ref).max()) <= 1e-5 * float(np.abs(ref).max()) + 1e-6
    ops = [n.op_type for n in res.model.graph]
    assert sum(o in ("MatMul", "Gemm") for o in ops) == 2 * 3  # per site: the quantized GEMM, L @ R, x @ (L R)


def test_hf_checkpoint_writes_nvfp4_svd(tmp_path, rng):
    pytest.importorskip("safetensors")
    import jq.export
    from jq.export.scales import canonical_weight
    from jq.quantizer import fake_quant_reference

    x = jnp.asarray(rng.standard_normal((32, 32)), jnp.float32)
    m = TwoDense()
    p = m.init(jax.random.key(0), x)
    qm = jq.quantize(p, m.apply, svd_cfg(jq.NVFP4_DEFAULT_CFG, lowrank=4), calib_data=[(x,)], progress=False)
    ck = jq.export.read_hf_checkpoint(jq.export.to_hf_checkpoint(qm, tmp_path / "svd"))
    q, t = ck.quant_config["quantization"], ck.tensors
    assert q["quant_algo"] == "NVFP4_SVD" and q["lora_rank"] == 4 and q["pre_quant_scale"] is True
    assert t["fc1.svdquant_lora_a"].shape == (4, 32) and t["fc1.svdquant_lora_b"].shape == (48, 4)
    assert t["fc1.weight"].shape == (48, 16) and t["fc1.pre_quant_scale"].shape == (32,)
    # serving stack: (x * pqs) @ (deq(residual) + B A)^T; jq: the same from the fake-quantized smoothed residual
    site = next(s for s in qm.traced.sites if s.name == "fc1")
    st_w, pqs = qm.qstate["fc1.weight_quantizer"], qm.qstate["fc1.input_quantizer"]["pre_quant_scale"]
    res = canonical_weight(qm, site) / pqs
    want = fake_quant_reference(res, qm.spec("fc1.weight_quantizer"), st_w["amax"]) + st_w[LORA_B] @ st_w[LORA_A]
    np.testing.assert_allclose(ck.dequantize("fc1"), want, rtol=1e-5, atol=1e-6)


def test_hf_checkpoint_without_a_modelopt_form_raises(tmp_path, rng):
    pytest.importorskip("safetensors")
    import jq.export

    x = jnp.asarray(rng.standard_normal((32, 32)), jnp.float32)
    m = TwoDense()
    p = m.init(jax.random.key(0), x)
    qm = jq.quantize(p, m.apply, svd_cfg(jq.FP8_DEFAULT_CFG, lowrank=4, smooth=False), calib_data=[(x,)],
                     progress=False)
    with pytest.raises(ValueError, match=r"site 'fc1': an SVDQuant low-rank branch on FP8.*NVFP4_SVD"):
        jq.export.to_hf_checkpoint(qm, tmp_path / "fp8")


def test_real_quant_deploy_keeps_svdquant_sites_on_fake_quant(rng):
    import jq.deploy

    x = jnp.asarray(rng.standard_normal((8, 32)), jnp.float32)
    m = TwoDense()
    p = m.init(jax.random.key(0), x)
    qm = jq.quantize(p, m.apply, svd_cfg(jq.FP8_DEFAULT_CFG, lowrank=4, smooth=False), calib_data=[(x,)],
                     progress=False)
    assert set(jq.deploy.site_plan(qm).values()) == {"fake"}


def test_bad_rank_and_shared_weights():
    with pytest.raises(ValueError, match="lowrank must be a positive integer, got 0"):
        SVDQuant(lowrank=0)
    x, params, _ = outlier_problem()
    with pytest.warns(UserWarning, match=r"no low-rank branch for \['w.*shared"):  # one leaf, two sites
        jq.quantize(params, lambda p, x: (x @ p["w"]) @ p["w"].T, svd_cfg(jq.INT8_WEIGHT_ONLY_CFG), calib_data=[(x,)],
                    progress=False)
