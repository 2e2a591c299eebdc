"""A config whose patterns match nothing (issue 11 item 7): ModelOpt's semantics stay (the default entry
quantizes), but the summary says so plainly and the warning names the closest real quantizer names."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp

import jq
from jq.config import as_config
from jq.config_check import closest_quantizers, enabled_by_default

NAMES = ["fc1.input_quantizer", "fc1.weight_quantizer", "fc1.output_quantizer", "head.weight_quantizer"]


def test_closest_quantizers_ignore_glob_characters():
    assert closest_quantizers("*fc_1.weight*", NAMES)[0] == "fc1.weight_quantizer"
    assert closest_quantizers("*zzz*", NAMES) == []


def test_enabled_by_default_counts_quantizers_no_pattern_reached():
    cfg = as_config({"quant_cfg": {"*typo*": {"enable": False}}})  # no "default": ModelOpt's initial state
    assert enabled_by_default(cfg, NAMES) == ["fc1.input_quantizer", "fc1.weight_quantizer", "head.weight_quantizer"]
    cfg = as_config({"quant_cfg": {"*fc1*": {"num_bits": 8}, "default": {"num_bits": 8}}})
    assert enabled_by_default(cfg, NAMES) == ["head.weight_quantizer"]
    assert enabled_by_default(as_config(jq.INT8_DEFAULT_CFG), NAMES) == []  # presets disable the default


def _typo_model():
    model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(4)])
    x = jnp.linspace(-1.0, 1.0, 16).reshape(2, 8)
    return model.init(jax.random.key(0), x), model.apply, x


def test_matching_nothing_warns_with_the_closest_names_and_the_default_count():
    params, apply, x = _typo_model()
    cfg = {"quant_cfg": {"*layer_0.weight*": {"num_bits": 4, "block_sizes": {-1: 8}}}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qm = jq.quantize(params, apply, cfg, calib_data=[(x,)], progress=False)
    (msg,) = [str(w.message) for w in caught if "matched no quantizer" in str(w.message)]
    assert msg == ("jq: config pattern '*layer_0.weight*' matched no quantizer; closest quantizer names: "
                   "'layers_0.weight_quantizer', 'layers_2.weight_quantizer', 'layers_0.input_quantizer'; "
                   "4 quantizers enabled by the default entry")
    assert "4 quantizers enabled by the default entry" in jq.quant_summary(qm)


def test_summary_of_a_preset_has_no_default_line():
    params, apply, x = _typo_model()
    qm = jq.quantize(params, apply, jq.INT8_DEFAULT_CFG, calib_data=[(x,)], progress=False)
    assert "default entry" not in jq.quant_summary(qm)
