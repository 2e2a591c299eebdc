"""``jq.trace.analyze``: a readable report of what jq sees in a model."""

from __future__ import annotations

import dataclasses
import sys

from jq.trace.symbols import CoupledDims, dependency_analysis, sibling_groups
from jq.trace.tracer import TracedModel, trace

__all__ = ["Analysis", "analyze"]


@dataclasses.dataclass
class Analysis:
    """What :func:`analyze` found: the trace, coupled dimensions and sibling groups."""

    traced: TracedModel
    coupled: CoupledDims
    siblings: list

    def report(self) -> str:
        t = self.traced
        lines = [f"jq trace: {len(t.sites)} quantizable sites, {len(t.quantizers)} quantizers, "
                 f"{len(t.skipped)} skipped, {len(t.layer_scans)} layer scan(s)", "", "sites:"]
        w = max([len(s.name) for s in t.sites] + [4])
        for s in t.sites:
            if s.kind == "bmm":
                detail = f"attention {s.attention_role}  operands {s.shapes[0]} x {s.shapes[1]}"
            else:
                detail = f"weight view [out, in] {s.view.shape}  input {s.shapes[1 - s.weight_operand]}"
            layers = f"  layers {s.layer_axes}" if s.layer_axes else ""
            lines.append(f"  {s.name:<{w}}  {s.kind:<6} {s.primitive:<20} {detail}{layers}")
        if t.skipped:
            lines += ["", "not quantized:"]
            lines += [f"  {k.primitive} at '{k.name_stack}' {k.shapes}: {k.reason}" for k in t.skipped]
        if self.siblings:
            lines += ["", "siblings (read the same input; share input scales):"]
            lines += [f"  {', '.join(g)}" for g in self.siblings]
        if self.coupled.groups:
            lines += ["", "coupled param dimensions (must change together):"]
            lines += [f"  {{{', '.join(str(r) for r in sorted(g))}}}" for g in self.coupled.groups]
        if self.coupled.concats:
            lines += ["", "concatenations (output width = sum of input widths):"]
            for out, ins in self.coupled.concats:
                lines.append(f"  {sorted(map(str, out))} <- {[sorted(map(str, i)) for i in ins]}")
        return "\n".join(lines)


def analyze(apply_fn, params, *args, file=None, print_report: bool = True, **kwargs) -> Analysis:
    """Trace ``apply_fn(params, *args, **kwargs)`` and print what jq finds: sites, coupled dims, siblings.

    Example:
      >>> import flax.linen as nn
      >>> m = nn.Dense(4); p = m.init(jax.random.key(0), jnp.ones((1, 8)))
      >>> a = analyze(m.apply, p, jnp.ones((2, 8)), print_report=False)
      >>> len(a.traced.sites)
      1
    """
    traced = trace(apply_fn, params, *args, **kwargs)
    result = Analysis(traced, dependency_analysis(traced), sibling_groups(traced))
    if print_report:
        print(result.report(), file=file or sys.stdout)
    return result
