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


def test_tilde_patterns_are_appended_disabled_after_the_preset_entries():
    cfg = preset_cfg("FP8_PER_CHANNEL_PER_TOKEN:gptq,act_order=true~*layers.0.*~*layers.29.*")
    base = jq.get_preset("FP8_PER_CHANNEL_PER_TOKEN")["quant_cfg"]
    assert list(cfg["quant_cfg"])[-2:] == ["*layers.0.*", "*layers.29.*"]  # last entries win
    assert cfg["quant_cfg"]["*layers.0.*"] == {"enable": False}
    assert {k: v for k, v in cfg["quant_cfg"].items() if k in base} == base
    assert cfg["algorithm"] == {"method": "gptq", "act_order": True}


def test_tilde_patterns_switch_those_quantizers_off_and_no_others():
    import jax
    import jax.numpy as jnp

    from jq.models import llama

    config = llama.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2)
    params = llama.init_params(config, jax.random.PRNGKey(0))
    tokens = jnp.zeros((1, 8), jnp.int32)

    def forward(p, t):
        return llama.forward(p, t, config=config)

    def on(qm):  # the quantizers the calibrated model runs
        return {name for name in qm.traced.quantizers if qm.spec(name) is not None}

    full = jq.quantize(params, forward, preset_cfg("FP8_PER_CHANNEL_PER_TOKEN"), calib_data=[tokens])
    part = jq.quantize(params, forward, preset_cfg("FP8_PER_CHANNEL_PER_TOKEN~*layers.0.*"), calib_data=[tokens])
    assert on(part) == {k for k in on(full) if ".layers.0." not in k}
    assert any(".layers.0." in k for k in on(full))


def test_an_empty_tilde_pattern_is_an_error():
    with pytest.raises(ValueError, match="empty ~PATTERN"):
        preset_cfg("FP8_DEFAULT~")
