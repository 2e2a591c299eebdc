"""Which specs have an ONNX form (jq.export.formats) and the errors for those that do not."""

import jax
import jax.numpy as jnp
import onnx_ir as ir
import pytest

import jq
import jq.export
from jq.config import QuantizerSpec
from jq.export.formats import min_opset_for, resolve_format
from tests._models import MLP

NVFP4 = {"num_bits": (2, 1), "block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (4, 3)}}


@pytest.mark.parametrize("spec, elem, gran, opset", [
    (QuantizerSpec(num_bits=8), ir.DataType.INT8, "tensor", 13),
    (QuantizerSpec(num_bits=8, axis=0), ir.DataType.INT8, "axis", 13),
    (QuantizerSpec(num_bits=8, unsigned=True), ir.DataType.UINT8, "tensor", 13),
    (QuantizerSpec(num_bits=4, block_sizes={-1: 128}), ir.DataType.INT4, "block", 21),
    (QuantizerSpec(num_bits=(4, 3)), ir.DataType.FLOAT8E4M3FN, "tensor", 19),
    (QuantizerSpec(num_bits=(4, 3), block_sizes={-1: 128, -2: 128}), ir.DataType.FLOAT8E4M3FN, "block", 21),
    (QuantizerSpec(**NVFP4), ir.DataType.FLOAT4E2M1, "block", 23),
])
def test_supported_formats(spec, elem, gran, opset):
    f = resolve_format("x.weight_quantizer", spec, is_weight=True)
    assert (f.element_type, f.granularity, f.min_opset) == (elem, gran, opset)


@pytest.mark.parametrize("spec, why", [
    (QuantizerSpec(num_bits=(4, 3), block_sizes={-1: 32, "type": "dynamic", "scale_bits": (8, 0)}), "MX"),
    (QuantizerSpec(num_bits=(4, 3), type="dynamic", block_sizes={-1: None}), "dynamic"),
    (QuantizerSpec(num_bits=6), "6-bit"),
    (QuantizerSpec(num_bits=8, rotate=True), "rotation"),
    (QuantizerSpec(num_bits=8, narrow_range=True), "narrow_range"),
])
def test_unsupported_formats_name_the_quantizer(spec, why):
    with pytest.raises(ValueError) as e:
        resolve_format("block0.fc.input_quantizer", spec)
    msg = str(e.value)
    assert "block0.fc.input_quantizer" in msg and why in msg and "Supported formats" in msg and "NVFP4" in msg


def test_nvfp4_2d_blocks_only_for_weights():
    spec = QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, -2: 16, "type": "dynamic", "scale_bits": (4, 3)})
    assert resolve_format("w", spec, is_weight=True).kind == "nvfp4"
    with pytest.raises(ValueError, match="weights only"):
        resolve_format("a.input_quantizer", spec)


def test_min_opset_for():
    fs = [resolve_format("a", QuantizerSpec(num_bits=8)), resolve_format("b", QuantizerSpec(num_bits=(4, 3)))]
    assert min_opset_for(fs) == 19 and min_opset_for([]) == 13


def _mlp_qm(cfg):
    m = MLP()
    x = jnp.ones((2, 16))
    params = m.init(jax.random.key(0), x)
    return jq.quantize(params, m.apply, cfg, calib_data=[(x,)], progress=False), x


def test_to_onnx_rejects_mx_naming_the_quantizer():
    qm, x = _mlp_qm(jq.MXFP8_DEFAULT_CFG)
    with pytest.raises(ValueError, match=r"'fc1\.(weight|input)_quantizer'.*MX"):
        jq.export.to_onnx(qm, (x,))


def test_to_onnx_rejects_too_small_opset():
    qm, x = _mlp_qm(jq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG)
    with pytest.raises(ValueError, match=r"fc1\.weight_quantizer.*opset >= 21"):
        jq.export.to_onnx(qm, (x,), opset=19)
    with pytest.raises(ValueError, match="opset must be >= 13"):
        jq.export.ExportOptions(opset=11)
