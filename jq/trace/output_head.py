"""Which sites are the model's output head: the classifier / LM-head layer whose result *is* the output.

A site is an **output head** when

1. it has a weight (a ``linear`` or ``conv`` site, not an attention ``bmm``);
2. some output of the traced function depends on activations only through this site's result: between the
   site and the output there are only operations whose other operands are params or constants (bias add,
   reshape, cast, softmax, a final norm), never another activation (a residual add, a second branch);
3. its activation operand comes from another site (the head sits on top of a body; the only layer of a
   one-layer function is not a head).

Only the top level and call-like bodies (``jit``, ``remat``, ``custom_jvp``/``custom_vjp``, ``shard_map``)
are followed; a value leaving a ``scan``, ``while`` or ``cond`` counts as mixed, so a layer inside a loop is
never an output head. The analysis propagates, for each variable, the set of its *nearest sources*: the
sites whose result reaches it without crossing another site, and the model inputs.

Example:
  >>> model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(4)])
  >>> p = model.init(jax.random.key(0), jnp.ones((1, 8)))
  >>> output_heads(trace(model.apply, p, jnp.ones((2, 8))))
  ('layers_2',)
"""

from __future__ import annotations

from jq.trace.control_flow import JaxprVisitor, bodies

__all__ = ["output_heads", "OUTPUT_HEAD_ROLE"]

OUTPUT_HEAD_ROLE = "output_head"  # the role name config entries refer to as "@output_head"

_INPUT = "input"  # source tag: a model input
_MIXED = "mixed"  # source tag: a value computed by a loop or a branch


class _Sources(JaxprVisitor):
    """Values are frozensets of nearest sources: site paths, ``_INPUT`` or ``_MIXED``."""

    def __init__(self, site_paths):
        self.site_paths = site_paths
        self.site_inputs: dict = {}  # site path -> sources of its operands

    def literal(self, lit):
        return frozenset()

    def unbound(self, var):
        return frozenset()

    def visit_plain(self, eqn, ins, path):
        return [frozenset().union(*ins)] * len(eqn.outvars)

    def visit_site(self, eqn, ins, path):
        if path not in self.site_paths:  # a skipped matmul (constant operand ...): data flows through it
            return self.visit_plain(eqn, ins, path)
        self.site_inputs[path] = frozenset().union(*ins)
        return [frozenset({path})] * len(eqn.outvars)

    def visit_call(self, eqn, ins, path):
        (body,) = bodies(eqn)
        inner = self.visit_body(body, [ins[i] for i in body.operands], path)
        outs = [frozenset().union(*ins)] * len(eqn.outvars)
        for val, r in zip(inner, body.results):
            if r is not None:
                outs[r] = val
        return outs

    def _opaque(self, eqn, ins, path):
        everything = frozenset({_MIXED}).union(*ins)
        for body in bodies(eqn):  # sites inside a loop still feed what comes after it
            for val in self.visit_body(body, [everything] * len(body.operands), path):
                everything = everything | val
        return [everything] * len(eqn.outvars)

    visit_scan = visit_while = visit_cond = _opaque


def output_heads(traced) -> tuple[str, ...]:
    """Names of the sites of ``traced`` (a :class:`~jq.trace.tracer.TracedModel`) that are output heads."""
    by_path = {s.path: s for s in traced.sites if s.weight_operand is not None}
    walker = _Sources(frozenset(s.path for s in traced.sites))
    n_p = traced.n_param_leaves
    jaxpr = traced.closed_jaxpr.jaxpr
    args = [frozenset()] * n_p + [frozenset({_INPUT})] * (len(jaxpr.invars) - n_p)
    outs = walker.visit_jaxpr(jaxpr, traced.closed_jaxpr.consts, args, (), [frozenset()] * len(jaxpr.constvars))
    heads = []
    for sources in outs:
        if len(sources) != 1:
            continue
        (path,) = sources
        site = by_path.get(path) if isinstance(path, tuple) else None
        if site is None or site.name in heads:
            continue
        if any(isinstance(src, tuple) for src in walker.site_inputs.get(path, ())):
            heads.append(site.name)
    return tuple(heads)
