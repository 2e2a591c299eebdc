"""ModelOpt-layout Hugging Face checkpoints (jq.export.to_hf_checkpoint): written, read back, dequantized.

FP8 and NVFP4 weights dequantize to jq's fake-quantized weights bit for bit; INT4 (W4A16_AWQ) within two
float32 ulps (ModelOpt's ``weight * (amax / 7)`` vs jq's ``q / (7 / amax)``).
"""

import copy
import json

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import jq.export
import jq.models as jm
from jq.model import QuantizedModel
from jq.export.hf_checkpoint import _pack_rows_int4, _unpack_rows_int4, read_safetensors
from jq.export.scales import canonical_weight
from jq.quantizer import fake_quant_reference
from tests.models.conftest import tiny_model


def _fake_quantized(qm, site):
    w = canonical_weight(qm, site)
    return np.asarray(fake_quant_reference(w, qm.spec(site.weight_quantizer), qm.qstate[site.weight_quantizer]["amax"]))


def _linear_sites(qm):
    return [s for s in qm.traced.sites if s.kind == "linear" and s.name != "lm_head"]


@pytest.mark.parametrize("preset, algo, exact, share", [
    ("FP8_DEFAULT_CFG", "FP8", True, False),
    ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "W4A16_AWQ", False, False),
    ("NVFP4_DEFAULT_CFG", "NVFP4", True, True),
    ("INT8_DEFAULT_CFG", "W8A8_SQ_PER_CHANNEL", False, False),
])
def test_write_read_dequantize(zoo, tmp_path, preset, algo, exact, share):
    qm = zoo.qm("transformer", preset, share=share)
    out = jq.export.to_hf_checkpoint(qm, tmp_path / "ckpt")
    cfg = json.loads((out / "hf_quant_config.json").read_text())
    q = cfg["quantization"]
    assert cfg["producer"]["name"] == "jq" and q["quant_algo"] == algo
    assert q["exclude_modules"] == ["lm_head"] and q["kv_cache_quant_algo"] is None
    ck = jq.export.read_hf_checkpoint(out)
    t = ck.tensors
    for site in _linear_sites(qm):
        name = site.name
        ref = _fake_quantized(qm, site)
        got = ck.dequantize(name)
        assert got.shape == ref.shape == tuple(site.view.shape)
        if exact:
            assert np.array_equal(got, ref), name
        else:
            np.testing.assert_allclose(got, ref, rtol=2.5e-7, atol=0)
        rows, cols = ref.shape
        if algo == "FP8":
            assert t[f"{name}.weight"].dtype == ml_dtypes.float8_e4m3fn and t[f"{name}.weight_scale"].shape == ()
            assert t[f"{name}.input_scale"].dtype == np.float32
        elif algo == "W4A16_AWQ":
            assert q["group_size"] == 128 and q["has_zero_point"] is False and q["pre_quant_scale"] is True
            assert t[f"{name}.weight"].dtype == np.uint8 and t[f"{name}.weight"].shape == (rows // 2, cols)
            assert t[f"{name}.weight_scale"].shape == (rows, -(-cols // 128))
            assert np.array_equal(t[f"{name}.pre_quant_scale"], np.ones(cols, np.float32))
        elif algo == "NVFP4":
            assert q["group_size"] == 16
            assert t[f"{name}.weight"].shape == (rows, cols // 2) and t[f"{name}.weight"].dtype == np.uint8
            assert t[f"{name}.weight_scale"].dtype == ml_dtypes.float8_e4m3fn
            assert t[f"{name}.weight_scale"].shape == (rows, cols // 16)
            assert t[f"{name}.weight_scale_2"].shape == () and t[f"{name}.input_scale"].shape == ()
        else:
            assert t[f"{name}.weight"].dtype == np.int8 and t[f"{name}.weight_scale"].shape == (rows,)
    # everything else is there too, under its key path; the excluded head as a float [out, in] weight
    assert "wte.embedding" in t and "block0.ln1.scale" in t and "block0.fc.bias" in t
    assert t["lm_head.weight"].dtype == np.float32 and t["lm_head.weight"].shape == (48, 32)
    assert ck.layer_config("lm_head") is None


def test_siblings_must_share_scales(zoo, tmp_path):
    qm = zoo.qm("transformer", "NVFP4_DEFAULT_CFG")  # weight amaxes not shared across q/k/v
    with pytest.raises(ValueError, match=r"block0\.q_proj.*weight_scale_2.*share_sibling_weight_amax"):
        jq.export.to_hf_checkpoint(qm, tmp_path / "a")
    with pytest.warns(UserWarning, match="unified weight_scale_2"):
        jq.export.to_hf_checkpoint(qm, tmp_path / "b", unify_siblings=True)
    ck = jq.export.read_hf_checkpoint(tmp_path / "b")
    ws2 = {ck.tensors[f"block0.{p}.weight_scale_2"].item() for p in ("q_proj", "k_proj", "v_proj")}
    ins = {ck.tensors[f"block0.{p}.input_scale"].item() for p in ("q_proj", "k_proj", "v_proj")}
    assert len(ws2) == 1 and len(ins) == 1
    shared = zoo.qm("transformer", "NVFP4_DEFAULT_CFG", share=True)
    ck2 = jq.export.read_hf_checkpoint(jq.export.to_hf_checkpoint(shared, tmp_path / "c"))
    assert ck2.tensors["block0.q_proj.weight_scale_2"] == ck.tensors["block0.q_proj.weight_scale_2"]


def test_mixed_precision_config(zoo, tmp_path):
    m, params, calib, _ = zoo.model("transformer")
    cfg = jq.config.QuantConfig.from_dict(jq.FP8_DEFAULT_CFG).with_entries(
        ("*fc.weight_quantizer", {"num_bits": 4, "block_sizes": {-1: 16}}), ("*fc.input_quantizer", {"enable": False}))
    qm = jq.quantize(params, m.apply, cfg, calib_data=[(c,) for c in calib], progress=False)
    ck = jq.export.read_hf_checkpoint(jq.export.to_hf_checkpoint(qm, tmp_path / "mixed"))
    q = ck.quant_config["quantization"]
    assert q["quant_algo"] == "MIXED_PRECISION"
    assert q["quantized_layers"]["block0.fc"] == {"quant_algo": "W4A16_AWQ", "group_size": 16,
                                                  "has_zero_point": False, "pre_quant_scale": True}
    assert q["quantized_layers"]["block0.q_proj"] == {"quant_algo": "FP8"}
    site = next(s for s in qm.traced.sites if s.name == "block0.fc")
    np.testing.assert_allclose(ck.dequantize("block0.fc"), _fake_quantized(qm, site), rtol=2.5e-7, atol=0)


def test_unsupported_format_names_the_site(zoo, tmp_path):
    qm = zoo.qm("transformer", "MXFP8_DEFAULT_CFG")
    with pytest.raises(ValueError, match=r"site 'block0\.q_proj'.*no ModelOpt checkpoint format.*FP8"):
        jq.export.to_hf_checkpoint(qm, tmp_path / "mx")


def test_int4_row_packing_is_modelopt_layout():
    q = np.array([[-8, 7, 1], [3, -1, 0], [2, 2, 2], [-2, -3, 4]], np.int8)
    p = _pack_rows_int4(q)
    assert p.shape == (2, 3) and p[0, 0] == (0x8 | 0x3 << 4) and p[0, 1] == (0x7 | 0xF << 4)
    assert np.array_equal(_unpack_rows_int4(p), q)


def test_safetensors_reader_handles_fp8(tmp_path):
    import safetensors.flax

    data = {"a": jnp.asarray([1.5, -448.0], jnp.float8_e4m3fn), "b": jnp.arange(6, dtype=jnp.int8).reshape(2, 3),
            "c": jnp.asarray([0.25], jnp.bfloat16)}
    safetensors.flax.save_file(data, str(tmp_path / "t.safetensors"), metadata={"k": "v"})
    got, meta = read_safetensors(tmp_path / "t.safetensors")
    assert meta == {"k": "v"}
    for k, v in data.items():
        assert got[k].dtype == np.asarray(v).dtype and np.array_equal(got[k], np.asarray(v))


def test_block_fp8_tiles_dequantize_exactly(tmp_path):
    """FP8_BLOCK_SCALES: one ``weight_scale_inv`` per 16 x 16 tile; the weight read back is jq's fake-quantized
    weight bit for bit."""
    _, config, params = tiny_model(num_hidden_layers=1)
    cfg = copy.deepcopy(jq.FP8_BLOCKWISE_CFG)
    cfg["quant_cfg"]["*weight_quantizer"]["block_sizes"].update({-1: 16, -2: 16})
    cfg["quant_cfg"]["*input_quantizer"]["block_sizes"][-1] = 16
    tokens = jnp.asarray(np.arange(24).reshape(2, 12) % 48, jnp.int32)
    qm = jq.calibrate(QuantizedModel.create(params, jm.make_forward(config), cfg), [(tokens,)], progress=False)
    ck = jq.export.read_hf_checkpoint(jq.export.to_hf_checkpoint(qm, tmp_path / "ckpt"))
    assert ck.quant_config["quantization"]["weight_block_size"] == [16, 16]
    sites = [s for s in qm.traced.sites if s.kind == "linear" and s.name != "lm_head"]
    assert len(sites) == 7
    for site in sites:
        ref = _fake_quantized(qm, site)
        assert ck.tensors[f"{site.name}.weight_scale_inv"].shape == (-(-ref.shape[0] // 16), ref.shape[1] // 16)
        assert np.array_equal(ck.dequantize(site.name), ref), site.name
