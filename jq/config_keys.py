"""What the keys of a config mean and the hints for misspelled ones: glob and ``"@role"`` patterns over
quantizer names, the roles the trace gives, and "did you mean" suggestions (:mod:`jq.config` parses with these).

A quantizer pattern is an ``fnmatch`` glob over the quantizer's name (``*`` crosses dots, as ModelOpt's), or
``"@<role>"``, which matches the quantizers of the sites the trace gives that role (:data:`ROLES`).

Example:
  >>> matches("*fc1*", "fc1.weight_quantizer", frozenset()), matches("@output_head", "head.x", {"output_head"})
  (True, True)
  >>> did_you_mean("quant_cgf", ("quant_cfg", "algorithm"))
  " (did you mean 'quant_cfg'?)"
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Mapping

__all__ = ["ROLES", "CONFIG_KEYS", "matches", "check_role", "did_you_mean", "check_top_level_keys", "format_key_error"]

# Role patterns: a quant_cfg key "@<role>" matches the quantizers of the sites the trace gives that role,
# resolved after tracing (QuantizedModel.spec). "@output_head": the site whose result is the model's output
# (jq.trace.output_head); the presets disable it.
ROLES = ("output_head",)

CONFIG_KEYS = ("quant_cfg", "algorithm")

_FORMAT_SPELLINGS = {  # the right spelling of formats named by a "format" key
    "fp8": "FP8 E4M3 is {'num_bits': (4, 3)} (or 'e4m3'), E5M2 {'num_bits': (5, 2)}",
    "e4m3": "FP8 E4M3 is {'num_bits': (4, 3)} (or 'e4m3')",
    "int8": "INT8 is {'num_bits': 8}",
    "int4": "INT4 in blocks of 128 is {'num_bits': 4, 'block_sizes': {-1: 128}}",
    "nvfp4": "NVFP4 is {'num_bits': (2, 1), 'block_sizes': {-1: 16, 'type': 'dynamic', 'scale_bits': (4, 3)}}",
    "mxfp8": "MXFP8 is {'num_bits': (4, 3), 'block_sizes': {-1: 32, 'type': 'dynamic', 'scale_bits': (8, 0)}}",
    "mxfp4": "MXFP4 is {'num_bits': (2, 1), 'block_sizes': {-1: 32, 'type': 'dynamic', 'scale_bits': (8, 0)}}",
}
_FORMAT_HELP = ("FP8 E4M3 is {'num_bits': (4, 3)}, INT8 {'num_bits': 8}, NVFP4 {'num_bits': (2, 1), 'block_sizes': "
                "{-1: 16, 'type': 'dynamic', 'scale_bits': (4, 3)}} (see jq.formats.supported())")


def matches(pattern: str, name: str, roles: Iterable[str]) -> bool:
    """``"@role"`` matches by role; any other pattern is an ``fnmatch`` glob over the name."""
    return pattern[1:] in roles if pattern.startswith("@") else fnmatch.fnmatchcase(name, pattern)


def check_role(pattern: str) -> None:
    """``ValueError`` when ``pattern`` is ``"@<role>"`` with a role not in :data:`ROLES` (closest one named)."""
    if pattern.startswith("@") and pattern[1:] not in ROLES:
        raise ValueError(f"quant_cfg[{pattern!r}]: unknown role{did_you_mean(pattern, ['@' + r for r in ROLES])}; "
                         f"roles: {['@' + r for r in ROLES]}")


def did_you_mean(word: str, choices) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``choices`` (``difflib`` ratio >= 0.6), or ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_top_level_keys(cfg: Mapping) -> bool:
    """Whether ``cfg`` is ModelOpt's ``{"quant_cfg", "algorithm"}`` form (``False``: a legacy flat dict of
    patterns). ``ValueError`` for an unknown key beside those two, or, in a flat dict, a glob-free key that
    looks like a misspelled one (it would otherwise be read as a quantizer pattern)."""
    if any(k in cfg for k in CONFIG_KEYS):
        unknown = set(cfg) - set(CONFIG_KEYS)
        if unknown:
            hints = "".join(did_you_mean(k, CONFIG_KEYS) for k in sorted(unknown))
            raise ValueError(f"unknown config keys {sorted(unknown)}{hints}; a config has 'quant_cfg' and "
                             f"'algorithm'")
        return True
    for k in cfg:
        hint = did_you_mean(k, CONFIG_KEYS) if isinstance(k, str) and "*" not in k else ""
        if hint:
            raise ValueError(f"unknown config key {k!r}{hint}; a config has 'quant_cfg' and 'algorithm'")
    return False


def format_key_error(value, where: str = "") -> ValueError:
    """The error for a quantizer dict with a ``"format"`` key (not a ModelOpt field; seed 001 wrote
    ``{"num_bits": 8, "format": "fp8"}``), with the right spelling of the format it names."""
    return ValueError(f"{where}'format' is not a quantizer field: ModelOpt (and jq) spell the format with num_bits "
                      f"and block_sizes: {_FORMAT_SPELLINGS.get(str(value).lower(), _FORMAT_HELP)}")
