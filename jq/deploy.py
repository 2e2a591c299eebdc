"""Real-quantized inference: turn a calibrated :class:`~jq.QuantizedModel` into a function that runs on stored
quantized weights.

:func:`realize` quantizes every eligible linear site's weight once and serves the site through the transform's
``site_impls`` hook:

=========================  =====================================================================================
site config                real-quantized implementation
=========================  =====================================================================================
FP8 weight + FP8 input     E4M3 weight ``[N, K]`` (K-major) and the activation quantized per tensor with its
(per tensor, static)       calibrated amax (fused kernel on GPU); one fp8 ``dot_general`` that XLA runs as
                           cuBLASLt's fp8 GEMM (:func:`kernels.fp8_linear.fp8_linear`)
NVFP4 weight (1D blocks),  weights packed for the W4A16 decode GEMM (:func:`kernels.w4a16.pack_w4`); the Mosaic GPU
input off or NVFP4         kernel for up to 64 tokens per call (prefill loops over 64-token chunks); an NVFP4 input
                           quantizer runs as fused fake-quant on the activation first (Hopper has no FP4 MMA)
INT4 weight, blocks of     the same decode GEMM, INT4 variant
128, input off
anything else              the fake-quant evaluation of ``qm.apply`` (unchanged)
=========================  =====================================================================================

On a CPU (or with ``backend="xla"``) the W4A16 sites use the reference path ``x @ dequantize(W).T``, so the
realized model runs everywhere; on a GPU the kernels run. Outputs match ``qm.apply`` to GEMM accumulation order
(see ``tests/kernels/test_deploy.py``: relative error below 1e-2 in bf16, below 1e-5 in f32 on CPU).

Example::

    qm = jq.quantize(params, model.apply, jq.FP8_DEFAULT_CFG, calib_data=batches)
    rm = jq.deploy.realize(qm)
    y = jax.jit(rm.apply)(rm.weights, rm.params, x)      # or simply rm(x)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from jax import lax

from jq.calib.max import weight_operand
from jq.trace.sites import ParamOrigin

__all__ = ["RealizedModel", "realize", "site_plan"]


def _default_backend() -> str:
    return "gpu" if jax.default_backend() in ("gpu", "cuda", "rocm") else "xla"


def _spec(qm, name):
    s = qm.spec(name)
    if isinstance(s, tuple):
        return None if len(s) != 1 else s[0]
    return s


def _is_fp8_tensor(s):
    return s is not None and s.kind == "fp8" and s.fp8_name == "e4m3" and s.axis is None and s.block_sizes is None \
        and not s.rotate


def _is_nvfp4_1d(s):
    return s is not None and s.kind == "nvfp4" and len(s.block_sizes.sizes) == 1 and not s.rotate


def _is_int4_g128(s):
    if s is None or s.kind != "int" or s.num_bits != 4 or s.block_sizes is None or s.rotate:
        return False
    sizes = dict(s.block_sizes.sizes)
    return sizes == {-1: 128} and not s.unsigned


def _linear_layout(site):
    """True for ``x[..., K...] . W[K..., N...]`` sites (activation lhs, weight rhs, no batch dims)."""
    if site.primitive != "dot_general" or site.kind != "linear" or site.weight_operand != 1:
        return False
    if not isinstance(site.weight, ParamOrigin) or site.layer_axes or site.view is None or site.view.batch:
        return False
    (lc, rc), (lb, rb) = site.params["dimension_numbers"]
    if lb or rb:
        return False
    xs, ws = site.shapes[0], site.shapes[1]
    nk = len(lc)
    return tuple(lc) == tuple(range(len(xs) - nk, len(xs))) and tuple(rc) == tuple(range(nk)) and len(ws) > nk


def site_plan(qm, traced=None) -> dict:
    """``{site name: "fp8" | "nvfp4_w4a16" | "int4_w4a16" | "fake"}`` for the model's linear sites."""
    traced = traced or qm.traced
    plan = {}
    for site in traced.sites:
        if site.kind == "bmm":
            continue
        w = _spec(qm, f"{site.name}.weight_quantizer")
        x = _spec(qm, f"{site.name}.input_quantizer")
        out = _spec(qm, f"{site.name}.output_quantizer")
        kind = "fake"
        if _linear_layout(site) and out is None:
            if _is_fp8_tensor(w) and _is_fp8_tensor(x) and not x.is_dynamic:
                kind = "fp8"
            elif _is_nvfp4_1d(w) and (x is None or _is_nvfp4_1d(x)):
                kind = "nvfp4_w4a16"
            elif _is_int4_g128(w) and x is None:
                kind = "int4_w4a16"
        plan[site.name] = kind
    return plan


@dataclasses.dataclass
class RealizedModel:
    """A real-quantized model: ``apply(weights, params, *args, **kwargs)`` is pure and jit-able.

    Attributes:
      qm: the calibrated QuantizedModel it was made from (its params serve the non-quantized layers).
      weights: ``{site name: stored quantized weight}`` (FP8 ``(w_q, 1/s_w)``, :class:`kernels.w4a16.PackedW4`,
        or a QTensor on the reference path).
      plan: ``{site name: kind}`` (see :func:`site_plan`).
      backend: ``"gpu"`` (kernels) or ``"xla"`` (reference W4A16 path).
    """

    qm: object
    weights: dict
    plan: dict
    backend: str

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
        from jq.transform import Evaluator

        qm = self.qm
        traced, flat = qm.trace(*args, params=params, **kwargs)
        names = {s.name for s in traced.sites}
        impls = {name: _make_impl(kind, weights[name], self.backend, _spec(qm, f"{name}.input_quantizer"))
                 for name, kind in self.plan.items() if kind != "fake" and name in weights and name in names}
        outs = Evaluator(traced, qm.specs(traced), qm.qstate, "apply", site_impls=impls).run(flat)
        return jax.tree_util.tree_unflatten(traced.out_tree, outs)


