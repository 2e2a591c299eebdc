"""Jaxpr tracing: quantizable sites, weights traced back to params, and dependency analysis.

* :func:`trace` finds the sites of an ``apply_fn`` (:class:`TracedModel`).
* :func:`dependency_analysis` finds coupled param dimensions; :func:`sibling_groups` the layers that read
  the same input.
* :func:`analyze` prints a readable report of all of it.
"""

from jq.trace.report import Analysis, analyze
from jq.trace.sites import Site, SkippedSite, name_from_keypath
from jq.trace.symbols import CoupledDims, DimRef, dependency_analysis, sibling_groups, sibling_partition
from jq.trace.tracer import QuantizerSlot, TracedModel, trace, weight_view
