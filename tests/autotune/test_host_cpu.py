"""Which CPUs make ONNX Runtime's u8s8 kernels saturate: x86 without VNNI."""

import pytest

from jq_autotune.host_cpu import cpu_flags, u8s8_saturates


@pytest.mark.parametrize("machine, flags, saturates", [
    ("x86_64", {"sse4_2", "avx2", "fma"}, True),          # AVX2 only: VPMADDUBSW adds pairs in int16
    ("x86_64", {"avx2", "avx512f", "avx512bw"}, True),    # AVX-512 before Cascade Lake
    ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, False),
    ("AMD64", {"avx2", "avx_vnni"}, False),               # AVX-VNNI (Alder Lake and later)
    ("x86_64", None, True),                               # flags unreadable: assume the saturating kernels
    ("aarch64", set(), False),
    ("arm64", None, False),
])
def test_u8s8_saturates(machine, flags, saturates, monkeypatch):
    monkeypatch.setattr("jq_autotune.host_cpu.cpu_flags", lambda *a: None)
    assert u8s8_saturates(machine=machine, flags=flags) is saturates


def test_cpu_flags_reads_the_flags_lines(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_vnni"}
    assert cpu_flags(tmp_path / "missing") is None