def _make_impl(kind, stored, backend, xspec):
    from jq.qtensor import dequantize
    from kernels import w4a16
    from kernels.fp8_linear import fp8_linear

    def impl(eqn, site, invals, qstate):
        x = invals[0]
        out = eqn.outvars[0].aval
        nk = len(site.params["dimension_numbers"][0][0])
        lead = x.shape[: x.ndim - nk]
        k = 1
        for d in x.shape[x.ndim - nk:]:
            k *= int(d)
        x2 = x.reshape(-1, k)
        if kind == "fp8":
            w_q, w_inv = stored
            amax = jnp.reshape(qstate[f"{site.name}.input_quantizer"]["amax"], ())
            qx = None
            if backend == "gpu":
                from kernels.fp8 import fp8_quantize

                def qx(v, a):
                    return fp8_quantize(v, a, interpret=False)
            y = fp8_linear(x2, w_q, w_inv, amax, out_dtype=jnp.float32, quantize_x=qx)
        else:
            if xspec is not None:  # NVFP4 activations (W4A4 on Hopper: activation fake-quant + W4A16 GEMM)
                from jq.fake_quant import fake_quant

                x2 = fake_quant(x2, qstate.get(f"{site.name}.input_quantizer", {}).get("amax"), spec=xspec)
            if isinstance(stored, w4a16.PackedW4):
                y = w4a16.w4a16_matmul(x2.astype(jnp.bfloat16), stored, out_dtype=jnp.float32)
            elif x2.dtype == jnp.float32:
                y = _f32_ref(x2, stored)
            else:
                y = w4a16.w4a16_matmul_xla(x2, dequantize(stored, jnp.bfloat16), out_dtype=jnp.float32)
        return [y.reshape(tuple(lead) + tuple(out.shape[len(lead):])).astype(out.dtype)]

    impl.kind = kind
    return impl


def _f32_ref(x2, qt):
    """Reference W4A16 in float32 (CPU tests): ``x @ dequantize(W).T`` at highest precision."""
    from jq.qtensor import dequantize

    w = dequantize(qt, jnp.float32)
    return lax.dot_general(x2, w, (((1,), (1,)), ((), ())), precision=lax.Precision.HIGHEST,
                           preferred_element_type=jnp.float32)


def realize(qm, *, backend: str | None = None, sites: Mapping | None = None) -> RealizedModel:
    """Quantize ``qm``'s eligible weights once and return a :class:`RealizedModel` serving them for real.

    Args:
      qm: a calibrated QuantizedModel (weights quantized with their calibrated amax; activations with theirs).
      backend: ``"gpu"`` (Mosaic W4A16 kernel and FP8 kernels; default on a GPU) or ``"xla"`` (reference
        W4A16 path through XLA; default elsewhere). FP8 sites use XLA's fp8 ``dot_general`` on both. The W4A16
        implementation comes from the kernel registry (``kernels.registry.use("w4a16_matmul", "nvfp4", "gpu",
        "xla")`` keeps the XLA path on a GPU).
      sites: optional ``{site name: kind}`` overrides of :func:`site_plan` (``"fake"`` keeps a site on fake quant).

    Sites whose input quantizer has a ``pre_quant_scale`` (SmoothQuant/AWQ), layer-scanned weights and
    non-``x @ W`` layouts stay on fake quant.
    """
    from jq.real_quantize import quantize
    from kernels import registry
    from kernels.dispatch import w4a16_pack_fn
    from kernels.fp8_linear import prepare_fp8_weight

    backend = backend or _default_backend()
    traced = qm.traced
    plan = site_plan(qm, traced)
    for name in plan:
        if qm.qstate.get(f"{name}.input_quantizer", {}).get("pre_quant_scale") is not None:
            plan[name] = "fake"
    if sites:
        for k, v in sites.items():
            if k not in plan:
                raise ValueError(f"unknown site {k!r}; sites: {sorted(plan)}")
            if v not in ("fake", plan[k]):
                raise ValueError(f"site {k!r} can be served as {plan[k]!r} or 'fake', not {v!r}")
            plan[k] = v
    leaves = jax.tree_util.tree_leaves(qm.params)
    weights = {}
    qbackend = "gpu" if backend == "gpu" else "cpu"
    for site in traced.sites:
        kind = plan.get(site.name, "fake")
        if kind == "fake":
            continue
        w, _ = weight_operand(site.weight, leaves)
        nk = len(site.params["dimension_numbers"][0][0])
        k = 1
        for d in site.shapes[0][len(site.shapes[0]) - nk:]:
            k *= int(d)
        wc = site.view.to_canonical(w).reshape(-1, k)  # [N, K]: out features first, contracting dims last
        wspec = _spec(qm, f"{site.name}.weight_quantizer")
        amax = qm.qstate.get(f"{site.name}.weight_quantizer", {}).get("amax")
        if kind == "fp8":
            weights[site.name] = prepare_fp8_weight(wc, jnp.reshape(amax, ()))
            continue
        qt = quantize(wc, wspec, amax, backend=qbackend)
        fmt = "nvfp4" if kind == "nvfp4_w4a16" else "int4"
        impl = registry.select("w4a16_matmul", fmt, "gpu" if backend == "gpu" else "cpu")
        weights[site.name] = w4a16_pack_fn(impl)(qt)  # PackedW4 for the Mosaic kernel, else the QTensor
    return RealizedModel(qm, weights, plan, backend)
