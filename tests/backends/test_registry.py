"""jq.backends.registry: an Impl is a format's KernelBinding under the format's name; selection by priority."""

import pytest

from jq import backends, formats
from jq.backends.registry import Impl, KernelRegistry
from jq.formats.base import KernelBinding


def _binding(name, priority=0, supports=None, platform="cpu"):
    return KernelBinding("fake_quant", platform, name, lambda x: x, priority, supports, f"{name} note")


def test_impl_reads_the_binding_fields_through():
    b = _binding("k", priority=3)
    impl = Impl("fp8", b)
    assert impl.binding is b
    assert (impl.op, impl.format, impl.platform, impl.backend, impl.name, impl.priority, impl.note) == (
        "fake_quant", "fp8", "cpu", "cpu", "k", 3, "k note")
    assert impl.fn is b.fn and impl.ok(shape=(2,))


def test_registered_kernels_are_the_formats_own_bindings():
    bound = [(fmt.name, b) for fmt in formats.FORMATS for b in fmt.kernel_bindings()]
    assert bound, "some format declares a kernel"
    for fmt_name, b in bound:
        assert backends.registry().candidates(b.op, fmt_name, b.platform)[b.name].binding == b


def test_select_takes_the_highest_priority_that_supports_the_call():
    reg = KernelRegistry()
    reg.add(Impl("fp8", _binding("slow", priority=0)))
    reg.add(Impl("fp8", _binding("fast", priority=5, supports=lambda big=False, **_: not big)))
    assert reg.select("fake_quant", "fp8", "cpu").name == "fast"
    assert reg.select("fake_quant", "fp8", "cpu", big=True).name == "slow"
    with pytest.raises(LookupError, match="no implementation of fake_quant for format 'int'"):
        reg.select("fake_quant", "int", "cpu")


def test_an_unknown_platform_is_refused():
    with pytest.raises(ValueError, match="platform must be one of"):
        KernelRegistry().add(Impl("fp8", _binding("k", platform="npu")))
