"""One control-flow visitor for every jaxpr walk: the tracer, the dependency analysis and the evaluator.

JAX's higher-order primitives hold inner jaxprs whose inputs and outputs map onto the equation's operands and
results in primitive-specific ways. :func:`bodies` states that mapping once for each of them:

==============================  ==========================================================================
primitive                       bodies (path index: inner inputs <- outer operands; inner outputs -> results)
==============================  ==========================================================================
``scan``                        0: consts, carry, xs (sliced along axis 0) -> carry, ys (stacked on axis 0)
``while``                       0 (cond): cond consts, carry -> the predicate;
                                1 (body): body consts, carry -> carry
``cond``                        i (branch i): operands after the index -> results
``jit``/``pjit``, ``closed_call``,  0: operands one to one -> results one to one
``remat``, ``custom_jvp_call``,
``custom_vjp_call``, ``shard_map``
==============================  ==========================================================================

:class:`JaxprVisitor` walks a jaxpr with an environment of per-variable values (abstract origins for the
tracer, variables for the dependency analysis, arrays for the evaluator) and hands each equation to
``visit_<kind>`` with ``kind`` one of ``site``, ``scan``, ``while``, ``cond``, ``shard_map``, ``remat``,
``call`` or ``plain`` (:func:`eqn_kind`). Each equation has a *path*: the ``id`` of the equations and body
indices leading to it, stable for one traced jaxpr, which is how sites found by the tracer are found again by
the evaluator.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jax.extend import core as jcore

from jq.trace.primitives import SITE_PRIMITIVES, call_jaxpr_param, jaxpr_of

__all__ = ["Body", "bodies", "eqn_kind", "JaxprVisitor", "REMAT_PRIMITIVES"]

REMAT_PRIMITIVES = frozenset({"remat", "remat2", "checkpoint"})


@dataclasses.dataclass(frozen=True, eq=False)
class Body:
    """One inner jaxpr of a higher-order equation and how it connects to the equation.

    Attributes:
      jaxpr, consts: the inner jaxpr and its constants.
      index: its path index (``path + (index,)`` locates equations inside it).
      operands: for each inner input, the index of the outer operand it reads.
      sliced: inner inputs that see one slice (axis 0) of their operand per iteration (scan ``xs``).
      results: for each inner output, the index of the equation result it produces, or None (while's predicate).
      stacked: inner outputs stacked along a new axis 0 into their result (scan ``ys``).
    """

    jaxpr: Any
    consts: list
    index: int
    operands: tuple[int, ...]
    sliced: frozenset = frozenset()
    results: tuple[int | None, ...] = ()
    stacked: frozenset = frozenset()


def eqn_kind(eqn) -> str:
    """``site``, ``scan``, ``while``, ``cond``, ``shard_map``, ``remat``, ``call`` or ``plain``."""
    name = eqn.primitive.name
    if name in SITE_PRIMITIVES:
        return "site"
    if name in ("scan", "while", "cond"):
        return name
    if call_jaxpr_param(eqn) is not None:
        if name == "shard_map":
            return "shard_map"
        return "remat" if name in REMAT_PRIMITIVES else "call"
    return "plain"


def scan_counts(params) -> tuple[int, int]:
    """``(consts, carries)`` of a ``scan`` equation's operands (then come the scanned ``xs``).

    jax <= 0.10 names them in the params (``num_consts``, ``num_carry``); jax 0.11 packs the operand structure
    into a flat tree ``ft_in = (consts, carry, xs)`` instead.
    """
    if "num_consts" in params:
        return params["num_consts"], params["num_carry"]
    consts, carry, _ = params["ft_in"].unpack()
    return len(consts), len(carry)


def bodies(eqn) -> tuple[Body, ...]:
    """The inner jaxprs of a higher-order equation with their operand/result mapping (see the module table)."""
    name, p = eqn.primitive.name, eqn.params
    n_in, n_out = len(eqn.invars), len(eqn.outvars)
    if name == "scan":
        nc, ncar = scan_counts(p)
        inner, consts = jaxpr_of(p["jaxpr"])
        return (Body(inner, consts, 0, tuple(range(n_in)), frozenset(range(nc + ncar, n_in)),
                     tuple(range(n_out)), frozenset(range(ncar, n_out))),)
    if name == "while":
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        carry = tuple(range(cn + bn, n_in))
        cond, cc = jaxpr_of(p["cond_jaxpr"])
        body, bc = jaxpr_of(p["body_jaxpr"])
        return (Body(cond, cc, 0, tuple(range(cn)) + carry, results=(None,)),
                Body(body, bc, 1, tuple(range(cn, cn + bn)) + carry, results=tuple(range(n_out))))
    if name == "cond":
        out = []
        for i, branch in enumerate(p["branches"]):
            inner, consts = jaxpr_of(branch)
            out.append(Body(inner, consts, i, tuple(range(1, n_in)), results=tuple(range(n_out))))
        return tuple(out)
    key = call_jaxpr_param(eqn)
    if key is None:
        return ()
    inner, consts = jaxpr_of(p[key])
    n_inner = len(inner.outvars)
    return (Body(inner, consts, 0, tuple(range(n_in)),
                 results=tuple(k if k < n_out else None for k in range(n_inner))),)


class JaxprVisitor:
    """Walks a jaxpr with an environment of per-variable values; subclasses define the ``visit_<kind>`` rules.

    ``visit_<kind>(eqn, invals, path)`` returns the values of the equation's results. The default of every
    kind is :meth:`visit_plain`, which subclasses must define.
    """

    def literal(self, lit) -> Any:
        """The value of a literal operand."""
        return lit.val

    def unbound(self, var) -> Any:
        """The value of a variable nothing wrote (unused in well-formed jaxprs)."""
        raise KeyError(var)

    def visit_jaxpr(self, jaxpr, consts, args, path: tuple = (), const_values=None) -> list:
        """Visit ``jaxpr`` with ``args`` bound to its inputs; returns the values of its outputs."""
        env: dict = {}
        const_values = consts if const_values is None else const_values
        for v, c in zip(jaxpr.constvars, const_values):
            env[v] = c
        if len(args) != len(jaxpr.invars):
            raise ValueError(f"jaxpr takes {len(jaxpr.invars)} inputs, got {len(args)}")
        for v, a in zip(jaxpr.invars, args):
            env[v] = a

        def read(v):
            if isinstance(v, jcore.Literal):
                return self.literal(v)
            return env[v] if v in env else self.unbound(v)

        self.enter_jaxpr(jaxpr, consts, path)
        try:
            for eqn in jaxpr.eqns:
                p = path + (id(eqn),)
                invals = [read(v) for v in eqn.invars]
                outvals = getattr(self, f"visit_{eqn_kind(eqn)}")(eqn, invals, p)
                for v, val in zip(eqn.outvars, outvals):
                    if not isinstance(v, jcore.DropVar):
                        env[v] = val
            return [read(v) for v in jaxpr.outvars]
        finally:
            self.exit_jaxpr(jaxpr, path)

    def enter_jaxpr(self, jaxpr, consts, path) -> None:
        """Called before the equations of a (possibly inner) jaxpr are visited."""

    def exit_jaxpr(self, jaxpr, path) -> None:
        """Called after them."""

    def visit_plain(self, eqn, invals, path) -> list:
        raise NotImplementedError

    def visit_site(self, eqn, invals, path) -> list:
        return self.visit_plain(eqn, invals, path)

    def visit_scan(self, eqn, invals, path) -> list:
        return self.visit_plain(eqn, invals, path)

    def visit_while(self, eqn, invals, path) -> list:
        return self.visit_plain(eqn, invals, path)

    def visit_cond(self, eqn, invals, path) -> list:
        return self.visit_plain(eqn, invals, path)

    def visit_call(self, eqn, invals, path) -> list:
        return self.visit_plain(eqn, invals, path)

    def visit_remat(self, eqn, invals, path) -> list:
        return self.visit_call(eqn, invals, path)

    def visit_shard_map(self, eqn, invals, path) -> list:
        return self.visit_call(eqn, invals, path)

    def visit_body(self, body: Body, inner_args, path) -> list:
        """Visit one body of the equation at ``path`` with its inner inputs; returns its inner outputs."""
        return self.visit_jaxpr(body.jaxpr, body.consts, list(inner_args), path + (body.index,))
