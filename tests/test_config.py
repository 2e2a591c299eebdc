"""QuantizerSpec validation and QuantConfig matching (ModelOpt semantics: ordered globs, later wins)."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import jq
from jq.calib.algorithms import algorithm_from_text
from jq.config import QuantConfig, QuantizerSpec, as_config, warn_unused


def test_spec_kinds():
    assert QuantizerSpec(num_bits=8).kind == "int"
    assert QuantizerSpec(num_bits=(4, 3)).kind == "fp8"
    assert QuantizerSpec(num_bits="e4m3").num_bits == (4, 3)
    assert QuantizerSpec(num_bits="int4").num_bits == 4
    nv = QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, "type": "dynamic", "scale_bits": (4, 3)})
    assert nv.kind == "nvfp4" and nv.is_dynamic and nv.bits_per_element == 4.5
    mx = QuantizerSpec(num_bits=8, block_sizes={-1: 32, "type": "dynamic", "scale_bits": (8, 0)})
    assert mx.kind == "mxint8"


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_bits=8, axis=0, block_sizes={-1: 16}), "axis must be None when block_sizes"),
    (dict(num_bits=(2, 1)), "E2M1"),
    (dict(num_bits=(1, 2), block_sizes={-1: 32, "type": "dynamic", "scale_bits": (8, 0)}), "not a format jq implements"),
    (dict(num_bits=(3, 2)), "not a format jq implements"),  # FP6 exists only as an MX element
    (dict(num_bits=(7, 7)), "supported FPx"),
    (dict(num_bits=0), "positive"),
    (dict(num_bits=(4, 3), unsigned=True), "integer quantization only"),
    (dict(num_bits=8, block_sizes={-1: 16, "scale_bits": (4, 3), "type": "dynamic"}), "NVFP4"),
    (dict(num_bits=8, block_sizes={-1: 16, "type": "dynamic", "scale_bits": (8, 0)}), "blocks of 32"),
    (dict(num_bits=8, block_sizes={-1: 16, "kind": 3}), "unknown key 'kind'"),
    (dict(num_bits=8, block_sizes={-1: -4}), "positive int"),
    (dict(num_bits=8, type="sometimes"), "static"),
    (dict(num_bits=8, calibrator="magic"), "calibrator"),
    (dict(num_bits=8, effective_bits=-1), "effective_bits"),
    (dict(num_bits=8, enable="yes"), "enable must be a bool"),
    # found by the property test (hypothesis): a list is not block sizes
    (dict(num_bits=8, block_sizes=[]), r"block_sizes must be None or a dict such as \{-1: 16\}, got \[\]"),
])
def test_invalid_specs_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantizerSpec(**kwargs)


def test_unknown_field_lists_allowed_ones():
    with pytest.raises(ValueError, match=r"quant_cfg\['\*weight_quantizer'\]: unknown QuantizerSpec field 'num_bit'"):
        as_config({"quant_cfg": {"*weight_quantizer": {"num_bit": 8}}})


def test_later_entries_win_and_default_comes_first():
    cfg = as_config({"quant_cfg": {
        "*weight_quantizer": {"num_bits": 8, "axis": 0},
        "*lm_head*": {"enable": False},
        "default": {"enable": False},  # written last, applied first (ModelOpt)
    }, "algorithm": "max"})
    assert cfg.entries[0][0] == "*"
    assert cfg.resolve("fc.weight_quantizer").axis == 0
    assert not cfg.resolve("fc.input_quantizer").enable
    assert not cfg.resolve("lm_head.weight_quantizer").enable


def test_enable_only_entry_keeps_the_format():
    cfg = as_config({"quant_cfg": {"*weight_quantizer": {"num_bits": 4, "block_sizes": {-1: 128}},
                                   "*fc*": {"enable": False}}})
    cfg = cfg.with_entries(("fc.weight_quantizer", {"enable": True}))
    spec = cfg.resolve("fc.weight_quantizer")
    assert spec.enable and spec.num_bits == 4


def test_full_entry_resets_unnamed_fields():
    cfg = as_config({"quant_cfg": {"*weight_quantizer": {"num_bits": 8, "axis": 0}}})
    cfg = cfg.with_entries(("*weight_quantizer", {"num_bits": 4, "block_sizes": {-1: 128}}))
    assert cfg.resolve("x.weight_quantizer").axis is None  # no axis/block_sizes conflict


def test_legacy_flat_dict_and_list_form():
    legacy = as_config({"*weight_quantizer": {"num_bits": 8, "axis": 0}, "default": {"num_bits": 8, "axis": None}})
    assert legacy.algorithm.method == "max"
    assert legacy.resolve("a.input_quantizer").enable and legacy.resolve("a.weight_quantizer").axis == 0
    listed = as_config({"quant_cfg": [
        {"quantizer_name": "*", "enable": False},
        {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": (4, 3)}},
    ], "algorithm": None})
    assert listed.resolve("a.weight_quantizer").kind == "fp8"
    assert not listed.resolve("a.input_quantizer").enable
    assert listed.algorithm.method is None


def test_glob_brackets_and_module_class_entries():
    cfg = as_config(jq.merge_presets(jq.FP8_DEFAULT_CFG, jq.FP8_KV_CFG))
    assert cfg.resolve("layers.0.attn.k_bmm_quantizer").enable
    assert cfg.resolve("layers.0.attn.v_bmm_quantizer").enable
    assert not cfg.resolve("layers.0.attn.q_bmm_quantizer").enable
    with_class = as_config({"quant_cfg": {"nn.BatchNorm2d": {"*": {"enable": False}},
                                          "*input_quantizer": {"num_bits": 8}}})
    assert [p for p, _ in with_class.entries] == ["*input_quantizer"]


def test_sequential_entries():
    cfg = as_config(jq.W4A8_AWQ_BETA_CFG)
    spec = cfg.resolve("mlp.fc.weight_quantizer")
    assert isinstance(spec, tuple) and [s.kind for s in spec] == ["int", "fp8"]


def test_algorithm_parsing():
    assert as_config(jq.INT4_AWQ_CFG).algorithm.kwargs == {"alpha_step": 0.1}
    with pytest.raises(ValueError, match="unknown config keys"):
        as_config({"quant_cfg": {}, "algo": "max"})
    with pytest.raises(ValueError, match="method must be a name"):
        as_config({"quant_cfg": {}, "algorithm": {"method": 3}})


def test_algorithm_from_text():
    assert algorithm_from_text("max") == "max"
    assert algorithm_from_text("gptq,act_order=true,perc_damp=0.1,block_size=64,formats=fp8") == {
        "method": "gptq", "act_order": True, "perc_damp": 0.1, "block_size": 64, "formats": "fp8"}
    with pytest.raises(ValueError, match="option 'alpha' is not key=value"):
        algorithm_from_text("smoothquant,alpha")


def test_unknown_algorithm_or_option_lists_the_valid_ones():
    """The algorithm is resolved against the registry (jq.calib.algorithms) before anything is traced."""
    from jq.calib import algorithms
    with pytest.raises(ValueError, match=r"unknown calibration algorithm 'magic'.*awq_lite.*smoothquant"):
        jq.quantize({"w": jnp.ones((2, 2))}, lambda p, x: x @ p["w"], {"quant_cfg": {}, "algorithm": "magic"},
                    calib_data=[(jnp.ones((1, 2)),)])
    with pytest.raises(ValueError, match=r"did you mean 'smoothquant'"):
        algorithms.make("smoothquat")
    with pytest.raises(ValueError, match=r"has no option 'alpha_stp'.*did you mean 'alpha_step'"):
        algorithms.make({"method": "awq_lite", "alpha_stp": 0.2})
    assert algorithms.make({"method": "smoothquant", "alpha": 0.5}).alpha == 0.5


def test_algorithm_tuple_options_given_as_one_value_or_a_list_become_tuples():
    """``formats=fp8`` from a command line must not stay the string "fp8": ``"fp8" in "mxfp8"`` is True."""
    from jq.calib import algorithms
    assert algorithms.make({"method": "smoothquant", "formats": "mxfp8"}).formats == ("mxfp8",)
    assert algorithms.make({"method": "smoothquant", "formats": ["int", "fp8"]}).formats == ("int", "fp8")
    assert algorithms.make({"method": "awq_full", "formats": ("int",)}).formats == ("int",)
    assert algorithms.make({"method": "smoothquant", "alpha": 0.5}).alpha == 0.5  # non-tuple options unchanged


def test_unknown_field_suggests_the_closest():
    with pytest.raises(ValueError, match=r"unknown QuantizerSpec field 'num_bit' \(did you mean 'num_bits'\?\)"):
        QuantizerSpec.from_dict({"num_bit": 8})


def test_histogram_calibrator_has_its_effect():
    """``calibrator: "histogram"`` is accepted only because it does something (issue 11, item 5): a histogram
    of the activation whose amax comes from the algorithm (entropy under max), clipping the heavy tail that max
    keeps; an unknown calibrator is still an error."""
    x = jnp.asarray(np.random.default_rng(0).laplace(size=(64, 256)), jnp.float32)
    cfg = {"quant_cfg": {"*": {"num_bits": 8}, "*input_quantizer": {"num_bits": 8, "calibrator": "histogram"}},
           "algorithm": "max"}
    qm = jq.quantize({"w": jnp.eye(256)}, lambda p, x: x @ p["w"], cfg, calib_data=[(x,)], progress=False)
    amax = float(qm.qstate["w.input_quantizer"]["amax"])
    assert 1.0 <= amax < 0.95 * float(jnp.max(jnp.abs(x)))
    assert float(qm.qstate["w.weight_quantizer"]["amax"]) == 1.0  # weights keep max
    assert QuantizerSpec(num_bits=8, calibrator="histogram").to_dict()["calibrator"] == "histogram"
    with pytest.raises(ValueError, match="calibrator must be one of"):
        QuantizerSpec(num_bits=8, calibrator="histgram")


def test_round_trip_through_dict():
    cfg = as_config(jq.NVFP4_DEFAULT_CFG)
    again = QuantConfig.from_dict(cfg.to_dict())
    names = ["a.weight_quantizer", "a.input_quantizer", "lm_head.weight_quantizer", "x.k_bmm_quantizer"]
    assert [again.resolve(n) for n in names] == [cfg.resolve(n) for n in names]


def test_unused_patterns_skip_standard_exclusions():
    cfg = as_config({"quant_cfg": {"*weight_quantizer": {"num_bits": 8}, "*lm_head*": {"enable": False},
                                   "*typo_layer*": {"enable": False}}})
    names = ["fc.weight_quantizer", "fc.input_quantizer"]
    assert cfg.unused_patterns(names) == ["*typo_layer*"]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        warn_unused(cfg, names)
    assert any("*typo_layer*" in str(x.message) for x in w)


def test_modelopt_recipe_spellings_of_num_bits_and_scale_bits():
    # ModelOpt's recipe YAMLs (configs/numerics/*.yaml) write formats as strings
    nvfp4 = QuantizerSpec.from_dict({"num_bits": "e2m1", "block_sizes": {-1: 16, "type": "dynamic",
                                                                         "scale_bits": "e4m3"}})
    assert nvfp4.kind == "nvfp4" and nvfp4.block_sizes.scale_bits == (4, 3)
    mxfp6 = QuantizerSpec.from_dict({"num_bits": "e3m2", "block_sizes": {-1: 32, "type": "dynamic",
                                                                         "scale_bits": "e8m0"}})
    assert mxfp6.kind == "mxfp6_e3m2" and mxfp6.block_sizes.scale_bits == (8, 0)
    assert QuantizerSpec.from_dict({"num_bits": "E2M3", "block_sizes": {-1: 32, "type": "dynamic",
                                                                        "scale_bits": (8, 0)}}).kind == "mxfp6_e2m3"


@pytest.mark.parametrize("fmt, right", [("fp8", r"'num_bits': \(4, 3\)"), ("nvfp4", r"'scale_bits': \(4, 3\)"),
                                        ("int4", r"'block_sizes': \{-1: 128\}"), ("foo", r"jq.formats.supported")])
def test_format_key_of_seed_001_names_the_modelopt_spelling(fmt, right):
    with pytest.raises(ValueError, match=rf"\*weight_quantizer.*'format' is not a quantizer field.*{right}"):
        QuantConfig.from_dict({"quant_cfg": {"*weight_quantizer": {"num_bits": 8, "format": fmt}}})


def test_misspelled_top_level_and_block_keys_suggest_the_right_one():
    with pytest.raises(ValueError, match=r"unknown config keys \['algoritm'\] \(did you mean 'algorithm'\?\)"):
        as_config({"quant_cfg": {}, "algoritm": "max"})
    # alone, a misspelled quant_cfg would be read as a legacy flat dict with a pattern called "quant_cfgs"
    with pytest.raises(ValueError, match=r"unknown config key 'quant_cfgs' \(did you mean 'quant_cfg'\?\)"):
        as_config({"quant_cfgs": {"*weight_quantizer": {"num_bits": 8}}})
    with pytest.raises(ValueError, match=r"block_sizes: unknown key 'typ' \(did you mean 'type'\?\)"):
        as_config({"quant_cfg": {"*w*": {"num_bits": 4, "block_sizes": {-1: 16, "typ": "static"}}}})
