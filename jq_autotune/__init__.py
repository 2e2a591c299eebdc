"""ONNX Q/DQ placement autotuner (jq's port of ModelOpt's autotuner; no JAX needed).

The autotuner partitions an ONNX graph into regions, groups them by structural
pattern, measures Q/DQ insertion schemes per pattern on a benchmark backend (ONNX
Runtime by default; TensorRT or trtexec when installed) and keeps, for each pattern,
the fastest scheme that beats no-Q/DQ by the performance threshold.

Example::

    >>> from jq_autotune import Config, autotune          # doctest: +SKIP
    >>> report = autotune("model.onnx", "out/", Config.for_mode("quick"))   # doctest: +SKIP
    >>> report.speedup                                  # doctest: +SKIP
    1.7
"""

from .autotuner import NodeFilterError, QDQAutotuner
from .cache import PatternCache
from .config import Config
from .insertion_points import (
    ChildRegionInputInsertionPoint,
    NodeInputInsertionPoint,
    RegionOutputInsertionPoint,
    ResolvedInsertionPoint,
)
from .pattern import canonicalize, pattern_signature
from .qdq import get_quantized_tensors, insert_qdq
from .region import Region, RegionType
from .region_search import CombinedRegionSearch, profiling_order
from .rules import PlacementRules, placement_rules
from .scheme import InsertionScheme, SchemeGenerator, SchemeResult
from .state import AutotuneState

__all__ = [
    "AutotuneState",
    "ChildRegionInputInsertionPoint",
    "CombinedRegionSearch",
    "Config",
    "InsertionScheme",
    "NodeFilterError",
    "NodeInputInsertionPoint",
    "PatternCache",
    "PlacementRules",
    "QDQAutotuner",
    "Region",
    "RegionOutputInsertionPoint",
    "RegionType",
    "ResolvedInsertionPoint",
    "SchemeGenerator",
    "SchemeResult",
    "autotune",
    "canonicalize",
    "get_quantized_tensors",
    "insert_qdq",
    "pattern_signature",
    "placement_rules",
    "profiling_order",
]


def __getattr__(name: str):
    # the workflow pulls in tqdm/benchmarks; load it only when asked for
    if name == "autotune":
        from .workflow import autotune

        return autotune
    raise AttributeError(name)
