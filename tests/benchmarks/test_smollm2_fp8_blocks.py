"""The ``ENTRY@G`` variants of benchmarks/calibration/smollm2_fp8_blocks.py (block-scaled FP8 activations)."""

import pytest

from benchmarks.calibration.smollm2_fp8_blocks import blocked_cfg
from jq.config import QuantizerSpec
from jq_zoo.preset_entry import preset_cfg

G = "FP8_PER_CHANNEL_PER_TOKEN:gptq,sequential=false,act_order=true"


def test_token_keeps_the_preset():
    assert blocked_cfg(f"{G}@token") == preset_cfg(G)


def test_group_replaces_only_the_input_block_size():
    cfg = blocked_cfg(f"{G}@64")
    base = preset_cfg(G)
    assert cfg["algorithm"] == base["algorithm"]
    assert cfg["quant_cfg"]["*weight_quantizer"] == base["quant_cfg"]["*weight_quantizer"]
    spec = QuantizerSpec.from_dict(cfg["quant_cfg"]["*input_quantizer"])
    assert spec.format.name == "fp8" and spec.is_dynamic and dict(spec.block_sizes.sizes) == {-1: 64}


def test_blockwise_preset_gets_g_by_g_weight_tiles_too():
    cfg = blocked_cfg("FP8_BLOCKWISE:gptq,act_order=true@64")
    w = QuantizerSpec.from_dict(cfg["quant_cfg"]["*weight_quantizer"])
    i = QuantizerSpec.from_dict(cfg["quant_cfg"]["*input_quantizer"])
    assert dict(w.block_sizes.sizes) == {-1: 64, -2: 64} and not w.is_dynamic
    assert dict(i.block_sizes.sizes) == {-1: 64} and i.is_dynamic


def test_mx_gives_mxfp8_inputs_and_patterns_still_apply():
    cfg = blocked_cfg("FP8_PER_CHANNEL_PER_TOKEN~*weight_quantizer@mx")
    assert QuantizerSpec.from_dict(cfg["quant_cfg"]["*input_quantizer"]).format.name == "mxfp8"
    assert cfg["quant_cfg"]["*weight_quantizer"] == {"enable": False}


@pytest.mark.parametrize("entry, message", [
    ("FP8_PER_CHANNEL_PER_TOKEN", "expected ENTRY@G"),
    ("INT8_WEIGHT_ONLY@64", "no enabled input quantizer"),
    ("FP8_PER_CHANNEL_PER_TOKEN@x", "expected ENTRY@G"),
    ("FP8_PER_CHANNEL_PER_TOKEN@0", "expected ENTRY@G"),
])
def test_bad_variants_say_why(entry, message):
    with pytest.raises(ValueError, match=message):
        blocked_cfg(entry)
