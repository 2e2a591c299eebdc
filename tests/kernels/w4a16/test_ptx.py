"""The inline-PTX decode generators: the text of the pre-split code (golden of commit e520b16), and the integer
op count the NVFP4 bf16 layout was chosen for."""

import re

import pytest

from jq_kernels.w4a16 import ptx
from tests.kernels.w4a16 import golden

_, META = golden.load()
GENERATORS = {
    "nvfp4_bf16": ptx.nvfp4_bf16_decode_ptx,
    "nvfp4_f16": ptx.nvfp4_f16_decode_ptx,
    "int4_f16": lambda k: ptx.int4_decode_ptx(k, bf16=False),
    "int4_bf16": lambda k: ptx.int4_decode_ptx(k, bf16=True),
}


@pytest.mark.parametrize("key", sorted(META["ptx"]))
def test_ptx_matches_pre_split_golden(key):
    if key == "bf16_scale_pair":
        got = ptx.bf16_scale_pair_ptx()
    else:
        name, k = key.split("/")
        got = GENERATORS[name](int(k))
    assert got == META["ptx"][key]


def test_nvfp4_bf16_decode_is_11_integer_ops_per_8_weights():
    """Register 0: AND; 1: shift + AND; 2 and 3: two shifts, AND, LOP3 (docs/kernels.md, RESULTS.md §4.0)."""
    ops = [len(re.findall(r"\b(shl|shr|and|lop3)\.b32", ptx.nvfp4_bf16_decode_ptx(k))) for k in range(4)]
    assert ops == [1, 2, 4, 4] and sum(ops) == 11


def test_scale_pair_bias_is_237_in_both_halves():
    assert ptx.BF16_SCALE_PAIR_BIAS == (237 << 7) | ((237 << 7) << 16)
