"""FP8 decode GEMM on Hopper's fp8 wgmma (Mosaic GPU): E4M3 weights streamed by TMA, both operands in shared memory.

Computes ``y[B, N] = (x_q[B, K] @ w_q[N, K]^T) * scale`` for ``B <= MAX_TOKENS`` E4M3 tokens (``scale =
(1/s_x)(1/s_w)``). Every E4M3 x E4M3 product is exact in float32, so the result equals the cuBLASLt fp8 GEMM
(:func:`jq_kernels.fp8_linear.fp8_linear`) and the Pallas-Triton decode GEMM (:mod:`jq_kernels.fp8_decode`) up to
the order of the float32 additions.

Schedule (swap-AB, grid over row groups and K splits):

* the weight rows are the wgmma M side: a CTA owns ``64 * rows`` rows (``rows`` accumulators ``[64, tokens]``,
  one warpgroup) and one of ``split`` K ranges, which it walks ``block_k`` columns per step through a
  ``stages``-deep TMA pipeline (``plgpu.emit_pipeline``): weight tile ``[64 rows, block_k]`` and token tile
  ``[tokens, block_k]`` land in 128-byte-swizzled shared memory and one ``m64 n<tokens> k32`` e4m3 wgmma per 32
  columns reads both from there (fp8 wgmma wants both operands K-major: the stored ``[N, K]`` weight and the
  ``[B, K]`` tokens already are, so nothing is transposed or decoded in registers);
* the tokens are padded to ``tokens = max(8, 8 ceil(B / 8))`` (the wgmma N side and the TMA row tile);
* the CTA writes its float32 partial sums ``[64 rows, tokens]``; XLA adds the ``split`` partials, transposes,
  scales and casts (one small fusion).

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


@dataclasses.dataclass(frozen=True, kw_only=True)
class FP8WgmmaConfig:
    """Launch parameters of the fp8 wgmma decode GEMM.

    Attributes:
      rows: 64-row weight tiles per CTA (accumulators of its warpgroup); 1 where it does not divide the tiles.
      block_k: K columns per pipeline step (a multiple of 128; the largest of 512 / 256 / 128 dividing K is used
        when this one does not).
      stages: TMA copies in flight (capped so that a CTA's stages fit in shared memory).
      split_k: K ranges per row group (partial sums added after); 0: chosen by :func:`wgmma_plan`'s rule.
      ctas_per_sm, min_steps: that rule's floors (CTAs per SM where the K steps allow; K steps per CTA).

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

    def __post_init__(self):
        if self.rows < 1 or self.block_k < 128 or self.block_k % 128 or self.stages < 1 or self.split_k < 0:
            raise ValueError(f"FP8WgmmaConfig: rows >= 1, block_k a multiple of 128, stages >= 1, split_k >= 0; "
                             f"got {self}")
        if self.ctas_per_sm < 1 or self.min_steps < 1:
            raise ValueError(f"FP8WgmmaConfig: ctas_per_sm and min_steps must be >= 1, got {self}")

    @property
    def name(self) -> str:
        """``wgmma/r<rows>k<block_k>p<stages>s<split_k>``, then ``c<ctas_per_sm>`` / ``m<min_steps>`` unless 1 / 4."""
        extra = ((f"c{self.ctas_per_sm}" if self.ctas_per_sm != 1 else "")
                 + (f"m{self.min_steps}" if self.min_steps != 4 else ""))
        return f"wgmma/r{self.rows}k{self.block_k}p{self.stages}s{self.split_k}{extra}"

    @classmethod
    def from_name(cls, name: str) -> "FP8WgmmaConfig":
        """The config whose :attr:`name` is ``name``.

        Example:
          >>> FP8WgmmaConfig.from_name("wgmma/r2k512p3s0c4") == FP8WgmmaConfig(rows=2, block_k=512, stages=3,
          ...                                                                   ctas_per_sm=4)
          True
        """
        m = re.fullmatch(r"wgmma/r(\d+)k(\d+)p(\d+)s(\d+)(?:c(\d+))?(?:m(\d+))?", name)
        if m is None:
            raise ValueError(f"FP8WgmmaConfig.from_name: {name!r} is not a config name like 'wgmma/r1k256p4s0'")
        rows, bk, stages, split = (int(v) for v in m.groups()[:4])
        return cls(rows=rows, block_k=bk, stages=stages, split_k=split, ctas_per_sm=int(m.group(5) or 1),
                   min_steps=int(m.group(6) or 4))


def parse_wgmma_configs(spec: str) -> tuple[FP8WgmmaConfig, ...]:
    """Configs from ``"rows,block_k,stages,split_k;..."``.

    Example:
      >>> parse_wgmma_configs("2,256,4,0;1,512,3,2")[1].name
      'wgmma/r1k512p3s2'
    """
    out = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        vals = [int(v) for v in part.split(",")]
        if len(vals) != 4:
            raise ValueError(f"fp8_wgmma config {part!r}: want rows,block_k,stages,split_k")
        out.append(FP8WgmmaConfig(rows=vals[0], block_k=vals[1], stages=vals[2], split_k=vals[3]))
    return tuple(out)


def _num_sms() -> int:
    try:
        return int(getattr(jax.devices()[0], "core_count", 132) or 132)
    except Exception:  # pragma: no cover
        return 132


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
    """Static launch plan: ``tokens`` (padded), ``n_pad``, ``k_pad``, ``rows``, ``bk``, ``stages``, ``steps`` (K steps
    per CTA), ``split``, ``groups`` (row groups) and ``ctas``. ``sms`` None: the default device's (132 off a GPU).

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
    sms = sms or _num_sms()
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
    stages = max(1, min(cfg.stages, n_steps // split, SMEM_PIPELINE_BYTES // step_bytes))
    return {"tokens": tpad, "n_pad": n_pad, "k_pad": k_pad, "rows": rows, "bk": bk, "stages": stages,
            "steps": n_steps // split, "split": split, "groups": groups, "ctas": groups * split}


def fp8_wgmma_partials(x_q, w_q, cfg: FP8WgmmaConfig | None = None):
    """The kernel alone: float32 partial sums ``[split, N_pad, tokens]`` of ``w_q @ x_q^T`` (``x_q [B, K]``, ``w_q
    [N, K]``, both float8_e4m3fn); ``y^T = partials.sum(0)[:N, :B]``. GPU only (Mosaic GPU); lowers anywhere."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    if x_q.dtype != jnp.float8_e4m3fn or w_q.dtype != jnp.float8_e4m3fn:
        raise ValueError(f"fp8_wgmma: x and w must be float8_e4m3fn, got {x_q.dtype} and {w_q.dtype}")
    if x_q.ndim != 2 or w_q.ndim != 2 or x_q.shape[1] != w_q.shape[1]:
        raise ValueError(f"fp8_wgmma: want x [B, K] and w [N, K], got {x_q.shape} and {w_q.shape}")
    (b, k), n = x_q.shape, w_q.shape[0]
    p = wgmma_plan(n, k, b, cfg)
    w = C.pad_rows(C.pad_rows(w_q, p["n_pad"], 0), p["k_pad"], 1)  # ragged shapes: padded per call (slow)
    x = C.pad_rows(C.pad_rows(x_q, p["tokens"], 0), p["k_pad"], 1)
    rows, bk, steps, tpad = p["rows"], p["bk"], p["steps"], p["tokens"]
    m = 64 * rows
    tile = (plgpu.TilingTransform((8, SWIZZLE_BYTES)), plgpu.SwizzleTransform(SWIZZLE_BYTES))

    def fp8_wgmma(w_g, x_g, out_g):
        g, s = lax.axis_index("n"), lax.axis_index("s")

        def scoped(*accs):
            def step(_, w_smem, x_smem):
                for j in range(bk // SWIZZLE_BYTES):
                    cols = pl.ds(j * SWIZZLE_BYTES, SWIZZLE_BYTES)
                    x_t = plgpu.transpose_ref(x_smem.at[:, cols], (1, 0))  # [cols, tokens], K-major
                    for r in range(rows):
                        plgpu.wgmma(accs[r], w_smem.at[pl.ds(64 * r, 64), cols], x_t)
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

    return plgpu.kernel(
        fp8_wgmma, out_type=jax.ShapeDtypeStruct((p["split"], p["n_pad"], tpad), jnp.float32),
        grid=(p["groups"], p["split"]), grid_names=("n", "s"),
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Lane),
    )(w, x)


def fp8_wgmma_matmul(x_q, w_q, scale, *, out_dtype=jnp.float32, cfg: FP8WgmmaConfig | None = None):
    """``y[B, N] = (x_q @ w_q^T) * scale`` in ``out_dtype`` (``x_q [B, K]``, ``w_q [N, K]`` float8_e4m3fn,
    ``scale`` a float32 scalar): :func:`fp8_wgmma_partials` and one XLA fusion adding its K splits. GPU only."""
    b, n = x_q.shape[0], w_q.shape[0]
    part = fp8_wgmma_partials(x_q, w_q, cfg)
    acc = part[0] if part.shape[0] == 1 else jnp.sum(part, axis=0)
    return (acc[:n, :b].T * jnp.asarray(scale, jnp.float32)).astype(out_dtype)
