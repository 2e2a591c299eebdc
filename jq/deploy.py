"""Real-quantized inference: turn a calibrated :class:`~jq.QuantizedModel` into a function that runs on stored
quantized weights.

:func:`realize` quantizes every eligible linear site's weight once and serves the site through a handler
(:class:`RealQuant`) that calls the real-quantized linear layer the weight's format offers
(:meth:`jq.formats.Format.linear_kernel`, :mod:`jq.formats.linear`):

=========================  =====================================================================================
site config                real-quantized implementation
=========================  =====================================================================================
FP8 weight + FP8 input     E4M3 weight ``[N, K]`` (K-major) and the activation quantized per tensor with its
(per tensor, static)       calibrated amax (fused kernel on GPU); one fp8 ``dot_general`` that XLA runs as
                           cuBLASLt's fp8 GEMM
NVFP4 weight (1D blocks),  weights packed for the W4A16 decode GEMM; the Mosaic GPU kernel for up to 64 tokens per
input off or NVFP4         call (prefill loops over 64-token chunks); an NVFP4 input quantizer runs as fused
                           fake-quant on the activation first (Hopper has no FP4 MMA)
INT4 weight, blocks of     the same decode GEMM, INT4 variant
128, input off
anything else              the fake-quant evaluation of ``qm.apply`` (unchanged)
=========================  =====================================================================================

On a CPU (or with ``backend="xla"``) the W4A16 sites use the reference path ``x @ dequantize(W).T``, so the
realized model runs everywhere; on a GPU the kernels run. Outputs match ``qm.apply`` to GEMM accumulation order
(see ``tests/test_deploy.py``: relative error below 1e-2 in bf16, below 1e-5 in f32 on CPU).

Example::

    qm = jq.quantize(params, model.apply, jq.FP8_DEFAULT_CFG, calib_data=batches)
    rm = jq.deploy.realize(qm)
    y = jax.jit(rm.apply)(rm.weights, rm.params, x)      # or simply rm(x)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax

from jq import backends
from jq.calib.weights import weight_operand
from jq.handlers.apply import FakeQuant
from jq.trace import geometry
from jq.trace.sites import ParamOrigin

__all__ = ["RealQuant", "RealizedModel", "realize", "site_kernels", "site_plan"]


def _single(qm, name):
    """The one enabled stage of a quantizer (None when off; sequential quantizers are not served)."""
    s = qm.spec(name)
    if isinstance(s, tuple):
        return None if len(s) != 1 else s[0]
    return s


def _linear_layout(site) -> bool:
    """True for ``x[..., K...] . W[K..., N...]`` or ``x[..., K...] . W[N..., K...]`` (PyTorch/HF ``[out, in]``)
    sites: activation lhs, weight rhs, no batch dims."""
    if site.primitive != "dot_general" or site.kind != "linear" or site.weight_operand != 1:
        return False
    if not isinstance(site.weight, ParamOrigin) or site.layer_axes or site.view is None or site.view.batch:
        return False
    (lc, rc), (lb, rb) = site.params["dimension_numbers"]
    if lb or rb:
        return False
    xs, ws = site.shapes[0], site.shapes[1]
    nk = len(lc)
    w_contract = tuple(rc) in (tuple(range(nk)), tuple(range(len(ws) - nk, len(ws))))
    return tuple(lc) == tuple(range(len(xs) - nk, len(xs))) and w_contract and len(ws) > nk


def site_kernels(qm, traced=None) -> dict:
    """``{site name: linear kernel}`` for the linear sites a real-quantized kernel can serve.

    A site is served when its weight is one params leaf used as ``x @ W``, its output quantizer is off, it has no
    SVDQuant factors, and the weight's format offers a kernel for its weight and input specs. A
    ``pre_quant_scale`` (SmoothQuant / AWQ) is served as ``(x * s) @ quantize(W / s)``: the stored weight is
    ``W / s`` quantized, the activation is scaled before the kernel.
    """
    traced = traced or qm.traced
    out = {}
    for site in traced.sites:
        if site.kind == "bmm" or not _linear_layout(site):
            continue
        w = _single(qm, f"{site.name}.weight_quantizer")
        x = _single(qm, f"{site.name}.input_quantizer")
        if w is None or _single(qm, f"{site.name}.output_quantizer") is not None:
            continue
        if "svdquant_lora_a" in qm.qstate.get(f"{site.name}.weight_quantizer", {}):
            continue  # SVDQuant's low-rank branch is computed by the fake-quant site
        kernel = w.format.linear_kernel(w, x)
        if kernel is not None:
            out[site.name] = kernel
    return out


def site_plan(qm, traced=None) -> dict:
    """``{site name: kernel name}`` for every linear site (``"fake"`` where no kernel serves it)."""
    traced = traced or qm.traced
    kernels = site_kernels(qm, traced)
    return {s.name: kernels[s.name].name if s.name in kernels else "fake" for s in traced.sites if s.kind != "bmm"}


@dataclasses.dataclass(frozen=True)
class RealQuant(FakeQuant):
    """Serves the sites in ``kernels`` with their real-quantized linear layer on stored ``weights``; every other
    site (and every other quantizer) is fake-quantized as in :class:`~jq.handlers.FakeQuant`."""

    kernels: Mapping = dataclasses.field(default_factory=dict)
    weights: Mapping = dataclasses.field(default_factory=dict)
    platform: str = "cpu"

    def site(self, call):
        name = call.site.name
        kernel = self.kernels.get(name)
        if kernel is None or name not in self.weights:
            return call.default()
        x = call.invals[0]
        pqs = call.qstate.get(f"{name}.input_quantizer", {}).get("pre_quant_scale")
        if pqs is not None:  # SmoothQuant / AWQ: (x * s) @ (W / s), W / s is the stored weight
            x = (x * geometry.broadcast_to_activation(call.site, pqs, x.shape)).astype(x.dtype)
        if not kernel.quantizes_input:  # e.g. NVFP4 activations: fake quant before the W4A16 GEMM
            x = call.quantize("input_quantizer", 0, x)
        nk = len(call.site.params["dimension_numbers"][0][0])
        lead = x.shape[: x.ndim - nk]
        x2 = x.reshape(-1, math.prod(x.shape[x.ndim - nk:]))
        amax = call.qstate.get(f"{name}.input_quantizer", {}).get("amax")
        y = kernel.apply(x2, self.weights[name], input_amax=amax, platform=self.platform)
        out = call.eqn.outvars[0].aval
        return [y.reshape(tuple(lead) + tuple(out.shape[len(lead):])).astype(out.dtype)]


@dataclasses.dataclass
class RealizedModel:
    """A real-quantized model: ``apply(weights, params, *args, **kwargs)`` is pure and jit-able.

    Attributes:
      qm: the calibrated QuantizedModel it was made from (its params serve the non-quantized layers).
      weights: ``{site name: stored quantized weight}`` (FP8 ``(w_q, 1/s_w)``, the decode-GEMM layout, or a
        QTensor on the reference path).
      plan: ``{site name: kernel name or "fake"}``.
      backend: ``"gpu"`` (kernels) or ``"xla"`` (reference W4A16 path).
    """

    qm: object
    weights: dict
    plan: dict
    backend: str
    kernels: dict = dataclasses.field(default_factory=dict)

    @property
    def params(self):
        return self.qm.params

    @property
    def nbytes(self) -> int:
        """Bytes of the stored quantized weights."""
        leaves = jax.tree_util.tree_leaves(self.weights)
        return int(sum(int(a.size) * a.dtype.itemsize for a in leaves))

    def __call__(self, *args, **kwargs):
        return self.apply(self.weights, self.qm.params, *args, **kwargs)

    def apply(self, weights, params, *args, **kwargs):
        platform = "gpu" if self.backend == "gpu" else "cpu"
        return self.qm.evaluate(RealQuant(self.kernels, weights, platform), params, *args, **kwargs)


def realize(qm, *, backend: str | None = None, sites: Mapping | None = None) -> RealizedModel:
    """Quantize ``qm``'s eligible weights once and return a :class:`RealizedModel` serving them for real.

    Args:
      qm: a calibrated QuantizedModel (weights quantized with their calibrated amax; activations with theirs).
      backend: ``"gpu"`` (Mosaic W4A16 kernel and FP8 kernels; default on a GPU) or ``"xla"`` (reference
        W4A16 path through XLA; default elsewhere). FP8 sites use XLA's fp8 ``dot_general`` on both.
        ``JQ_KERNELS=reference`` keeps the XLA path on a GPU.
      sites: optional ``{site name: "fake"}`` overrides keeping sites on fake quant (or naming the kernel the
        plan already chose).
    """
    backend = backend or ("gpu" if backends.platform() == "gpu" else "xla")
    if backend not in ("gpu", "xla"):
        raise ValueError(f"backend must be 'gpu' or 'xla', got {backend!r}")
    platform = "gpu" if backend == "gpu" else "cpu"
    traced = qm.traced
    kernels = site_kernels(qm, traced)
    plan = site_plan(qm, traced)
    for k, v in (sites or {}).items():
        if k not in plan:
            raise ValueError(f"unknown site {k!r}; sites: {sorted(plan)}")
        if v not in ("fake", plan[k]):
            raise ValueError(f"site {k!r} can be served as {plan[k]!r} or 'fake', not {v!r}")
        plan[k] = v
        if v == "fake":
            kernels.pop(k, None)
    leaves = jax.tree_util.tree_leaves(qm.params)
    weights, stores = {}, {}
    for site in traced.sites:
        kernel = kernels.get(site.name)
        if kernel is None:
            continue
        w, _ = weight_operand(site.weight, leaves)
        pqs = qm.qstate.get(f"{site.name}.input_quantizer", {}).get("pre_quant_scale")
        if pqs is not None:
            w = geometry.scale_weight(site, w, 1.0 / pqs)
        nk = len(site.params["dimension_numbers"][0][0])
        k = math.prod(int(d) for d in site.shapes[0][len(site.shapes[0]) - nk:])
        wc = site.view.to_canonical(w).reshape(-1, k)  # [N, K]: out features first, contracting dims last
        wspec = _single(qm, f"{site.name}.weight_quantizer")
        amax = qm.qstate.get(f"{site.name}.weight_quantizer", {}).get("amax")
        # sites of one kernel and spec share one jitted store: a compile per weight shape, not per eager op
        key = (repr(kernel), repr(wspec))
        store = stores.get(key)
        if store is None:
            store = stores[key] = _jitted_store(kernel, wspec, platform)
        weights[site.name] = store(wc, amax)
    return RealizedModel(qm, weights, plan, backend, kernels)


def _jitted_store(kernel, wspec, platform: str):
    """``(w [N, K], amax) -> kernel.prepare(quantize(w))`` as one jitted program."""
    return jax.jit(lambda w, amax: kernel.prepare(backends.quantize(w, wspec, amax, platform), platform))
