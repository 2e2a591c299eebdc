"""Does ONNX Runtime's u8s8 integer kernel saturate on this CPU? (x86 without VNNI: yes.)

ONNX Runtime's CPU kernels for ``QLinearConv``/``QLinearMatMul``/``QGemm`` with uint8 activations and int8
weights use ``VPMADDUBSW`` on x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake, AMD before Zen 4):
it multiplies u8 x s8 pairs and adds each *pair* into a saturating int16,

    sat16(a[2i] * w[2i] + a[2i+1] * w[2i+1]),   |sum| <= 2 * 255 * max|w|.

With full-range int8 weights (``max|w| = 127``) that bound is 64770 > 32767, so large activations meeting
large weights are clipped and the fused graph no longer computes its Q/DQ math (measured on an AVX2 EPYC:
1 % to 40 % of the output range on a small CNN, against ~1e-7 with 7-bit weights). Weights within
``|w| <= 64`` keep the bound at 2 * 255 * 64 = 32640, which fits: that is ONNX Runtime's ``reduce_range``
(``quantize_static`` documents it for x86 CPUs without VNNI). VNNI's ``VPDPBUSD`` adds into int32 and ARM
kernels do not saturate this way.

Example:
  >>> u8s8_saturates(machine="x86_64", flags={"avx2", "fma"})
  True
  >>> u8s8_saturates(machine="x86_64", flags={"avx2", "avx512_vnni"})
  False
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Iterable

__all__ = ["u8s8_saturates", "cpu_flags"]

_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
_VNNI = frozenset({"avx512_vnni", "avx_vnni"})  # Linux /proc/cpuinfo spellings


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The CPU feature flags Linux reports, or None when they cannot be read (another OS)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            flags.update(line.split(":", 1)[1].split())
    return flags or None


def u8s8_saturates(machine: str | None = None, flags: Iterable[str] | None = None) -> bool:
    """True when ONNX Runtime's u8s8 kernels add product pairs in int16 here: an x86 CPU without VNNI.

    Args:
      machine: ``platform.machine()`` (default: this host's).
      flags: CPU feature flags (default: this host's ``/proc/cpuinfo``). An x86 CPU whose flags cannot be
        read counts as saturating: 7-bit weights are correct everywhere, full-range ones are not.
    """
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine not in _X86:
        return False
    flags = set(flags) if flags is not None else cpu_flags()
    return flags is None or not (flags & _VNNI)
