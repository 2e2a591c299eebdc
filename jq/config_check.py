"""What a config did to a traced model: patterns that matched nothing, the quantizer names closest to them,
and the quantizers only the default entry reached (ModelOpt's semantics keep those enabled); :func:`warn_unused`
warns about them after tracing.

Example:
  >>> cfg = as_config({"quant_cfg": {"*fc_1*": {"enable": False}}})
  >>> closest_quantizers("*fc_1*", ["fc1.weight_quantizer", "fc2.weight_quantizer", "head.input_quantizer"])
  ['fc1.weight_quantizer']
  >>> enabled_by_default(cfg, ["fc1.weight_quantizer", "fc1.output_quantizer"])
  ['fc1.weight_quantizer']
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Callable, Iterable

from jq.config_keys import matches

__all__ = ["closest_quantizers", "enabled_by_default", "unused_message", "warn_unused"]

_GLOB = re.compile(r"[*?]|\[[^\]]*\]")


def _similarity(stem: str, name: str) -> float:
    """Best ``difflib`` ratio of ``stem`` against the name and each dotted prefix of it (the site part)."""
    parts = name.split(".")
    candidates = [name] + [".".join(parts[:k]) for k in range(1, len(parts))] + parts
    return max(difflib.SequenceMatcher(None, stem, c).ratio() for c in candidates)


def closest_quantizers(pattern: str, names: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """Up to ``n`` quantizer names most like ``pattern`` with its glob characters removed (ratio >= cutoff)."""
    stem = _GLOB.sub("", pattern).strip(".")
    if not stem:
        return []
    scored = sorted(((_similarity(stem, x), x) for x in names), key=lambda t: (-t[0], t[1]))
    return [x for score, x in scored[:n] if score >= cutoff]


def enabled_by_default(cfg, names: Iterable[str], roles_of: Callable[[str], Iterable[str]] | None = None) -> list[str]:
    """Enabled quantizers that no entry other than ``"default"`` (a ``"*"`` catch-all) matched."""
    out = []
    for name in names:
        roles = frozenset(roles_of(name) if roles_of else ())
        spec = cfg.resolve(name, roles)
        on = any(s.enable for s in spec) if isinstance(spec, tuple) else spec.enable
        if on and not any(p != "*" and matches(p, name, roles) for p, _ in cfg.entries):
            out.append(name)
    return out


def unused_message(pattern: str, names: list[str], n_default: int) -> str:
    """The warning for a pattern that matched no quantizer."""
    close = closest_quantizers(pattern, names)
    hint = (f"; closest quantizer names: {', '.join(repr(c) for c in close)}" if close
            else f"; quantizer names look like {', '.join(repr(c) for c in names[:3])}")
    tail = f"; {n_default} quantizers enabled by the default entry" if n_default else ""
    return f"jq: config pattern {pattern!r} matched no quantizer{hint}{tail}"


def warn_unused(cfg, names: Iterable[str], roles_of: Callable[[str], Iterable[str]] | None = None) -> list[str]:
    """Warn once for each user pattern of ``cfg`` (a :class:`~jq.config.QuantConfig`) that matched no quantizer
    (Qwix's ``get_unused_rules``), naming the closest quantizer names and how many quantizers the default entry
    alone enabled; returns those patterns."""
    names = list(names)
    unused = cfg.unused_patterns(names)
    n_default = len(enabled_by_default(cfg, names, roles_of)) if unused else 0
    for p in unused:
        warnings.warn(unused_message(p, names, n_default), stacklevel=3)
    return unused
