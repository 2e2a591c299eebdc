"""A kernel registry: implementations of ``(op, format, platform)`` with priorities and support predicates.

:class:`KernelRegistry` knows nothing about particular formats or kernels: :mod:`jq.backends` fills one from
the formats' :meth:`~jq.formats.Format.kernel_bindings` and the jnp references. :meth:`KernelRegistry.select`
returns the highest-priority implementation whose ``supports(**ctx)`` holds, unless the user pinned one.
"""

from __future__ import annotations

import contextlib
import dataclasses

from jq.formats.base import KernelBinding

__all__ = ["Impl", "KernelRegistry", "PLATFORMS"]

PLATFORMS = ("cpu", "gpu", "tpu")


@dataclasses.dataclass(frozen=True)
class Impl:
    """A format's :class:`~jq.formats.base.KernelBinding` registered under the format's name.

    The binding's fields (``op``, ``platform``, ``name``, ``fn``, ``priority``, ``supports``, ``note``) read
    through as attributes.

    Example:
      >>> impl = Impl("fp8", KernelBinding("fake_quant", "cpu", "reference", fn))
      >>> (impl.op, impl.format, impl.platform, impl.name)
      ('fake_quant', 'fp8', 'cpu', 'reference')
    """

    format: str
    binding: KernelBinding

    op = property(lambda self: self.binding.op)
    platform = property(lambda self: self.binding.platform)
    name = property(lambda self: self.binding.name)
    fn = property(lambda self: self.binding.fn)
    priority = property(lambda self: self.binding.priority)
    supports = property(lambda self: self.binding.supports)
    note = property(lambda self: self.binding.note)

    @property
    def backend(self) -> str:
        """Alias of :attr:`platform`."""
        return self.platform

    def ok(self, **ctx) -> bool:
        return self.supports is None or bool(self.supports(**ctx))


class KernelRegistry:
    """Implementations by ``(op, format, platform)``; see the module docstring."""

    def __init__(self):
        self._impls: dict[tuple[str, str, str], dict[str, Impl]] = {}
        self._pinned: dict[tuple[str, str, str], str] = {}

    def add(self, impl: Impl) -> None:
        if impl.platform not in PLATFORMS:
            raise ValueError(f"platform must be one of {PLATFORMS}, got {impl.platform!r}")
        self._impls.setdefault((impl.op, impl.format, impl.platform), {})[impl.name] = impl

    def candidates(self, op: str, fmt: str, platform: str) -> dict[str, Impl]:
        return dict(self._impls.get((op, fmt, platform), {}))

    def select(self, op: str, fmt: str, platform: str, **ctx) -> Impl:
        """A pinned choice (error if it does not support ``ctx``), else the best supported implementation."""
        cands = self.candidates(op, fmt, platform)
        pin = self._pinned.get((op, fmt, platform))
        if pin is not None:
            if pin not in cands:
                raise ValueError(f"{op}/{fmt}/{platform}: pinned implementation {pin!r} is not registered; "
                                 f"have {sorted(cands)}")
            impl = cands[pin]
            if not impl.ok(**ctx):
                raise ValueError(f"{op}/{fmt}/{platform}: pinned implementation {pin!r} does not support this call")
            return impl
        ranked = sorted((i for i in cands.values() if i.ok(**ctx)), key=lambda i: -i.priority)
        if not ranked:
            raise LookupError(f"no implementation of {op} for format {fmt!r} on {platform}")
        return ranked[0]

    def use(self, op: str, fmt: str, platform: str, name: str | None) -> None:
        """Pin ``name`` for ``(op, fmt, platform)``; ``None`` removes the pin."""
        key = (op, fmt, platform)
        if name is None:
            self._pinned.pop(key, None)
        else:
            self._pinned[key] = name

    @contextlib.contextmanager
    def pinned(self, op: str, fmt: str, platform: str, name: str):
        """Context manager form of :meth:`use`."""
        key = (op, fmt, platform)
        old = self._pinned.get(key)
        self.use(op, fmt, platform, name)
        try:
            yield
        finally:
            self.use(op, fmt, platform, old)

    def available(self, op: str | None = None) -> list[Impl]:
        """Every registered implementation (optionally of one op), sorted for display."""
        impls = [i for d in self._impls.values() for i in d.values() if op is None or i.op == op]
        return sorted(impls, key=lambda i: (i.op, i.format, i.platform, -i.priority, i.name))
