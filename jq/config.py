"""Quantizer specs and configs in ModelOpt's vocabulary.

A :class:`QuantizerSpec` describes one quantizer (ModelOpt's ``QuantizerAttributeConfig``); a
:class:`QuantConfig` is an ordered list of ``(glob, spec | enable flag | [specs])`` entries matched against
quantizer names such as ``Dense_0.weight_quantizer``; later entries win. ModelOpt's dict configs are
accepted verbatim::

    {"quant_cfg": {"*weight_quantizer": {"num_bits": 8, "axis": 0},
                   "*input_quantizer": {"num_bits": 8, "axis": None},
                   "*lm_head*": {"enable": False},
                   "default": {"enable": False}},
     "algorithm": "max"}

``"default"`` is applied first, to every quantizer (ModelOpt's rule). An entry naming only ``enable``
toggles the quantizer and keeps its format; any other entry sets the whole spec (fields it does not name
take their defaults, ``enable`` defaults to True). A list of specs makes a sequential quantizer.

A key ``"@<role>"`` (jq's addition) matches by what a quantizer's site does rather than by its name, once the
model is traced. The one role is ``"@output_head"``: the layer whose result is the model's output, when it
sits on top of other layers (a classifier or LM head, :mod:`jq.trace.output_head`). The presets disable it;
a config without that key quantizes the head like any other layer (ModelOpt's semantics).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

from jq import formats
from jq.calib import calibrators
from jq.config_check import warn_unused  # noqa: F401  (re-exported: jq.calibrate imports it from jq.config)
from jq.config_keys import ROLES, check_role, check_top_level_keys, did_you_mean, format_key_error, matches

__all__ = [
    "BlockSizes",
    "QuantizerSpec",
    "QuantConfig",
    "Algorithm",
    "as_config",
    "QUANTIZER_SLOTS",
    "DEFAULT_EXCLUSION_PATTERNS",
    "ROLES",
]

# Quantizer name suffixes jq creates, as ModelOpt's QuantLinear / attention modules do.
QUANTIZER_SLOTS = (
    "input_quantizer",
    "weight_quantizer",
    "output_quantizer",
    "q_bmm_quantizer",
    "k_bmm_quantizer",
    "v_bmm_quantizer",
    "softmax_quantizer",
)
# ModelOpt's standard exclusions: not reported as unused when they match nothing.
DEFAULT_EXCLUSION_PATTERNS = frozenset(
    {
        "*lm_head*",
        "*proj_out.*",
        "*block_sparse_moe.gate*",
        "*router*",
        "*mlp.gate.*",
        "*mlp.shared_expert_gate.*",
        "*output_layer*",
        "output.*",
        "embed.*",
        "*.embed.*",
        "*embedding*",
        "*embed_tokens*",
        "*wte*",
        "*layernorm*",
        "*layer_norm*",
        "*rmsnorm*",
        "*batchnorm*",
        "*batch_norm*",
        "*.norm.*",
        "*vision_tower*",
        "*visual*",
    }
)

_FP_NAMES = {"e4m3": (4, 3), "e5m2": (5, 2), "e2m1": (2, 1), "fp8": (4, 3), "fp4": (2, 1)}
_INT_NAMES = {f"int{b}": b for b in range(2, 9)}
_MODELOPT_FP = {(4, 3), (5, 2), (2, 1), (1, 2), (0, 3), (3, 0), (3, 2), (2, 3)}
_BLOCK_STRING_KEYS = ("type", "scale_bits", "scale_block_sizes")
def _bits(value: Any, field: str) -> int | tuple[int, int]:
    """``8`` / ``(4, 3)`` / ``"e4m3"`` / ``"int4"`` / ``[4, 3]`` → int or (E, M) tuple."""
    if isinstance(value, str):
        key = value.lower()
        if key in _FP_NAMES:
            return _FP_NAMES[key]
        if key in _INT_NAMES:
            return _INT_NAMES[key]
        em = re.fullmatch(r"e(\d)m(\d)", key)  # ModelOpt's recipe spellings: e4m3, e3m2, e2m3, e8m0 ...
        if em:
            return (int(em.group(1)), int(em.group(2)))
        raise ValueError(f"{field}: unknown format name {value!r}; use an int, an (E, M) tuple, 'eXmY' or one of "
                         f"{sorted(_FP_NAMES) + sorted(_INT_NAMES)}")
    if isinstance(value, bool):
        raise ValueError(f"{field} must be an int or an (E, M) tuple, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{field} must be a positive integer or a tuple of positive integers, got {value}")
        return value
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{field} must be an int, an (E, M) tuple or a name like 'e4m3', got {value!r}")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Block quantization parameters: ModelOpt's ``block_sizes`` dict, frozen.

    Attributes:
      sizes: ``((axis, size), ...)``; a size of None means the whole axis (per-token scaling).
      type: ``"static"`` (calibrated per-block amax) or ``"dynamic"`` (computed from the tensor each call).
      scale_bits: format of the block scales: ``(4, 3)`` E4M3 (NVFP4), ``(8, 0)`` E8M0 (MX), or None.
      scale_block_sizes: ModelOpt's double-quantization block sizes (kept for round trips).
    """

    sizes: tuple[tuple[int, int | None], ...]
    type: str = "static"
    scale_bits: tuple[int, int] | None = None
    scale_block_sizes: tuple[tuple[int, int], ...] | None = None

    @classmethod
    def from_dict(cls, d: Mapping) -> BlockSizes:
        sizes = []
        for k, v in d.items():
            if isinstance(k, str) and k.lstrip("-").isdigit():
                k = int(k)  # JSON round trips turn axis keys into strings
            if isinstance(k, str):
                if k not in _BLOCK_STRING_KEYS:
                    raise ValueError(f"block_sizes: unknown key {k!r}{did_you_mean(k, _BLOCK_STRING_KEYS)}; allowed: "
                                     f"integer axes and {_BLOCK_STRING_KEYS}")
                continue
            if not isinstance(k, int) or isinstance(k, bool):
                raise ValueError(f"block_sizes: axis keys must be ints, got {k!r}")
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ValueError(f"block_sizes[{k}] must be a positive int or None, got {v!r}")
            sizes.append((k, v))
        if not sizes:
            raise ValueError("block_sizes needs at least one axis, e.g. {-1: 16}")
        btype = d.get("type", "static")
        if btype not in ("static", "dynamic"):
            raise ValueError(f"block_sizes['type'] must be 'static' or 'dynamic', got {btype!r}")
        sb = d.get("scale_bits")
        sb = None if sb is None else _bits(sb, "block_sizes['scale_bits']")
        if sb is not None and sb not in ((4, 3), (8, 0)):
            raise ValueError(f"block_sizes['scale_bits'] must be (4, 3) (E4M3) or (8, 0) (E8M0), got {sb!r}")
        sbs = d.get("scale_block_sizes")
        sbs = None if sbs is None else tuple(sorted((int(k), int(v)) for k, v in dict(sbs).items()))
        return cls(tuple(sorted(sizes)), btype, sb, sbs)

    def to_dict(self) -> dict:
        d: dict[Any, Any] = dict(self.sizes)
        d["type"] = self.type
        if self.scale_bits is not None:
            d["scale_bits"] = self.scale_bits
        if self.scale_block_sizes is not None:
            d["scale_block_sizes"] = dict(self.scale_block_sizes)
        return d

    @property
    def axes(self) -> dict[int, int | None]:
        return dict(self.sizes)


