"""The handler protocol: what the evaluator does at a quantizable site and at a quantizer.

The evaluator (:mod:`jq.transform`) walks a traced jaxpr and, at every site, calls ``handler.site(call)``
with a :class:`SiteCall`; the default (:meth:`SiteCall.default`) is the quantized site::

    x, W = pre_quant_scale(x, W)                       # SmoothQuant / AWQ, when the state holds one
    y    = op(handler.quantizer(input q, x), handler.quantizer(weight q, W))
    y    = handler.quantizer(output q, y)
    y    = y + op(x, L @ R)                            # SVDQuant's low-rank branch, when the state holds one

so a handler that only changes what a quantizer does overrides :meth:`Handler.quantizer`, and one that
replaces a whole site (a real-quantized kernel) or observes its operands (calibration statistics) overrides
:meth:`Handler.site`. Handlers that record statistics set ``collects = True``; the evaluator then carries a
:class:`~jq.calib.stats.Stats` dict through scan / while / cond / shard_map and returns it.

Handlers in jq: :class:`jq.handlers.apply.FakeQuant` (the quantized model), :class:`jq.calib.collect.Collect`
(calibration statistics), the AWQ search (:mod:`jq.calib.awq`), ONNX naming (:mod:`jq.export.onnx`) and
real-quantized kernels (:mod:`jq.deploy`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jq.calib.stats import Statistic, merge_stats
from jq.trace import geometry
from jq.trace.primitives import bind_eqn

__all__ = ["Handler", "SiteCall", "QuantizerCall", "Scope", "bind"]


def bind(eqn, invals) -> list:
    """Bind an equation's primitive on new operands; always a list of results."""
    ans = bind_eqn(eqn, invals)
    return list(ans) if eqn.primitive.multiple_results else [ans]


@dataclasses.dataclass
class Scope:
    """What the evaluation of one (inner) jaxpr sees: the quantizer state (sliced per layer inside a layer
    scan) and the statistics being collected (None when the handler collects nothing)."""

    qstate: dict
    stats: dict | None = None

    def record(self, key: tuple, stat: Statistic) -> None:
        """Merge ``stat`` into the statistics under ``key = (name, kind)``."""
        if self.stats is not None:
            self.stats.update(merge_stats(self.stats, {key: stat}))


@dataclasses.dataclass
class QuantizerCall:
    """One quantizer about to act on a tensor.

    Attributes:
      name: the quantizer name (``"Dense_0.weight_quantizer"``).
      spec: its resolved spec (a QuantizerSpec, or a tuple for a sequential quantizer); never None here.
      site: the site it belongs to.
      operand: the operand index it quantizes (None for the output quantizer).
      is_weight: whether it quantizes the site's weight.
      state: its quantizer state (``{"amax": ...}``), sliced per layer inside a layer scan.
      scope: the current :class:`Scope`.
    """

    name: str
    spec: Any
    site: Any
    operand: int | None
    is_weight: bool
    state: dict
    scope: Scope

    @property
    def view(self):
        """The canonical view of a weight operand (None for activations)."""
        return self.site.view if self.is_weight else None

    @property
    def batch(self) -> int:
        return self.site.view.batch if self.is_weight else 0

    @property
    def stages(self) -> tuple:
        return self.spec if isinstance(self.spec, tuple) else (self.spec,)


@dataclasses.dataclass
class SiteCall:
    """One site about to be evaluated: its equation, operands and the evaluator's context."""

    eqn: Any
    site: Any
    invals: list
    scope: Scope
    evaluator: Any

    @property
    def handler(self):
        return self.evaluator.handler

    @property
    def qstate(self) -> dict:
        return self.scope.qstate

    def spec(self, slot: str):
        """The resolved spec of this site's quantizer ``slot`` (None when off or absent)."""
        return self.evaluator.specs.get(f"{self.site.name}.{slot}")

    def pre_scaled(self, vals=None) -> list:
        """The operands with the site's ``pre_quant_scale`` applied: ``(x * s) @ (W / s)`` (unchanged when
        the input quantizer state holds none, and for attention sites)."""
        vals = list(self.invals if vals is None else vals)
        site = self.site
        if site.kind == "bmm":
            return vals
        pqs = self.qstate.get(f"{site.name}.input_quantizer", {}).get("pre_quant_scale")
        if pqs is None:
            return vals
        act, w = 1 - site.weight_operand, site.weight_operand
        vals[act] = (vals[act] * geometry.broadcast_to_activation(site, pqs, vals[act].shape)).astype(vals[act].dtype)
        vals[w] = geometry.scale_weight(site, vals[w], 1.0 / pqs)
        return vals

    def low_rank(self, vals) -> Any:
        """SVDQuant's high-precision branch ``op(x, L @ R)`` on the (pre-scaled) operands, or None when the weight
        quantizer state holds no ``svdquant_lora_a`` (R, ``[*batch, r, in]``) / ``svdquant_lora_b`` (L,
        ``[*batch, out, r]``); ``L @ R`` is a weight in the canonical view, mapped to the operand's layout."""
        st = {} if self.site.kind == "bmm" else self.qstate.get(f"{self.site.name}.weight_quantizer", {})
        if "svdquant_lora_a" not in st:
            return None
        view, w, vals = self.site.view, self.site.weight_operand, list(vals)
        lr = jnp.matmul(st["svdquant_lora_b"], st["svdquant_lora_a"], precision=jax.lax.Precision.HIGHEST)
        vals[w] = view.from_canonical(lr.reshape(view.shape), vals[w].shape).astype(vals[w].dtype)
        return bind(self.eqn, vals)[0]

    def quantizer(self, slot: str, operand: int | None) -> QuantizerCall | None:
        """The :class:`QuantizerCall` of ``slot`` on ``operand`` (None when the quantizer is off)."""
        name = f"{self.site.name}.{slot}"
        spec = self.evaluator.specs.get(name)
        if spec is None:
            return None
        is_weight = operand is not None and operand == self.site.weight_operand
        return QuantizerCall(name, spec, self.site, operand, is_weight, self.qstate.get(name, {}), self.scope)

    def quantize(self, slot: str, operand: int | None, x):
        """``x`` through the handler's quantizer rule for ``slot`` (unchanged when the quantizer is off)."""
        q = self.quantizer(slot, operand)
        return x if q is None else self.handler.quantizer(q, x)

    def default(self, vals=None) -> list:
        """The quantized site: pre-scale, quantize each operand, bind, quantize the output, add the low-rank
        branch (SVDQuant; after the output quantizer, as ModelOpt adds it)."""
        vals = self.pre_scaled(vals)
        low_rank = self.low_rank(vals)
        for op, slot in self.site.roles.items():
            vals[op] = self.quantize(slot, op, vals[op])
        outs = bind(self.eqn, vals)
        if self.site.kind != "bmm":
            outs[0] = self.quantize("output_quantizer", None, outs[0])
        if low_rank is not None:
            outs[0] = outs[0] + low_rank.astype(outs[0].dtype)
        return outs


class Handler:
    """What happens at sites and quantizers; the defaults evaluate the model unquantized.

    Attributes:
      collects: True when the handler records statistics (:meth:`Scope.record`).
    """

    collects: bool = False

    def site(self, call: SiteCall) -> list:
        """The results of a site (default: :meth:`SiteCall.default`)."""
        return call.default()

    def quantizer(self, q: QuantizerCall, x):
        """What quantizer ``q`` does to ``x`` (default: nothing)."""
        return x
