"""Launch configuration of the decode GEMM: :class:`MosaicConfig`, the static launch plan it gives for a packed
weight and a batch, and the per-shape default. Pure Python (no GPU needed).

Measurements behind the defaults: ``docs/kernels.md`` (W4A16 decode GEMM) and ``benchmarks/RESULTS.md`` §4-5.
"""

from __future__ import annotations

import dataclasses

import jax  # noqa: F401  (the plan() example)

from jq_kernels import _common as C  # attributes read at call time (C imports jq, which imports this)

__all__ = ["MosaicConfig", "plan", "default_config", "SCHEDULES", "EPILOGUES"]

SCHEDULES = ("grid", "stream_k", "ws")
EPILOGUES = ("xla", "kernel")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MosaicConfig:
    """Decode-GEMM launch configuration (the default is the fastest measured on the H100).

    Attributes:
      rows: 64-row weight tiles per pipeline step (accumulators per warpgroup; falls back to 1 if it does not divide
        the tiles).
      block_k: K per pipeline step (a multiple of 128).
      stages: TMA pipeline depth (capped so that a CTA's stages fit in shared memory).
      split_k: ``"grid"`` only: CTAs along K (partial sums added after); None: enough CTAs to fill the GPU.
      schedule: ``"grid"`` (one CTA per (row group, K split)), ``"stream_k"`` (``ctas`` CTAs each taking an equal
        contiguous run of the (row group, K step) sequence) or ``"ws"`` (stream-K with a warp-specialized pipeline:
        one TMA producer warpgroup and ``rows`` consumer warpgroups, one 64-row tile each; rows <= 2).
      ctas: ``"stream_k"`` / ``"ws"``: CTAs (None: 3 per SM for ``"stream_k"``, one per SM for ``"ws"``).
      epilogue: ``"xla"`` (the kernel writes f32 partial sums ``[slots, Np, Tpad]``; one XLA fusion adds,
        transposes, scales and casts them) or ``"kernel"`` (``"stream_k"`` only: the CTA finishing a row group last
        adds the others' partial sums and writes ``y [B, Np]`` itself; correct but slower, so not the default).
    """

    rows: int = 1
    block_k: int = 128
    stages: int = 4
    split_k: int | None = None
    schedule: str = "stream_k"
    ctas: int | None = None
    epilogue: str = "xla"


_SMEM_PIPELINE_BYTES = 200 * 1024  # of the 227 KB a Hopper CTA may use; the rest: barriers, Mosaic scratch


def _auto_split(ctas: int, n_steps: int) -> int:
    """Smallest power-of-two K split giving >= 2 CTAs per SM (and dividing the K steps)."""
    s = 1
    while ctas * s < 2 * C.num_sms() and n_steps % (2 * s) == 0 and n_steps // (2 * s) >= 4:
        s *= 2
    return s


def _check(cfg: MosaicConfig, rows: int):
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"MosaicConfig: unknown schedule {cfg.schedule!r}; have {SCHEDULES}")
    if cfg.epilogue not in EPILOGUES:
        raise ValueError(f"MosaicConfig: unknown epilogue {cfg.epilogue!r}; have {EPILOGUES}")
    if cfg.epilogue == "kernel" and cfg.schedule != "stream_k":
        raise NotImplementedError("the in-kernel epilogue is implemented for the 'stream_k' schedule only")
    if cfg.schedule == "ws" and rows > 2:
        # 4 consumer warpgroups (640 threads) hung on the H100 (RESULTS.md §4, run 7); not investigated
        raise NotImplementedError("the warp-specialized schedule takes rows <= 2")


