"""Jaxpr tracing: quantizable sites, weights traced back to params, and dependency analysis."""

from jq.trace.sites import Site, SkippedSite, name_from_keypath
from jq.trace.tracer import QuantizerSlot, TracedModel, trace, weight_view
