"""jq_zoo.preset_entry: the ``NAME[:ALG[,k=v]][+PRESET]`` form the experiment scripts take."""

import pytest

import jq
from jq_zoo.preset_entry import parse_value, preset_cfg


@pytest.mark.parametrize("text, value", [("true", True), ("False", False), ("128", 128), ("0.5", 0.5),
                                         ("max", "max"), ("1e-2", 0.01)])
def test_parse_value_reads_bools_ints_floats_else_the_string(text, value):
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_a_bare_name_is_the_preset():
    assert preset_cfg("FP8_DEFAULT") == jq.get_preset("FP8_DEFAULT")


def test_algorithm_alone_replaces_the_method_name():
    assert preset_cfg("INT4_BLOCKWISE_WEIGHT_ONLY:gptq")["algorithm"] == "gptq"


def test_algorithm_fields_are_parsed():
    cfg = preset_cfg("FP8_PER_CHANNEL_PER_TOKEN:gptq,sequential=false,act_order=true,block_size=64")
    assert cfg["algorithm"] == {"method": "gptq", "sequential": False, "act_order": True, "block_size": 64}
    assert cfg["quant_cfg"] == jq.get_preset("FP8_PER_CHANNEL_PER_TOKEN")["quant_cfg"]


def test_plus_merges_a_second_preset():
    assert preset_cfg("FP8_DEFAULT+FP8_KV") == jq.merge_presets(jq.get_preset("FP8_DEFAULT"), jq.get_preset("FP8_KV"))


def test_an_unknown_preset_is_the_library_error():
    with pytest.raises(Exception, match="NOT_A_PRESET"):
        preset_cfg("NOT_A_PRESET")
