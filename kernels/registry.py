"""Which implementation runs for ``(op, format, backend)``: the kernel dispatch registry.

Every op has the jnp reference of :mod:`jq.numerics` (name ``"reference"``), registered for every backend.
Kernels register themselves with a priority and a ``supports(**ctx)`` predicate (shapes, dtypes, specs they
handle); :func:`select` returns the highest-priority supported one unless the user pinned a choice with
:func:`use`. Selection happens when a function is lowered, so pin before the first ``jit`` call.

Example:
  >>> from kernels import registry
  >>> registry.select("fake_quant", "nvfp4", "cpu").name
  'reference'
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

__all__ = ["Impl", "register", "select", "use", "pinned", "available", "BACKENDS"]

BACKENDS = ("cpu", "gpu", "tpu")


@dataclasses.dataclass(frozen=True)
class Impl:
    """One registered implementation."""

    op: str
    format: str
    backend: str
    name: str
    fn: Callable
    priority: int = 0
    supports: Callable[..., bool] | None = None
    note: str = ""

    def ok(self, **ctx) -> bool:
        return self.supports is None or bool(self.supports(**ctx))


_REGISTRY: dict[tuple[str, str, str], dict[str, Impl]] = {}
_PINNED: dict[tuple[str, str, str], str] = {}


def register(op: str, fmt: str, backend: str, name: str, *, priority: int = 0, supports=None, note: str = ""):
    """Decorator registering ``fn`` as implementation ``name`` of ``op`` for ``fmt`` (``"*"``: any) on ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")

    def deco(fn):
        _REGISTRY.setdefault((op, fmt, backend), {})[name] = Impl(op, fmt, backend, name, fn, priority, supports, note)
        return fn

    return deco


def _candidates(op, fmt, backend):
    out = dict(_REGISTRY.get((op, "*", backend), {}))
    out.update(_REGISTRY.get((op, fmt, backend), {}))
    return out


def select(op: str, fmt: str, backend: str, **ctx) -> Impl:
    """The implementation to run. A pinned choice wins (error if it does not support ``ctx``); else the
    highest-priority supported one; ``reference`` is the fallback."""
    cands = _candidates(op, fmt, backend)
    pin = _PINNED.get((op, fmt, backend)) or _PINNED.get((op, "*", backend))
    if pin is not None:
        if pin not in cands:
            raise ValueError(f"{op}/{fmt}/{backend}: pinned implementation {pin!r} is not registered; "
                             f"have {sorted(cands)}")
        impl = cands[pin]
        if not impl.ok(**ctx):
            raise ValueError(f"{op}/{fmt}/{backend}: pinned implementation {pin!r} does not support {ctx}")
        return impl
    ranked = sorted((i for i in cands.values() if i.ok(**ctx)), key=lambda i: -i.priority)
    if not ranked:
        raise LookupError(f"no implementation of {op} for format {fmt!r} on {backend}")
    return ranked[0]


def use(op: str, fmt: str, backend: str, name: str | None) -> None:
    """Pin ``name`` for ``(op, fmt, backend)``; ``None`` removes the pin."""
    key = (op, fmt, backend)
    if name is None:
        _PINNED.pop(key, None)
    else:
        _PINNED[key] = name


@contextlib.contextmanager
def pinned(op: str, fmt: str, backend: str, name: str):
    """Context manager form of :func:`use`."""
    key = (op, fmt, backend)
    old = _PINNED.get(key)
    use(op, fmt, backend, name)
    try:
        yield
    finally:
        use(op, fmt, backend, old)


def available(op: str | None = None) -> list[Impl]:
    """Every registered implementation (optionally of one op), sorted for display."""
    impls = [i for d in _REGISTRY.values() for i in d.values() if op is None or i.op == op]
    return sorted(impls, key=lambda i: (i.op, i.format, i.backend, -i.priority, i.name))
