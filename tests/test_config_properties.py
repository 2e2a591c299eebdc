"""Property-based tests of the config parser (hypothesis): random dicts never crash with anything but a clear error.

Keys come from the real field names (``QuantizerSpec``'s, ModelOpt's ignored ``learn_amax``/``bias``, the
config's ``quant_cfg``/``algorithm``, ``block_sizes``' keys) plus junk; values are of random types (None,
bools, ints, floats with NaN/inf, strings including real format names, lists, nested dicts). Every call
returns a config or raises ``ValueError``/``TypeError`` with a message; a spec that parses round-trips
through ``to_dict``.
"""

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jq.config import QuantConfig, QuantizerSpec, as_config

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIELDS = [f.name for f in dataclasses.fields(QuantizerSpec)] + ["learn_amax", "bias"]
BLOCK_KEYS = [-1, -2, 0, 1, "-1", "type", "scale_bits", "scale_block_sizes"]
WORDS = ["e4m3", "e5m2", "e2m1", "int4", "int8", "nvfp4", "static", "dynamic", "max", "histogram", "Float",
         "Half", "BFloat16", "awq_lite", "smoothquant", "", "*", "default", "*weight_quantizer", "nn.Linear"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(WORDS), st.text(max_size=6))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner),
                                                       st.dictionaries(st.one_of(st.sampled_from(BLOCK_KEYS), scalars),
                                                                       inner, max_size=3)), max_leaves=8)
field_values = {
    "num_bits": st.one_of(st.integers(-2, 20), st.tuples(st.integers(-1, 9), st.integers(-1, 9)), values),
    "axis": st.one_of(st.none(), st.integers(-3, 3), st.lists(st.integers(-3, 3), max_size=3), values),
    "block_sizes": st.one_of(st.none(), st.dictionaries(st.sampled_from(BLOCK_KEYS), values, max_size=4), values),
}
spec_dicts = st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8), st.integers()), values,
                             max_size=6).flatmap(
    lambda d: st.fixed_dictionaries({k: field_values.get(k, values) for k in d if isinstance(k, str)}))


def _parses_or_raises_clearly(fn, arg):
    try:
        return fn(arg)
    except (ValueError, TypeError) as e:
        assert str(e), f"{type(e).__name__} without a message for {arg!r}"
        return None


@SETTINGS
@given(d=spec_dicts)
def test_quantizer_spec_from_random_dict_parses_or_raises_value_or_type_error(d):
    spec = _parses_or_raises_clearly(QuantizerSpec.from_dict, d)
    if spec is not None:  # what parses round-trips
        assert QuantizerSpec.from_dict(spec.to_dict()) == spec


quant_cfgs = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(WORDS), st.text(max_size=8), st.integers(), st.none()),
                    st.one_of(spec_dicts, st.booleans(), st.lists(spec_dicts, max_size=2), values), max_size=4),
    st.lists(st.one_of(st.fixed_dictionaries({"quantizer_name": st.one_of(st.sampled_from(WORDS), values)},
                                             optional={"cfg": st.one_of(spec_dicts, values), "enable": values}),
                       st.tuples(st.sampled_from(WORDS), spec_dicts), values), max_size=3),
    values)
configs = st.one_of(
    st.fixed_dictionaries({}, optional={"quant_cfg": quant_cfgs, "algorithm": st.one_of(
        st.sampled_from(["max", "awq_lite", "smoothquant", None]), st.dictionaries(
            st.sampled_from(["method", "alpha", "alpha_step", "junk"]), values, max_size=3), values),
        "junk": values}),
    quant_cfgs)


@SETTINGS
@given(cfg=configs)
def test_quant_config_from_random_dict_parses_or_raises_value_or_type_error(cfg):
    parsed = _parses_or_raises_clearly(as_config, cfg)
    if parsed is not None:
        assert isinstance(parsed, QuantConfig)
        assert as_config(parsed.to_dict()) == parsed  # what parses round-trips
    if isinstance(cfg, dict):
        _parses_or_raises_clearly(QuantConfig.from_dict, cfg)


def test_repeated_patterns_round_trip_through_the_list_form():
    # found by the property above: a dict keeps one entry per pattern, so [spec, spec] came back as [spec]
    cfg = {"quant_cfg": [{"quantizer_name": "*w*", "cfg": {"num_bits": (4, 3)}},
                         {"quantizer_name": "*w*", "enable": False},
                         {"quantizer_name": "*x*", "cfg": {"num_bits": 8}}]}
    parsed = as_config(cfg)
    out = parsed.to_dict()["quant_cfg"]
    assert isinstance(out, list) and [e["quantizer_name"] for e in out] == ["*w*", "*w*", "*x*"]
    assert out[1] == {"quantizer_name": "*w*", "enable": False}
    assert as_config(parsed.to_dict()) == parsed
    assert isinstance(as_config({"quant_cfg": {"*w*": {"num_bits": 8}}}).to_dict()["quant_cfg"], dict)
