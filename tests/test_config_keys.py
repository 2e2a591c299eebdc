"""jq.config_keys: what a config's keys mean (glob and @role patterns) and the hints for misspelled ones."""

import pytest

from jq.config_keys import ROLES, check_role, check_top_level_keys, did_you_mean, format_key_error, matches


def test_a_glob_crosses_dots_and_a_role_pattern_matches_by_role_only():
    assert matches("*fc1*", "block.fc1.weight_quantizer", frozenset())
    assert not matches("fc1", "block.fc1.weight_quantizer", frozenset())
    assert matches("@output_head", "anything", {"output_head"})
    assert not matches("@output_head", "output_head", frozenset())  # a role is not a name


def test_unknown_roles_are_refused_with_the_closest_named():
    for role in ROLES:
        check_role("@" + role)
    check_role("*weight_quantizer")  # not a role pattern
    with pytest.raises(ValueError, match=r"unknown role \(did you mean '@output_head'\?\)"):
        check_role("@output_haed")


def test_did_you_mean_names_the_closest_choice_or_nothing():
    assert did_you_mean("num_bit", ["num_bits", "axis"]) == " (did you mean 'num_bits'?)"
    assert did_you_mean("zzz", ["num_bits", "axis"]) == ""


def test_top_level_keys_tell_modelopt_form_from_a_flat_dict_and_catch_misspellings():
    assert check_top_level_keys({"quant_cfg": {}, "algorithm": "max"})
    assert not check_top_level_keys({"*weight_quantizer": {"num_bits": 8}})
    with pytest.raises(ValueError, match=r"unknown config keys \['algoritm'\] \(did you mean 'algorithm'\?\)"):
        check_top_level_keys({"quant_cfg": {}, "algoritm": "max"})
    with pytest.raises(ValueError, match=r"unknown config key 'quant_cgf' \(did you mean 'quant_cfg'\?\)"):
        check_top_level_keys({"quant_cgf": {}})


def test_a_format_key_is_answered_with_the_right_spelling():
    assert "NVFP4 is {'num_bits': (2, 1)" in str(format_key_error("NVFP4", "quant_cfg['*']: "))
    assert str(format_key_error("nonsense")).endswith("(see jq.formats.supported())")