@dataclasses.dataclass(frozen=True)
class QuantizerSpec:
    """One quantizer, with ModelOpt's fields and meaning.

    Axes of a weight quantizer refer to the canonical ``[out_features, in_features]`` view of the weight
    (in = the contracting dimensions), so ModelOpt configs carry over verbatim; axes of an activation
    quantizer refer to the activation as it is. The numeric format is an object (:attr:`format`, from
    :mod:`jq.formats`) resolved once from ``num_bits`` and ``block_sizes``.

    Attributes:
      num_bits: ``8`` (INT8), ``4``, ``(4, 3)`` E4M3, ``(5, 2)`` E5M2, ``(2, 1)`` E2M1 (with block scales).
      axis: axes KEPT in the amax (``0``: per output channel); None for per tensor. Excludes ``block_sizes``.
      block_sizes: e.g. ``{-1: 16, "type": "dynamic", "scale_bits": (4, 3)}`` (NVFP4) or ``{-1: 128}``.
      enable: False bypasses the quantizer.
      unsigned, narrow_range: integer range options.
      fake_quant: True quantize-dequantizes in float; False marks the tensor for real quantization.
      type: ``"static"`` or ``"dynamic"`` (per-call amax, no calibration).
      calibrator: how a static amax is calibrated (:mod:`jq.calib.calibrators`): ``"max"``, ``"histogram"``,
        ``"percentile"``, ``"entropy"``, ``"mse"``, ``"mse_sweep"``, or ``{"method": ..., **options}``; kept
        as the frozen calibrator object.
      pass_through_bwd: True: plain straight-through gradient; False: clipped STE (zero where ``|x| > amax``).
      rotate: apply a normalized Hadamard rotation to the last axis before quantizing (QuaRot-style).
      trt_high_precision_dtype: ``"Float"``, ``"Half"`` or ``"BFloat16"`` for exported Q/DQ nodes.
      effective_bits: bits per element used for cost models (NVFP4 counts 4.5); None derives it.

    Example:
      >>> QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, "type": "dynamic", "scale_bits": (4, 3)}).kind
      'nvfp4'
    """

    num_bits: int | tuple[int, int] = 8
    axis: int | tuple[int, ...] | None = None
    block_sizes: BlockSizes | None = None
    enable: bool = True
    unsigned: bool = False
    narrow_range: bool = False
    fake_quant: bool = True
    type: str = "static"
    calibrator: str | Mapping | calibrators.Calibrator = "max"
    pass_through_bwd: bool = False
    rotate: bool = False
    trt_high_precision_dtype: str = "Float"
    effective_bits: float | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass normalisation)
        set_("num_bits", _bits(self.num_bits, "num_bits"))
        if isinstance(self.axis, list):
            set_("axis", tuple(self.axis))
        if self.axis is not None and not isinstance(self.axis, int):
            if not (isinstance(self.axis, tuple) and all(isinstance(a, int) for a in self.axis)):
                raise ValueError(f"axis must be None, an int or a tuple of ints, got {self.axis!r}")
        if isinstance(self.block_sizes, Mapping):
            set_("block_sizes", BlockSizes.from_dict(self.block_sizes))
        if self.block_sizes is not None and not isinstance(self.block_sizes, BlockSizes):
            raise ValueError(f"block_sizes must be None or a dict such as {{-1: 16}}, got {self.block_sizes!r}")
        for field in ("enable", "unsigned", "narrow_range", "fake_quant", "pass_through_bwd", "rotate"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"{field} must be a bool, got {getattr(self, field)!r}")
        if self.type not in ("static", "dynamic"):
            raise ValueError(f"type must be 'static' or 'dynamic', got {self.type!r}")
        set_("calibrator", calibrators.parse(self.calibrator))
        if self.trt_high_precision_dtype not in ("Float", "Half", "BFloat16"):
            raise ValueError(f"trt_high_precision_dtype must be 'Float', 'Half' or 'BFloat16', "
                             f"got {self.trt_high_precision_dtype!r}")
        if self.effective_bits is not None and (isinstance(self.effective_bits, bool)
                                                or not isinstance(self.effective_bits, (int, float))
                                                or self.effective_bits <= 0):
            raise ValueError(f"effective_bits must be a positive number or None, got {self.effective_bits!r}")
        if self.block_sizes is not None and self.axis is not None:
            raise ValueError("axis must be None when block_sizes is set (they are exclusive), "
                             f"got axis={self.axis!r} and block_sizes={self.block_sizes.to_dict()!r}")
        if isinstance(self.num_bits, tuple) and self.num_bits not in _MODELOPT_FP:
            raise ValueError(f"num_bits={self.num_bits}: supported FPx formats are E4M3 (4, 3), E5M2 (5, 2), "
                             f"E2M1 (2, 1) with block scales, and (3, 2) / (2, 3) (MXFP6)")
        if self.num_bits == (2, 1) and (self.block_sizes is None or self.block_sizes.scale_bits is None):
            raise ValueError("num_bits=(2, 1) (E2M1) needs dynamic block scales: block_sizes={-1: 16, "
                             "'type': 'dynamic', 'scale_bits': (4, 3)} (NVFP4) or {-1: 32, ..., (8, 0)} (MXFP4)")
        self.format.validate(self)  # resolving raises ValueError naming the supported formats
        self.calibrator.validate(self)

    # -- the format and what it derives ---------------------------------------------------------------
    @functools.cached_property
    def format(self) -> formats.Format:
        """The format object serving this spec (:mod:`jq.formats`)."""
        return formats.resolve(self)

    @property
    def is_dynamic(self) -> bool:
        """True when the scale comes from the tensor at each call (no calibrated amax for the elements)."""
        return self.format.is_dynamic(self)

    @property
    def kind(self) -> str:
        """The format's name: ``int``, ``fp8``, ``nvfp4``, ``mxfp8``, ``mxfp4``, ``mxint8``, ``mxfp6_e3m2`` ..."""
        return self.format.name

    @property
    def bits_per_element(self) -> float:
        """Storage cost per element including scales (NVFP4 4.5, MX 4.25/8.25), or ``effective_bits``."""
        if self.effective_bits is not None:
            return float(self.effective_bits)
        return self.format.bits_per_element(self)

    def describe(self) -> str:
        """Short human-readable format, e.g. ``int8 per-axis0`` or ``nvfp4 b16``."""
        return self.format.describe(self)

    # -- conversion -------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping, *, where: str = "") -> QuantizerSpec:
        """Build from a ModelOpt attribute dict; unknown keys raise ``ValueError`` naming the allowed ones."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}expected a dict of quantizer fields, got {type(d).__name__}")
        fields = [f.name for f in dataclasses.fields(cls)]
        ignored = {"learn_amax", "bias"}  # ModelOpt fields with no jq meaning: accepted only at defaults
        kwargs = {}
        for k, v in d.items():
            if k in ignored:
                if k == "learn_amax" and v:
                    raise ValueError(f"{where}learn_amax is deprecated in ModelOpt and not supported")
                if k == "bias" and v is not None:
                    raise ValueError(f"{where}affine 'bias' quantization is not supported by jq")
                continue
            if k == "format":  # not a ModelOpt field
                raise format_key_error(v, where)
            if k not in fields:
                raise ValueError(f"{where}unknown QuantizerSpec field {k!r}{did_you_mean(k, fields)}; "
                                 f"allowed: {sorted(fields)}")
            kwargs[k] = v
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}{e}") from None

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["block_sizes"] = None if self.block_sizes is None else self.block_sizes.to_dict()
        d["calibrator"] = self.calibrator.to_config()
        return d

    def replace(self, **changes) -> QuantizerSpec:
        return dataclasses.replace(self, **changes)


Entry = Union[QuantizerSpec, tuple, bool]  # spec, sequential specs, or an enable flag


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """Calibration algorithm: ``method`` (e.g. ``"max"``, ``"smoothquant"``) and its keyword options."""

    method: str | None = "max"
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, value) -> Algorithm:
        if isinstance(value, Algorithm):
            return value
        if value is None or isinstance(value, str):
            method, options = value, {}
        elif isinstance(value, Mapping):
            options = dict(value)
            if "method" not in options:
                raise ValueError(f"algorithm dict needs a 'method' key, got {value!r}")
            method = options.pop("method")
        else:
            raise ValueError(f"algorithm must be None, a name or a dict with 'method', got {value!r}")
        if method is not None and not isinstance(method, str):
            raise ValueError(f"algorithm method must be a name or None, got {method!r}")
        return cls(method, tuple(sorted(options.items())))

    @property
    def kwargs(self) -> dict:
        return dict(self.options)


def _default_spec_for(name: str) -> QuantizerSpec:
    """State of a quantizer before any entry: ModelOpt creates input/weight quantizers enabled (INT8 per
    tensor) and output/attention quantizers disabled."""
    on = name.endswith(("input_quantizer", "weight_quantizer"))
    return QuantizerSpec(enable=on)


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """Ordered ``(pattern, entry)`` rules plus the calibration algorithm.

    ``entry`` is a :class:`QuantizerSpec`, a tuple of specs (sequential quantizer) or a bool (enable flag).
    Patterns are ``fnmatch`` globs over quantizer names (``*`` crosses dots), as in ModelOpt.

    Example:
      >>> cfg = QuantConfig.from_dict({"quant_cfg": {"*weight_quantizer": {"num_bits": 4, "block_sizes": {-1: 128}},
      ...                                            "default": {"enable": False}}, "algorithm": "max"})
      >>> cfg.resolve("fc1.weight_quantizer").num_bits, cfg.resolve("fc1.input_quantizer").enable
      (4, False)
    """

    entries: tuple[tuple[str, Entry], ...]
    algorithm: Algorithm = Algorithm("max")

    @classmethod
    def from_dict(cls, cfg: Mapping) -> QuantConfig:
        """Parse ModelOpt's ``{"quant_cfg": ..., "algorithm": ...}`` or a legacy flat dict of patterns."""
        cfg = dict(cfg)
        if check_top_level_keys(cfg):
            quant_cfg, algorithm = cfg.get("quant_cfg", {}), cfg.get("algorithm", "max")
        else:  # legacy: the dict is the quant_cfg itself
            quant_cfg, algorithm = cfg, "max"
        return cls(_parse_quant_cfg(quant_cfg), Algorithm.parse(algorithm))

    def resolve(self, name: str, roles: Iterable[str] = ()) -> QuantizerSpec | tuple[QuantizerSpec, ...]:
        """The spec a quantizer called ``name`` ends up with (disabled specs have ``enable=False``).

        ``roles`` are the trace's roles of the quantizer (e.g. ``"output_head"``), matched by ``"@role"`` keys.
        """
        roles = frozenset(roles)
        spec: QuantizerSpec | tuple = _default_spec_for(name)
        for pattern, entry in self.entries:
            if not matches(pattern, name, roles):
                continue
            if isinstance(entry, bool):
                spec = (tuple(s.replace(enable=entry) for s in spec) if isinstance(spec, tuple)
                        else spec.replace(enable=entry))
            else:
                spec = entry
        return spec

    def matches(self, pattern: str, names: Iterable[str]) -> list[str]:
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)]

    def unused_patterns(self, names: Iterable[str]) -> list[str]:
        """Patterns that match none of ``names`` (ModelOpt's standard exclusions and ``*`` not counted)."""
        names = list(names)
        return [p for p, _ in self.entries if p != "*" and p not in DEFAULT_EXCLUSION_PATTERNS
                and not p.startswith("@") and not self.matches(p, names)]

    def with_entries(self, *entries: tuple[str, Any]) -> QuantConfig:
        """A new config with extra entries appended (they win over the existing ones)."""
        return dataclasses.replace(self, entries=self.entries + _parse_quant_cfg(dict(entries)))

    def to_dict(self) -> dict:
        """ModelOpt-form dict (``"*"`` entries come back as ``"*"``, not ``"default"``).

        ``quant_cfg`` is a ``{pattern: entry}`` dict, or ModelOpt's list form
        (``[{"quantizer_name": pattern, "cfg": ...} | {"quantizer_name": pattern, "enable": bool}, ...]``) when a
        pattern occurs more than once, since a dict would keep only its last entry.
        """
        def entry_dict(e):
            if isinstance(e, bool):
                return {"enable": e}
            return [s.to_dict() for s in e] if isinstance(e, tuple) else e.to_dict()

        patterns = [p for p, _ in self.entries]
        if len(set(patterns)) == len(patterns):
            out = {p: entry_dict(e) for p, e in self.entries}
        else:
            out = [{"quantizer_name": p, "enable": e} if isinstance(e, bool) else
                   {"quantizer_name": p, "cfg": entry_dict(e)} for p, e in self.entries]
        alg = self.algorithm
        algorithm = alg.method if not alg.options else {"method": alg.method, **alg.kwargs}
        return {"quant_cfg": out, "algorithm": algorithm}


