"""Which implementation serves a quantizer: the jnp reference everywhere, Pallas kernels where they apply.

The policy lives here, above the kernels: :func:`registry` builds (once, on first use) a
:class:`~jq.backends.registry.KernelRegistry` from the reference implementations of every format and the
kernels each format declares (:meth:`jq.formats.Format.kernel_bindings`). Ops and their call contracts:

* ``fake_quant`` -- ``fn(x, *amax, spec, view)`` (the lowering of :data:`jq.fake_quant.jq_fake_quant_p`);
* ``quantize`` -- ``fn(x, spec, amax=None) -> QTensor``;
* ``dequantize`` -- ``fn(qt, dtype=None) -> array``.

Selection happens when a function is lowered (pin before the first ``jit`` call); ``JQ_KERNELS=reference``
in the environment keeps every op on the reference.

Example:
  >>> from jq.config import QuantizerSpec
  >>> select("fake_quant", QuantizerSpec(num_bits=8), "cpu").name
  'reference'
"""

from __future__ import annotations

import jax

from jq import formats as F
from jq.backends.registry import PLATFORMS, Impl, KernelRegistry
from jq.formats.base import KernelBinding
from jq.qtensor import dequantize as reference_dequantize
from jq.qtensor import quantize as reference_quantize
from jq.quantizer import fake_quant_reference

__all__ = ["registry", "select", "use", "pinned", "available", "quantize", "dequantize", "platform",
           "reference_fake_quant", "Impl", "KernelRegistry", "PLATFORMS"]

_REGISTRY: KernelRegistry | None = None


def reference_fake_quant(x, *amax, spec, view):
    """The jnp reference of ``fake_quant`` on an operand with its canonical view."""
    a = amax[0] if amax else None
    if view.is_identity:
        return fake_quant_reference(x, spec, a, batch=view.batch)
    c = view.to_canonical(x)
    return view.from_canonical(fake_quant_reference(c, spec, a, batch=view.batch), x.shape)


def _reference_quantize(x, spec, amax=None):
    return reference_quantize(x, spec, amax)


def _reference_dequantize(qt, dtype=None):
    return reference_dequantize(qt, dtype)


def build_registry() -> KernelRegistry:
    """A registry with the references of every format on every platform and each format's kernels."""
    reg = KernelRegistry()
    refs = {"fake_quant": reference_fake_quant, "quantize": _reference_quantize, "dequantize": _reference_dequantize}
    references = [KernelBinding(op, plat, "reference", fn, -1, None, "jq.numerics reference in jnp")
                  for op, fn in refs.items() for plat in PLATFORMS]
    for fmt in F.FORMATS:
        for b in references + list(fmt.kernel_bindings()):
            reg.add(Impl(fmt.name, b))
    return reg


def registry() -> KernelRegistry:
    """The process-wide registry (built on first use)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = build_registry()
    return _REGISTRY


def _fmt(spec_or_name) -> str:
    return spec_or_name if isinstance(spec_or_name, str) else spec_or_name.format.name


def select(op: str, spec, platform: str, **ctx) -> Impl:
    """The implementation of ``op`` for ``spec`` (or a format name) on ``platform``; ``ctx`` describes the call
    (``view``, ``shape``, ``dtype``, ``qt`` ...), and ``spec`` is passed on to the support predicates."""
    if not isinstance(spec, str):
        ctx = {"spec": spec, **ctx}
    return registry().select(op, _fmt(spec), platform, **ctx)


def use(op: str, fmt: str, platform: str, name: str | None) -> None:
    """Pin implementation ``name`` of ``op`` for format ``fmt`` on ``platform`` (None removes the pin)."""
    registry().use(op, fmt, platform, name)


def pinned(op: str, fmt: str, platform: str, name: str):
    """Context manager form of :func:`use`."""
    return registry().pinned(op, fmt, platform, name)


def available(op: str | None = None) -> list[Impl]:
    """Every registered implementation."""
    return registry().available(op)


def platform() -> str:
    """``"gpu"`` when JAX's default backend is a GPU, else ``"cpu"`` (or ``"tpu"``)."""
    b = jax.default_backend()
    return "gpu" if b in ("gpu", "cuda", "rocm") else ("tpu" if b == "tpu" else "cpu")


def quantize(x, spec, amax=None, platform_: str | None = None):
    """Real-quantize through the registry (kernel on GPU where supported, else :func:`jq.qtensor.quantize`)."""
    plat = platform_ or platform()
    return select("quantize", spec, plat, shape=tuple(x.shape), dtype=x.dtype).fn(x, spec, amax)


def dequantize(qt, dtype=None, platform_: str | None = None):
    """Dequantize through the registry."""
    return select("dequantize", qt.spec, platform_ or platform(), qt=qt).fn(qt, dtype)
