"""AWQ-clip / AWQ-full / GPTQ results through fold_weights, the ONNX export and the HF checkpoint writer.

What each carries, as ModelOpt exports it: AWQ-full a ``pre_quant_scale`` (a ``Mul`` on the input in ONNX, the
checkpoint's ``pre_quant_scale``) and clipped per-block amaxes (the weight scales), GPTQ updated weights with
their per-block amaxes, AWQ-clip on NVFP4 static block amaxes (E4M3 block scales, global scale from the largest).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq
from jq.presets import with_output_head
import jq.export
from jq.export.scales import canonical_weight
from jq.quantizer import fake_quant_reference

W4 = {"num_bits": 4, "block_sizes": {-1: 16}, "enable": True}
INT4_G16 = with_output_head(jq.merge_presets(jq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG, {"quant_cfg": {"*weight_quantizer": W4}}))
CASES = {
    "int4-awq_full": ({**INT4_G16, "algorithm": "awq_full"}, "W4A16_AWQ"),
    "int4-gptq": ({**INT4_G16, "algorithm": {"method": "gptq", "block_size": 16}}, "W4A16_AWQ"),
    "nvfp4-awq_clip": (with_output_head(jq.NVFP4_AWQ_CLIP_CFG), "NVFP4"),
}


def mlp(p, x):
    return jax.nn.gelu(x @ p["w1"]) @ p["w2"]


@pytest.fixture(scope="module")
def models():
    rng = np.random.default_rng(0)
    p = {"w1": jnp.asarray(rng.standard_normal((32, 48)) / 5, jnp.float32),
         "w2": jnp.asarray(rng.standard_normal((48, 16)) / 7, jnp.float32)}
    x = rng.standard_normal((64, 32)).astype(np.float32)
    x[:, 3] *= 6.0
    x = jnp.asarray(x)
    out = {k: jq.quantize(p, mlp, cfg, calib_data=[(x[:32],), (x[32:],)], progress=False)
           for k, (cfg, _) in CASES.items()}
    return out, x


def _run(qm, x):
    return np.asarray(jax.jit(qm.apply)(qm.params, x))


@pytest.mark.parametrize("case", sorted(CASES))
def test_fold_weights_keeps_the_model(models, case):
    qms, x = models
    qm = qms[case]
    folded = jq.fold_weights(qm)
    assert folded.spec("w1.weight_quantizer") is None  # weight quantization is folded into the params
    np.testing.assert_allclose(_run(folded, x), _run(qm, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hf_checkpoint_dequantizes_to_the_model_weights(models, case, tmp_path):
    qms, _ = models
    qm = qms[case]
    ck = jq.export.read_hf_checkpoint(jq.export.to_hf_checkpoint(qm, tmp_path / case))
    assert ck.quant_config["quantization"]["quant_algo"] == CASES[case][1]
    for site in qm.traced.sites:
        pqs = qm.qstate.get(f"{site.name}.input_quantizer", {}).get("pre_quant_scale")
        w = canonical_weight(qm, site)  # the params' W; an AWQ-smoothed site quantizes W / pre_quant_scale
        w = w if pqs is None else w / pqs
        ref = np.asarray(fake_quant_reference(w, qm.spec(site.weight_quantizer),
                                              qm.qstate[site.weight_quantizer]["amax"]))
        np.testing.assert_allclose(ck.dequantize(site.name), ref, rtol=2.5e-7, atol=0)
        if pqs is not None:
            np.testing.assert_array_equal(ck.tensors[f"{site.name}.pre_quant_scale"], pqs)
    assert (case == "int4-awq_full") == ("pre_quant_scale" in qm.qstate.get("w1.input_quantizer", {}))


@pytest.mark.parametrize("case", ["int4-awq_full", "int4-gptq"])
def test_onnx_export_runs_like_the_model(models, case):
    qms, x = models
    qm = qms[case]
    res = jq.export.export(qm, (x,), dq_only=True)
    weights = {q.name for q in res.quantizers if q.is_weight}
    assert weights == {"w1.weight_quantizer", "w2.weight_quantizer"}  # W / pre_quant_scale is a constant weight
    y = jq.export.run_onnxruntime(res.proto, [np.asarray(x)])[0]
    np.testing.assert_allclose(y, _run(qm, x), rtol=1e-4, atol=1e-5)


def test_onnx_export_of_static_nvfp4_weights(models):
    qms, x = models
    res = jq.export.export(qms["nvfp4-awq_clip"], (x,))  # checked by onnx.checker; ORT has no FP4 kernels
    kinds = {q.name: (q.is_weight, str(q.format.element_type)) for q in res.quantizers}
    assert kinds["w1.weight_quantizer"] == (True, "FLOAT4E2M1")
    assert kinds["w1.input_quantizer"] == (False, "FLOAT4E2M1")