def _parse_entry(pattern: str, value) -> Entry:
    where = f"quant_cfg[{pattern!r}]: "
    if isinstance(value, QuantizerSpec):
        return value
    if isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)) and not (len(value) == 2 and all(isinstance(v, int) for v in value)):
        specs = tuple(v if isinstance(v, QuantizerSpec) else QuantizerSpec.from_dict(v, where=where) for v in value)
        if not specs:
            raise ValueError(f"{where}an empty list is not a quantizer")
        return specs
    if isinstance(value, Mapping):
        if set(value) == {"enable"}:
            if not isinstance(value["enable"], bool):
                raise ValueError(f"{where}enable must be a bool, got {value['enable']!r}")
            return value["enable"]
        return QuantizerSpec.from_dict(value, where=where)
    raise ValueError(f"{where}expected a dict of quantizer fields, a list of them, or a QuantizerSpec; got {value!r}")


def _parse_quant_cfg(quant_cfg) -> tuple[tuple[str, Entry], ...]:
    if isinstance(quant_cfg, Sequence) and not isinstance(quant_cfg, str):
        items = []  # list form: [{"quantizer_name": pattern, "enable": ..., "cfg": {...}}, ...] or (pattern, cfg)
        for item in quant_cfg:
            if isinstance(item, Mapping):
                unknown = set(item) - {"quantizer_name", "cfg", "enable"}
                if "quantizer_name" not in item or unknown:
                    raise ValueError(f"list-form quant_cfg entries have 'quantizer_name', 'cfg' and/or 'enable'; "
                                     f"got {dict(item)!r}")
                cfg = item.get("cfg")
                if cfg is None:
                    entry = {"enable": item.get("enable", True)}
                elif isinstance(cfg, Mapping):
                    entry = dict(cfg) | ({"enable": item["enable"]} if "enable" in item else {})
                else:
                    entry = cfg
                items.append((item["quantizer_name"], entry))
            else:
                pattern, entry = item
                items.append((pattern, entry))
    elif isinstance(quant_cfg, Mapping):
        items = list(quant_cfg.items())
    else:
        raise ValueError(f"quant_cfg must be a dict or a list of entries, got {type(quant_cfg).__name__}")
    entries: list[tuple[str, Entry]] = []
    default = None
    for pattern, value in items:
        if not isinstance(pattern, str):
            raise ValueError(f"quant_cfg keys must be glob strings, got {pattern!r} (filter functions are not supported)")
        if pattern == "default":
            default = ("*", _parse_entry(pattern, value))
            continue
        check_role(pattern)
        if pattern.startswith("nn."):
            # ModelOpt's module-class entries (e.g. "nn.BatchNorm2d": {"*": {"enable": False}}). jq's sites are
            # matmuls and convolutions, which never sit inside these parents, so the entry has nothing to do.
            if not isinstance(value, Mapping) or not all(isinstance(v, (Mapping, bool)) for v in value.values()):
                raise ValueError(f"quant_cfg[{pattern!r}]: module-class entries map patterns to quantizer dicts")
            continue
        entries.append((pattern, _parse_entry(pattern, value)))
    if default is not None:
        entries.insert(0, default)  # ModelOpt applies "default" first
    return tuple(entries)


def as_config(cfg) -> QuantConfig:
    """Accept a :class:`QuantConfig`, a ModelOpt dict, or a legacy flat dict; always return a QuantConfig."""
    if isinstance(cfg, QuantConfig):
        return cfg
    if isinstance(cfg, Mapping):
        return QuantConfig.from_dict(cfg)
    raise ValueError(f"expected a QuantConfig or a ModelOpt-style dict, got {type(cfg).__name__}")
