"""Launch plans of the decode GEMM (CPU: same integer formulas as the kernel)."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jq_kernels import _common as C
from jq_kernels.w4a16 import PackedW4
from jq_kernels.w4a16 import plan as P


def _packed(tiles, chunks):  # only the packed codes' shape and the format matter to the launch plan
    return PackedW4(np.zeros((tiles, chunks, 128), np.uint32), np.zeros((1,), np.uint16), np.float32(1), "nvfp4",
                    tiles * 64, chunks * 16)


@pytest.mark.parametrize("cfg", [P.MosaicConfig(schedule="grid", epilogue="kernel"),
                                 P.MosaicConfig(schedule="ws", epilogue="kernel"), P.MosaicConfig(epilogue="x"),
                                 P.MosaicConfig(schedule="persistent")])
def test_kernel_epilogue_and_unknown_names_rejected(cfg):
    with pytest.raises((NotImplementedError, ValueError)):
        P.plan(_packed(8, 32), 4, cfg)


def test_ws_schedule_rejects_four_consumers():
    with pytest.raises(NotImplementedError):
        P.plan(_packed(8, 32), 4, P.MosaicConfig(schedule="ws", rows=4))


def test_config_is_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        P.MosaicConfig(2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        P.MosaicConfig().rows = 2


@pytest.mark.parametrize("groups,n_steps,ctas", [(224, 64, 132), (112, 64, 132), (3, 5, 7), (7, 3, 2), (1, 1, 132),
                                                 (13, 17, 8)])
def test_stream_k_plan_covers_every_step_once(groups, n_steps, ctas):
    """The stream-K schedule of the kernel (same integer formulas): each row group's K steps land in exactly one
    partial-sum slot each, every (slot, group) is written exactly once (data or zeros), no CTA is idle."""
    rows = 2
    p = P.plan(_packed(groups * rows, n_steps * 8), 4, P.MosaicConfig(rows=rows, schedule="ws", ctas=ctas))
    per, total, slots, ns = p["per"], p["total"], p["slots"], p["n_steps"]
    assert total == groups * n_steps and p["ctas"] <= max(ctas, 1)
    writes = {}
    for c in range(p["ctas"]):
        start = c * per
        n = min(total - start, per)
        assert n > 0
        run = {}
        for i in range(n):
            g, kk = divmod(start + i, ns)
            run.setdefault(g, []).append(kk)
            if kk == ns - 1 or i == n - 1:
                first = (g * ns) // per
                slot, npieces = c - first, (g * ns + ns - 1) // per - first + 1
                assert 0 <= slot < slots and (slot, g) not in writes
                writes[(slot, g)] = run.pop(g)
                for s_ in range(1, slots):
                    if slot == 0 and npieces <= s_:
                        assert (s_, g) not in writes
                        writes[(s_, g)] = []
    for g in range(groups):
        assert sorted(sum((writes[(s, g)] for s in range(slots)), [])) == list(range(ns))


def test_default_config_picks_stream_k_only_where_it_fills_the_gpu():
    """Run 11: stream-K everywhere left SMs idle at a d=4096 model's shapes (1.67x vs 2.08x bf16 end to end)."""

    def packed(n, k):  # only the packed codes' shape matters to the launch plan
        return types.SimpleNamespace(codes=jax.ShapeDtypeStruct((n // 64, k // 16, 512), jnp.uint8), fmt="nvfp4")

    big = P.default_config(packed(28672, 8192), 16)
    assert big.schedule == "stream_k" and P.plan(packed(28672, 8192), 16, big)["ctas"] >= C.num_sms()
    for n, k in ((4096, 4096), (1024, 4096), (4096, 14336)):
        cfg = P.default_config(packed(n, k), 1)
        assert cfg.schedule == "grid" and cfg.rows == 1
        assert P.plan(packed(n, k), 1, P.STREAM_K_SIZE_RULE)["ctas"] < C.num_sms()
