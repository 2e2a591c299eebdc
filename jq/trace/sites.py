"""Data structures the tracer produces: where a weight comes from, and the quantizable sites."""

from __future__ import annotations

import dataclasses
from typing import Any

from jq.quantizer import CanonicalView
from jq.trace.primitives import bind_eqn

__all__ = ["ACT", "CONST", "ChainStep", "ScanSlice", "ParamOrigin", "Derived", "Site", "SkippedSite",
           "keypath_parts", "name_from_keypath"]


# Equations that only annotate sharding or placement: replaying them outside their context is the identity.
REPLAY_AS_IDENTITY = frozenset({"pvary", "mesh_cast", "reshard", "sharding_constraint", "device_put",
                                "optimization_barrier"})


class _Tag:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


ACT = _Tag("ACT")  # depends on the inputs (an activation)
CONST = _Tag("CONST")  # depends on nothing (literals, closed-over constants)


@dataclasses.dataclass(frozen=True, eq=False)
class ChainStep:
    """An equation applied to a weight on its way to a site, replayable on the param value.

    ``operand`` is the position of the weight among the equation's operands; ``others`` holds the
    concrete values of the other (constant) operands.
    """

    eqn: Any
    operand: int
    others: tuple

    def apply(self, value):
        if self.eqn.primitive.name in REPLAY_AS_IDENTITY:
            return value
        args = list(self.others)
        args.insert(self.operand, value)
        out = bind_eqn(self.eqn, args)
        return out[0] if self.eqn.primitive.multiple_results else out


@dataclasses.dataclass(frozen=True)
class ScanSlice:
    """The weight enters a scan as ``xs``: each iteration sees one slice along axis 0 (a layer)."""

    depth: int  # index among the enclosing layer scans (0 = outermost)


@dataclasses.dataclass(frozen=True, eq=False)
class ParamOrigin:
    """A value computed from one params leaf by a replayable chain of equations."""

    leaf: int
    chain: tuple = ()

    def extend(self, step) -> ParamOrigin:
        return ParamOrigin(self.leaf, self.chain + (step,))


@dataclasses.dataclass(frozen=True, eq=False)
class Derived:
    """A value computed from several params leaves (e.g. ``W + A @ B``); no inputs involved."""

    leaves: frozenset


@dataclasses.dataclass(eq=False)
class Site:
    """One quantizable equation and its quantizers.

    Attributes:
      name: stable site name (``Dense_0``, ``layers.fc``, ``Block_0.attn``).
      kind: ``linear`` (activation x weight), ``conv`` or ``bmm`` (two activations).
      primitive: ``dot_general``, ``conv_general_dilated`` or ``ragged_dot_general``.
      path: location of the equation through nested jaxprs (stable for one traced jaxpr).
      roles: ``{operand index: quantizer slot}``, e.g. ``{0: "input_quantizer", 1: "weight_quantizer"}``.
      weight_operand: index of the weight operand, or None.
      weight: its :class:`ParamOrigin` / :class:`Derived`, or None.
      view: canonical ``[out, in]`` view of the weight operand.
      shapes, dtypes: operand shapes and dtypes.
      name_stack: Flax/JAX name stack of the equation (with enclosing stacks).
      layer_axes: lengths of the enclosing layer scans (quantizer state gets these leading axes).
      params: the equation's params (dimension numbers etc.).
    """

    name: str
    kind: str
    primitive: str
    path: tuple
    roles: dict
    weight_operand: int | None
    weight: Any
    view: CanonicalView | None
    shapes: tuple
    dtypes: tuple
    name_stack: str
    layer_axes: tuple = ()
    params: dict = dataclasses.field(default_factory=dict)
    attention_role: str | None = None  # "qk" or "pv" for bmm sites
    scope: tuple = ()  # path of the jaxpr the equation lives in (sites reading one var share it)
    eqn: Any = dataclasses.field(default=None, repr=False)

    def quantizer(self, operand: int) -> str | None:
        slot = self.roles.get(operand)
        return None if slot is None else f"{self.name}.{slot}"

    @property
    def quantizer_names(self) -> list[str]:
        names = [f"{self.name}.{slot}" for slot in self.roles.values()]
        if self.kind != "bmm":
            names.append(f"{self.name}.output_quantizer")
        return names

    @property
    def weight_quantizer(self) -> str | None:
        return None if self.weight_operand is None else self.quantizer(self.weight_operand)


@dataclasses.dataclass
class SkippedSite:
    """A matmul or convolution jq does not quantize, and why (shown by ``jq.trace.analyze``)."""

    primitive: str
    name_stack: str
    reason: str
    shapes: tuple


def keypath_parts(path) -> list[str]:
    """Flatten a ``jax.tree_util`` key path into strings."""
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return parts


_LEAF_NAMES = {"kernel", "weight", "w", "embedding", "scale", "bias", "b", "value", "raw_value"}


def name_from_keypath(path) -> str:
    """Site name from a weight's key path: ``['params']['Block_0']['Dense_1']['kernel']`` → ``Block_0.Dense_1``.

    Drops the leading ``params`` collection of Flax linen, the trailing ``.value`` of Flax nnx variables,
    and the leaf's own name (``kernel``/``weight``/...) when a module path remains.
    """
    parts = keypath_parts(path)
    if len(parts) > 1 and parts[0] == "params":
        parts = parts[1:]
    while len(parts) > 1 and parts[-1] in ("value", "raw_value"):
        parts = parts[:-1]
    if len(parts) > 1:
        parts = parts[:-1]
    name = ".".join(parts) if parts else "param"
    return name if not name.isdigit() else f"param{name}"
