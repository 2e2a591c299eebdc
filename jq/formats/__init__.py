"""Numeric formats as objects: one module per family, one :class:`Format` protocol.

:data:`FORMATS` lists every format jq knows, in resolution order; a spec's format is the first that claims it
(:func:`resolve`, cached as ``spec.format``). Outside the format modules nothing branches on a format name.
Adding a format is one module with a :class:`Format` subclass (see ``docs/architecture.md``, "How to add a
format") and one entry here.

Example:
  >>> from jq.config import QuantizerSpec
  >>> resolve(QuantizerSpec(num_bits=(4, 3))).name
  'fp8'
"""

from jq.formats.base import Format, KernelBinding, QDQForm, UnsupportedExport, block_layout, broadcastable_amax, spec_axes
from jq.formats.fp8 import FP8
from jq.formats.int import INT
from jq.formats.mx import MXFP4, MXFP8, MXINT8
from jq.formats.mxfp6 import MXFP6_E2M3, MXFP6_E3M2
from jq.formats.nvfp4 import NVFP4

__all__ = ["Format", "QDQForm", "KernelBinding", "UnsupportedExport", "FORMATS", "resolve", "by_name",
           "for_hf_algorithm", "supported", "block_layout", "broadcastable_amax", "spec_axes"]

FORMATS: tuple[Format, ...] = (NVFP4, MXFP8, MXFP4, MXINT8, MXFP6_E3M2, MXFP6_E2M3, FP8, INT)


def supported() -> str:
    """One line naming every format and how to spell it, for error messages."""
    return ("int (num_bits 1..8), fp8 (num_bits (4, 3) E4M3 or (5, 2) E5M2), nvfp4 ((2, 1) with "
            "block_sizes {-1: 16, 'type': 'dynamic', 'scale_bits': (4, 3)}), MX (blocks {-1: 32, 'type': 'dynamic', "
            "'scale_bits': (8, 0)} with num_bits (4, 3) MXFP8, (2, 1) MXFP4, 8 MXINT8, (3, 2) / (2, 3) MXFP6)")


def resolve(spec) -> Format:
    """The format serving ``spec``; ``ValueError`` listing the supported ones when none does."""
    for fmt in FORMATS:
        if fmt.claims(spec):
            return fmt
    raise ValueError(f"num_bits={spec.num_bits} with block_sizes="
                     f"{None if spec.block_sizes is None else spec.block_sizes.to_dict()} is not a format jq "
                     f"implements; supported: {supported()}")


def by_name(name: str) -> Format:
    """The format called ``name`` (``"int"``, ``"fp8"``, ``"nvfp4"``, ``"mxfp8"`` ...)."""
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise ValueError(f"unknown format {name!r}; known: {[f.name for f in FORMATS]}")


def for_hf_algorithm(algo: str) -> Format:
    """The format that writes (and reads) checkpoints with ModelOpt ``quant_algo`` ``algo``."""
    for fmt in FORMATS:
        if algo in fmt.hf_algorithms:
            return fmt
    raise ValueError(f"unknown quant_algo {algo!r}; jq reads {[a for f in FORMATS for a in f.hf_algorithms]}")
