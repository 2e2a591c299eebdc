"""FP8 decode GEMM on Hopper's fp8 wgmma (Mosaic GPU): E4M3 weights streamed by TMA, both operands in shared memory.

Computes ``y[B, N] = (x_q[B, K] @ w_q[N, K]^T) * scale`` for ``B <= MAX_TOKENS`` E4M3 tokens (``scale =
(1/s_x)(1/s_w)``). Every E4M3 x E4M3 product is exact in float32, so the result equals the cuBLASLt fp8 GEMM
(:func:`jq_kernels.fp8_linear.fp8_linear`) and the Pallas-Triton decode GEMM (:mod:`jq_kernels.fp8_decode`) up to
the order of the float32 additions.

Swap-AB: the weight rows are the wgmma M side. A CTA (one warpgroup) walks ``64 * rows`` weight rows (``rows``
accumulators ``[64, tokens]``) ``block_k`` columns per step through a ``stages``-deep TMA pipeline
(``plgpu.emit_pipeline``): weight tile ``[64 rows, block_k]`` and token tile ``[tokens, block_k]`` land in
128-byte-swizzled shared memory and one ``m64 n<tokens> k32`` e4m3 wgmma per 32 columns reads both from there (fp8
wgmma wants both operands K-major: the stored ``[N, K]`` weight and the ``[B, K]`` tokens already are, so nothing is
transposed or decoded in registers). The tokens are padded to ``tokens = max(8, 8 ceil(B / 8))`` (the wgmma N side
and the TMA row tile). Two schedules:

* ``"grid"``: a CTA per (row group, K range); it writes its float32 partial sums to slot ``K range``;
* ``"stream_k"``: ``ctas_per_sm`` CTAs per SM, each taking an equal contiguous run of the (row group, K step)
  sequence (so every SM streams the same bytes whatever the shape); a CTA writes a group's sums when the group or
  its run ends, to slot ``CTA - first CTA of the group``, and zeroes the slots no CTA reaches for its first group.

XLA adds the partial-sum slots, transposes, scales and casts (one small fusion).

Why a second FP8 decode GEMM: the Pallas-Triton kernel streams the 8B layer weights at 1.5-1.9 TB/s (run 28,
H100, ``benchmarks/RESULTS.md``) where the model bar needs about 2.4 TB/s; here the copy engine fetches the tiles and
the warpgroup only issues wgmmas, the structure cuBLAS uses for its bf16 GEMV. Its GPU speed is measured by
``benchmarks/kernel_bench/fp8_decode_sweep.py`` (methods ``wgmma:<config>``); until then it is not the default.

Example (lowering only, on any machine)::

    y = jax.jit(fp8_wgmma_matmul)(x_q, w_q, jnp.float32(1e-3))   # x_q [B, K], w_q [N, K] float8_e4m3fn
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
from jax import lax

from jq_kernels import _common as C

__all__ = ["FP8WgmmaConfig", "MAX_TOKENS", "wave_cost", "wgmma_plan", "fp8_wgmma_partials", "fp8_wgmma_matmul",
           "parse_wgmma_configs"]

MAX_TOKENS = 64  # [64, 64] float32 accumulators: 32 registers per thread per 64-row tile
SWIZZLE_BYTES = 128  # one swizzle row = 128 E4M3 columns
SMEM_PIPELINE_BYTES = 200 * 1024  # of the 227 KB a Hopper CTA may use; the rest: barriers, Mosaic scratch
SCHEDULES = ("grid", "stream_k")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FP8WgmmaConfig:
    """Launch parameters of the fp8 wgmma decode GEMM.

    Attributes:
      rows: 64-row weight tiles per CTA (accumulators of its warpgroup); 1 where it does not divide the tiles.
      block_k: K columns per pipeline step (a multiple of 128; the largest of 512 / 256 / 128 dividing K is used
        when this one does not).
      stages: TMA copies in flight (capped so that a CTA's stages fit in shared memory).
      split_k: ``"grid"``: K ranges per row group (partial sums added after); 0: chosen by :func:`wgmma_plan`'s
        rule.
      ctas_per_sm, min_steps: that rule's floors (CTAs per SM where the K steps allow; K steps per CTA);
        ``"stream_k"``: CTAs per SM.
      schedule: ``"grid"`` (a CTA per row group and K range) or ``"stream_k"`` (``ctas_per_sm`` CTAs per SM, each
        taking an equal contiguous run of the (row group, K step) sequence, so every SM streams the same bytes).

    Example:
      >>> FP8WgmmaConfig(rows=2).name
      'wgmma/r2k256p4s0'
    """

    rows: int = 1
    block_k: int = 256
    stages: int = 4
    split_k: int = 0
    ctas_per_sm: int = 1
    min_steps: int = 4
    schedule: str = "grid"

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"FP8WgmmaConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule == "stream_k" and self.split_k:
            raise ValueError(f"FP8WgmmaConfig: the stream-K schedule splits K itself; split_k must be 0, got "
                             f"{self.split_k}")
        if self.rows < 1 or self.block_k < 128 or self.block_k % 128 or self.stages < 1 or self.split_k < 0:
            raise ValueError(f"FP8WgmmaConfig: rows >= 1, block_k a multiple of 128, stages >= 1, split_k >= 0; "
                             f"got {self}")
        if self.ctas_per_sm < 1 or self.min_steps < 1:
            raise ValueError(f"FP8WgmmaConfig: ctas_per_sm and min_steps must be >= 1, got {self}")

    @property
    def name(self) -> str:
        """``wgmma/r<rows>k<block_k>p<stages>s<split_k>``, then ``c<ctas_per_sm>`` / ``m<min_steps>`` unless 1 / 4,
        then ``-sk`` for the stream-K schedule."""
        extra = ((f"c{self.ctas_per_sm}" if self.ctas_per_sm != 1 else "")
                 + (f"m{self.min_steps}" if self.min_steps != 4 else ""))
        sk = "-sk" if self.schedule == "stream_k" else ""
        return f"wgmma/r{self.rows}k{self.block_k}p{self.stages}s{self.split_k}{extra}{sk}"

    @classmethod
    def from_name(cls, name: str) -> "FP8WgmmaConfig":
        """The config whose :attr:`name` is ``name``.

        Example:
          >>> FP8WgmmaConfig.from_name("wgmma/r2k512p3s0c4") == FP8WgmmaConfig(rows=2, block_k=512, stages=3,
          ...                                                                   ctas_per_sm=4)
          True
        """
        m = re.fullmatch(r"wgmma/r(\d+)k(\d+)p(\d+)s(\d+)(?:c(\d+))?(?:m(\d+))?(-sk)?", name)
        if m is None:
            raise ValueError(f"FP8WgmmaConfig.from_name: {name!r} is not a config name like 'wgmma/r1k256p4s0'")
        rows, bk, stages, split = (int(v) for v in m.groups()[:4])
        return cls(rows=rows, block_k=bk, stages=stages, split_k=split, ctas_per_sm=int(m.group(5) or 1),
                   min_steps=int(m.group(6) or 4), schedule="stream_k" if m.group(7) else "grid")


def parse_wgmma_configs(spec: str) -> tuple[FP8WgmmaConfig, ...]:
    """Configs from ``"rows,block_k,stages,split_k;..."``; a prefix ``sk<c>:`` selects the stream-K schedule with
    ``c`` CTAs per SM (``split_k`` then 0).

    Example:
      >>> [c.name for c in parse_wgmma_configs("2,256,4,0;1,512,3,2;sk2:1,256,4,0")]
      ['wgmma/r2k256p4s0', 'wgmma/r1k512p3s2', 'wgmma/r1k256p4s0c2-sk']
    """
    out = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        head, _, nums = part.rpartition(":")
        if head and not re.fullmatch(r"sk\d+", head):
            raise ValueError(f"fp8_wgmma config {part!r}: the only prefix is sk<CTAs per SM>:")
        vals = [int(v) for v in nums.split(",")]
        if len(vals) != 4:
            raise ValueError(f"fp8_wgmma config {part!r}: want rows,block_k,stages,split_k")
        extra = {"schedule": "stream_k", "ctas_per_sm": int(head[2:])} if head else {}
        out.append(FP8WgmmaConfig(rows=vals[0], block_k=vals[1], stages=vals[2], split_k=vals[3], **extra))
    return tuple(out)


def wave_cost(groups: int, split: int, n_steps: int, sms: int, tile_bytes: int, partial_bytes: int) -> int:
    """Bytes-equivalent time of a grid, ``ceil(ctas / sms) * (n_steps / split) * tile_bytes * sms + 2 * split *
    partial_bytes``: the busiest SM's weight tiles (the whole GPU moves ``sms`` times as many bytes meanwhile) plus
    the f32 partial sums written and read (``partial_bytes`` per K range).

    Example (gate/up of Llama-3-8B, 448 row groups of 16 K steps, 132 SMs, B = 1): a split of 2 fills the SMs
    evenly (7 CTAs of 8 steps on the busiest) where no split leaves 4 CTAs of 16 steps on some SMs and 3 on others:
      >>> wave_cost(448, 2, 16, 132, 16384, 917504) < wave_cost(448, 1, 16, 132, 16384, 917504)
      True
    """
    return -(-groups * split // sms) * (n_steps // split) * tile_bytes * sms + 2 * split * partial_bytes


def wgmma_plan(n: int, k: int, tokens: int, cfg: FP8WgmmaConfig | None = None, sms: int | None = None) -> dict:
    """Static launch plan: ``tokens`` (padded), ``n_pad``, ``k_pad``, ``rows``, ``bk``, ``stages``, ``n_steps`` (K
    steps of a row), ``steps`` (K steps per CTA), ``split`` (partial-sum slots), ``groups`` (row groups), ``ctas``;
    stream-K: ``total`` (row groups x K steps). ``sms`` None: the default device's (132 off a GPU).

    ``split_k=0``: among the splits dividing the K steps that keep >= ``min_steps`` steps per CTA (or none), those
    giving >= ``ctas_per_sm`` CTAs per SM if any do, the least :func:`wave_cost` (ties: the smaller split).

    Example:
      >>> p = wgmma_plan(4096, 4096, 1, sms=132)
      >>> p["tokens"], p["groups"], p["split"], p["steps"], p["ctas"]
      (8, 64, 4, 4, 256)
    """
    cfg = cfg or FP8WgmmaConfig()
    if not 1 <= tokens <= MAX_TOKENS:
        raise ValueError(f"fp8_wgmma: tokens must be in 1..{MAX_TOKENS}, got {tokens}")
    sms = sms or C.num_sms()
    tpad = max(8, -(-tokens // 8) * 8)
    n_pad = -(-n // 64) * 64
    tiles = n_pad // 64
    rows = cfg.rows if tiles % cfg.rows == 0 else 1
    bk = next((b for b in (cfg.block_k, 512, 256, 128) if k % b == 0), 128)
    k_pad = -(-k // bk) * bk
    n_steps, groups = k_pad // bk, tiles // rows
    if cfg.split_k:
        split = max(d for d in range(1, cfg.split_k + 1) if n_steps % d == 0)
    else:
        ok = [d for d in range(1, n_steps + 1) if n_steps % d == 0 and (d == 1 or n_steps // d >= cfg.min_steps)]
        ok = [d for d in ok if groups * d >= cfg.ctas_per_sm * sms] or ok
        split = min(ok, key=lambda d: (wave_cost(groups, d, n_steps, sms, 64 * rows * bk, 4 * n_pad * tpad), d))
    step_bytes = (64 * rows + tpad) * bk  # one weight tile and one token tile, 1 byte per element
    plan = {"tokens": tpad, "n_pad": n_pad, "k_pad": k_pad, "rows": rows, "bk": bk, "n_steps": n_steps,
            "groups": groups, "schedule": cfg.schedule}
    if cfg.schedule == "stream_k":
        total = groups * n_steps
        per = -(-total // min(total, cfg.ctas_per_sm * sms))  # K steps per CTA
        ctas = -(-total // per)  # no CTA without work
        # the most CTAs one row group's steps meet (each writes one partial-sum slot)
        slots = max((g * n_steps + n_steps - 1) // per - (g * n_steps) // per + 1 for g in range(groups))
        stages = max(1, min(cfg.stages, per, SMEM_PIPELINE_BYTES // step_bytes))
        return plan | {"stages": stages, "steps": per, "split": slots, "ctas": ctas, "total": total}
    stages = max(1, min(cfg.stages, n_steps // split, SMEM_PIPELINE_BYTES // step_bytes))
    return plan | {"stages": stages, "steps": n_steps // split, "split": split, "ctas": groups * split}


def fp8_wgmma_partials(x_q, w_q, cfg: FP8WgmmaConfig | None = None):
    """The kernel alone: float32 partial sums ``[split, N_pad, tokens]`` of ``w_q @ x_q^T`` (``x_q [B, K]``, ``w_q
    [N, K]``, both float8_e4m3fn); ``y^T = partials.sum(0)[:N, :B]``. GPU only (Mosaic GPU); lowers anywhere."""
    from jax.experimental.pallas import mosaic_gpu as plgpu

    if x_q.dtype != jnp.float8_e4m3fn or w_q.dtype != jnp.float8_e4m3fn:
        raise ValueError(f"fp8_wgmma: x and w must be float8_e4m3fn, got {x_q.dtype} and {w_q.dtype}")
    if x_q.ndim != 2 or w_q.ndim != 2 or x_q.shape[1] != w_q.shape[1]:
        raise ValueError(f"fp8_wgmma: want x [B, K] and w [N, K], got {x_q.shape} and {w_q.shape}")
    (b, k), n = x_q.shape, w_q.shape[0]
    p = wgmma_plan(n, k, b, cfg)
    w = C.pad_rows(C.pad_rows(w_q, p["n_pad"], 0), p["k_pad"], 1)  # ragged shapes: padded per call (slow)
    x = C.pad_rows(C.pad_rows(x_q, p["tokens"], 0), p["k_pad"], 1)
    tile = (plgpu.TilingTransform((8, SWIZZLE_BYTES)), plgpu.SwizzleTransform(SWIZZLE_BYTES))
    kernel = _stream_k_kernel if p["schedule"] == "stream_k" else _grid_kernel
    grid, names = ((p["ctas"],), ("n",)) if p["schedule"] == "stream_k" else ((p["groups"], p["split"]), ("n", "s"))
    return plgpu.kernel(
        kernel(p, tile), out_type=jax.ShapeDtypeStruct((p["split"], p["n_pad"], p["tokens"]), jnp.float32),
        grid=grid, grid_names=names,
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Lane),
    )(w, x)


def _mma(accs, w_smem, x_smem, rows, bk):
    """``accs[r] += w_smem[64 r : 64 r + 64] @ x_smem^T``: one e4m3 wgmma per 64-row tile and 128-column swizzle
    row (each reads both operands from shared memory)."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    for j in range(bk // SWIZZLE_BYTES):
        cols = pl.ds(j * SWIZZLE_BYTES, SWIZZLE_BYTES)
        x_t = plgpu.transpose_ref(x_smem.at[:, cols], (1, 0))  # [cols, tokens], K-major
        for r in range(rows):
            plgpu.wgmma(accs[r], w_smem.at[pl.ds(64 * r, 64), cols], x_t)


def _grid_kernel(p, tile):
    """CTA ``(g, s)``: row group ``g``'s K range ``s``, written to partial-sum slot ``s``."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    rows, bk, steps, tpad = p["rows"], p["bk"], p["steps"], p["tokens"]
    m = 64 * rows

    def fp8_wgmma(w_g, x_g, out_g):
        g, s = lax.axis_index("n"), lax.axis_index("s")

        def scoped(*accs):
            def step(_, w_smem, x_smem):
                _mma(accs, w_smem, x_smem, rows, bk)
                plgpu.wgmma_wait(0)  # the stage's buffers are reused by the next TMA copy

            plgpu.emit_pipeline(
                step, grid=(steps,),
                in_specs=[plgpu.BlockSpec((m, bk), lambda i: (0, i), transforms=tile),
                          plgpu.BlockSpec((tpad, bk), lambda i: (0, i), transforms=tile)],
                max_concurrent_steps=p["stages"],
            )(w_g.at[pl.ds(g * m, m), pl.ds(s * (steps * bk), steps * bk)],
              x_g.at[:, pl.ds(s * (steps * bk), steps * bk)])
            for r in range(rows):
                out_g[s, pl.ds(g * m + 64 * r, 64), :] = accs[r][...]

        pl.run_scoped(scoped, *([plgpu.ACC((64, tpad), jnp.float32)] * rows))

    return fp8_wgmma


def _stream_k_kernel(p, tile):
    """CTA ``c``: steps ``t = c * per ... c * per + per - 1`` of the (row group ``t // n_steps``, K step ``t %
    n_steps``) sequence, accumulating while the row group lasts. It writes a group's sums when the group or its run
    ends, into slot ``c - (first CTA of the group)``; the CTA holding a group's first step also zeroes the slots
    no CTA reaches for that group, so the caller adds all ``split`` slots."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    rows, bk, per, tpad = p["rows"], p["bk"], p["steps"], p["tokens"]
    ns, total, slots = p["n_steps"], p["total"], p["split"]
    m = 64 * rows

    def zeros():  # rows zero accumulators in the wgmma register layout (a fresh accumulator, read)
        return pl.run_scoped(lambda *refs: tuple(r[...] for r in refs), *([plgpu.ACC((64, tpad), jnp.float32)] * rows))

    def fp8_wgmma_stream_k(w_g, x_g, out_g):
        c = lax.axis_index("n")
        start = c * per
        n = per if total % per == 0 else jnp.minimum(total - start, per)

        def group_step(i):
            return lax.div(start + i, ns), lax.rem(start + i, ns)

        def body(idx, w_smem, x_smem, accs):
            (i,) = idx
            g, kk = group_step(i)

            def step_sums(*refs):  # this step's products in fresh accumulators, read back (waits for the wgmmas)
                _mma(refs, w_smem, x_smem, rows, bk)
                return tuple(r[...] for r in refs)

            part = pl.run_scoped(step_sums, *([plgpu.ACC((64, tpad), jnp.float32)] * rows))
            accs = tuple(a + q for a, q in zip(accs, part))
            first = lax.div(g * ns, per)  # the CTA holding the group's first step
            pieces = lax.div(g * ns + ns - 1, per) - first + 1  # CTAs the group's steps meet

            def flush(accs):
                zero = zeros()
                for r in range(rows):
                    out_g[c - first, pl.ds(g * m + 64 * r, 64), :] = accs[r]
                    for slot in range(1, slots):
                        @pl.when(jnp.logical_and(c == first, pieces <= slot))
                        def _zero():
                            out_g[slot, pl.ds(g * m + 64 * r, 64), :] = zero[r]
                return zero

            return lax.cond(jnp.logical_or(kk == ns - 1, i == n - 1), flush, lambda a: a, accs)

        plgpu.emit_pipeline(
            body, grid=(n,),
            in_specs=[plgpu.BlockSpec((m, bk), lambda i: group_step(i), transforms=tile),
                      plgpu.BlockSpec((tpad, bk), lambda i: (0, group_step(i)[1]), transforms=tile)],
            max_concurrent_steps=p["stages"], init_carry=zeros(),
        )(w_g, x_g)

    return fp8_wgmma_stream_k


def fp8_wgmma_matmul(x_q, w_q, scale, *, out_dtype=jnp.float32, cfg: FP8WgmmaConfig | None = None):
    """``y[B, N] = (x_q @ w_q^T) * scale`` in ``out_dtype`` (``x_q [B, K]``, ``w_q [N, K]`` float8_e4m3fn,
    ``scale`` a float32 scalar): :func:`fp8_wgmma_partials` and one XLA fusion adding its K splits. GPU only."""
    b, n = x_q.shape[0], w_q.shape[0]
    part = fp8_wgmma_partials(x_q, w_q, cfg)
    acc = part[0] if part.shape[0] == 1 else jnp.sum(part, axis=0)
    return (acc[:n, :b].T * jnp.asarray(scale, jnp.float32)).astype(out_dtype)