def plan(pw, b: int, cfg: MosaicConfig) -> dict:
    """Static launch parameters of the decode GEMM for ``b`` tokens and the packed weight ``pw``.

    Only ``pw.codes.shape`` (``[Np/64, Kp/16, 128]``) and ``pw.fmt`` are read. Keys: tiles, kp, np_, tpad (tokens
    padded to 8), rows, bk, stages, kc (chunks per step), n_steps, groups, sgroups (scale entries per step); grid:
    split, slots; stream-K: per (K steps per CTA), ctas, slots (partial-sum slots per row group), total.

    Example:
      >>> import types
      >>> pw = types.SimpleNamespace(codes=jax.ShapeDtypeStruct((8, 32, 128), "uint32"), fmt="nvfp4")
      >>> p = plan(pw, 4, MosaicConfig(schedule="stream_k", ctas=5))
      >>> p["total"], p["per"], p["ctas"], p["slots"]
      (32, 7, 5, 2)
    """
    tiles, chunks, _ = pw.codes.shape
    kp, np_ = chunks * 16, tiles * 64
    tpad = max(8, -(-b // 8) * 8)
    rows, bk, stages = cfg.rows, cfg.block_k, cfg.stages
    if kp % bk:  # K padded to 128 only: fall back to the smallest step
        bk = 128
    if tiles % rows:
        rows = 1
    if tiles % rows or kp % bk or bk % 128:
        raise ValueError(f"config {cfg} does not divide the packed weight ({np_}x{kp})")
    _check(cfg, rows)
    n_steps = kp // bk
    groups = tiles // rows
    # a pipeline stage holds the codes, scales and token tile of one step: keep one CTA's stages in shared memory
    sgroups = bk // 16 if pw.fmt == "nvfp4" else bk // 128  # scale entries per row pair and step
    step_bytes = rows * (bk // 16) * 128 * 4 + rows * sgroups * 32 * (2 if pw.fmt == "nvfp4" else 4) + tpad * bk * 2
    stages = max(2, min(stages, _SMEM_PIPELINE_BYTES // step_bytes))
    p = dict(tiles=tiles, kp=kp, np_=np_, tpad=tpad, rows=rows, bk=bk, stages=stages, kc=bk // 16,
             n_steps=n_steps, groups=groups, sgroups=sgroups)
    if cfg.schedule == "grid":
        split = cfg.split_k or _auto_split(groups, n_steps)
        if n_steps % split:
            raise ValueError(f"split_k={split} does not divide the {n_steps} K steps")
        p.update(split=split, slots=split)
    else:
        total = groups * n_steps
        want = cfg.ctas or (C.num_sms() if cfg.schedule == "ws" else 3 * C.num_sms())
        per = -(-total // max(1, min(want, total)))  # K steps per CTA
        if cfg.ctas is None:  # small weights: at most 4 partial-sum slots (runs of >= (n_steps - 1) / 3 steps)
            per = max(per, -(-(n_steps - 1) // 3), 1)
        ctas = -(-total // per)  # no CTA without work
        # a row group's n_steps steps are spread over at most this many CTAs (one partial-sum slot each)
        slots = min(ctas, -(-(n_steps - 1) // per) + 1)
        p.update(per=per, ctas=ctas, slots=slots, total=total)
    return p


STREAM_K_SIZE_RULE = MosaicConfig(rows=2, stages=3)  # the plan default_config sizes a weight with


def default_config(pw, b: int) -> MosaicConfig:
    """The launch configuration :func:`jq_kernels.w4a16.w4a16_matmul` uses when none is given.

    ``MosaicConfig()`` (stream-K) for weights large enough that a stream-K plan over 128-row groups
    (:data:`STREAM_K_SIZE_RULE`) gives every SM a CTA; else the grid schedule with 64-row tiles and 3 stages, which
    splits K to reach two CTAs per SM (the rule measured end to end in run 11, RESULTS.md §5).
    """
    cfg = MosaicConfig()
    if plan(pw, b, STREAM_K_SIZE_RULE)["ctas"] >= C.num_sms():
        return cfg
    return dataclasses.replace(cfg, schedule="grid", rows=1, stages=3)
