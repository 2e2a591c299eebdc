"""What jq knows about JAX primitives: which ones are quantizable sites, which only move data around,
and how the operands of higher-order primitives (jit, scan, cond, ...) map onto their inner jaxprs.

Names are matched as strings so the same code works on jax 0.10 and 0.11 (``pjit`` became ``jit``,
``remat`` is ``remat2`` or ``checkpoint``, ``custom_vjp_call_jaxpr`` became ``custom_vjp_call``).
"""

from __future__ import annotations

from jax.extend import core as jcore

__all__ = [
    "SITE_PRIMITIVES",
    "LAYOUT_PRIMITIVES",
    "CALL_PRIMITIVES",
    "jaxpr_of",
    "call_jaxpr_param",
    "is_call",
    "bind_eqn",
]

# Equations whose operands get quantizers.
SITE_PRIMITIVES = frozenset({"dot_general", "conv_general_dilated", "ragged_dot", "ragged_dot_general"})

# Equations that only change layout, dtype or sharding of a weight: a weight stays a weight through them.
LAYOUT_PRIMITIVES = frozenset(
    {
        "convert_element_type",
        "reshape",
        "transpose",
        "broadcast_in_dim",
        "squeeze",
        "expand_dims",
        "copy",
        "copy_p",
        "slice",
        "rev",
        "sharding_constraint",
        "mesh_cast",
        "reshard",
        "pvary",
        "device_put",
        "optimization_barrier",
        "reduce_precision",
    }
)

# Call-like primitives whose single inner jaxpr takes the operands one-to-one; value: the param name(s).
CALL_PRIMITIVES = {
    "pjit": ("jaxpr",),
    "jit": ("jaxpr",),
    "closed_call": ("call_jaxpr",),
    "core_call": ("call_jaxpr",),
    "remat": ("jaxpr",),
    "remat2": ("jaxpr",),
    "checkpoint": ("jaxpr",),
    "custom_jvp_call": ("call_jaxpr",),
    "custom_vjp_call": ("call_jaxpr", "fun_jaxpr"),
    "custom_vjp_call_jaxpr": ("fun_jaxpr", "call_jaxpr"),
    "shard_map": ("jaxpr",),
    "custom_lin": (),
}


def jaxpr_of(j) -> tuple[jcore.Jaxpr, list]:
    """``(jaxpr, consts)`` of a ClosedJaxpr or an open Jaxpr."""
    if hasattr(j, "jaxpr") and hasattr(j, "consts"):
        return j.jaxpr, list(j.consts)
    return j, []


def call_jaxpr_param(eqn) -> str | None:
    """Name of the param holding the inner jaxpr of a call-like equation, or None."""
    for key in CALL_PRIMITIVES.get(eqn.primitive.name, ()):
        if key in eqn.params:
            return key
    return None


def is_call(eqn) -> bool:
    return call_jaxpr_param(eqn) is not None


def bind_eqn(eqn, invals):
    """Bind an equation's primitive on new operands, as ``jax.core.eval_jaxpr`` does.

    ``get_bind_params`` returns the params (jax >= 0.10) or ``(subfuns, params)`` (older versions).
    """
    bp = eqn.primitive.get_bind_params(eqn.params)
    subfuns, params = bp if isinstance(bp, tuple) else ((), bp)
    with eqn.ctx.manager if hasattr(eqn, "ctx") and hasattr(eqn.ctx, "manager") else _null():
        return eqn.primitive.bind(*subfuns, *invals, **params)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False
