"""FP8 decode GEMM (Pallas-Triton): E4M3 weights read once at 1 byte per element, for a few tokens.

Computes ``y[B, N] = (x_q[B, K] @ w_q[N, K]^T) * (1/s_x) (1/s_w)`` for ``B <= MAX_TOKENS`` with both operands
E4M3: the activation either quantized by the caller (``x`` float8_e4m3fn, as on the W8A8 path) or, given its scale
``x_scale = s_x``, quantized in the kernel as each tile is loaded, ``x_q = e4m3(clip(x * s_x, +-448))`` (round to
nearest even: :func:`jq.numerics.fp8_quantize`'s values; one launch instead of a quantize kernel, a pad and the
GEMM). Every E4M3 x E4M3 product is exact in float32 (4 + 4 significant bits), so the result equals the cuBLASLt
fp8 GEMM (:func:`jq_kernels.fp8_linear.fp8_linear`) up to the order of the float32 additions.

Schedule (swap-AB, split-K):

* the weight tile ``w_q[bn, bk]`` is the MMA's M side and the tokens, padded to ``max(16, 2^ceil(log2 B))``
  (the smallest N of Triton's MMA), its N side: the tile product is ``w_tile @ x_tile^T -> [bn, B_pad]``;
* grid ``(N / bn, split)``: program ``(j, s)`` owns rows ``j*bn ...`` of the weight and the K range
  ``s*K/split ...``, walking it ``bk`` columns at a time (Triton pipelines the loop ``num_stages`` deep) and
  writes its float32 partial sum ``[bn, B_pad]``; XLA adds the ``split`` partials, transposes, scales and casts
  (one small fusion; the partials are ``split * N * B_pad * 4`` bytes against the weight's ``N * K``);
* ``operand="fp8"`` feeds the E4M3 tiles to the MMA directly (Hopper's fp8 wgmma), ``operand="bf16"`` upcasts
  both tiles to bf16 in registers first (exact: every E4M3 value is a bf16 value);
* ``fused_out=True``: no split-K (every program walks all of K) and the kernel itself writes ``y [tile, N]``,
  scaled and cast (its accumulator transposed in registers), so the call is one launch with no XLA epilogue; the
  grid is filled with smaller row blocks instead (down to 16 rows). Correct in interpret mode (tests); its speed
  against the split-K partials has not been measured on a GPU yet, so it is off by default.

The weight is the stored :func:`jq_kernels.fp8_linear.prepare_fp8_weight` layout (``[N, K]``, K-major), read in
place: blocks are powers of two dividing ``N`` and ``K`` where such blocks exist (every Llama/SmolLM2 shape), else
the weight is zero-padded per call (correct, slow: a ragged shape should be padded once when stored).
Measurements and the selection rule: ``docs/kernels.md`` (FP8 decode GEMM).

Example:
  >>> w = jnp.ones((64, 128), jnp.float8_e4m3fn); x = jnp.ones((3, 128), jnp.float8_e4m3fn)
  >>> fp8_decode_matmul(x, w, jnp.float32(0.5), interpret=True)[0, :2].tolist()
  [64.0, 64.0]
"""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jq_kernels import _common as C

__all__ = ["FP8DecodeConfig", "CONFIGS", "MAX_TOKENS", "decode_plan", "grid_cost", "fp8_decode_partials",
           "fp8_decode_matmul", "parse_configs"]

E4M3_MAX = 448.0

MAX_TOKENS = 64  # the token tile is the MMA's N side: [bn, 64] float32 accumulators are 32 registers per thread
MIN_TOKEN_TILE = 16  # Triton's dot needs every dimension >= 16
OPERANDS = ("fp8", "bf16")
_NT = (((1,), (1,)), ((), ()))  # contract the K (last) dims of both tiles


@dataclasses.dataclass(frozen=True, kw_only=True)
class FP8DecodeConfig:
    """Launch parameters of the FP8 decode GEMM.

    Attributes:
      block_n: weight rows per program (the MMA's M side; a power of two >= 16).
      block_k: K columns per loop step (a power of two >= 32).
      split_k: K ranges per weight tile (a divisor of the K steps is used: the largest <= this); 0 picks the split
        and the block rows (``block_n`` halved down to ``min_block_n``) minimizing :func:`grid_cost`.
      target_programs: programs that fill the GPU in :func:`grid_cost` (about 2 per SM on an H100/H200).
      min_block_n: the smallest block rows ``split_k=0`` may choose (64: one Hopper warpgroup MMA).
      num_warps, num_stages: Triton compiler parameters (stages: loads in flight in the K loop).
      operand: ``"fp8"`` (E4M3 MMA) or ``"bf16"`` (tiles upcast in registers, bf16 MMA).
      x_in_kernel: callers that own the activation quantization (``FP8Linear``) quantize it in the kernel (True)
        or with a separate kernel before it (False, name suffix ``-xq``).
      fused_out: the kernel writes the scaled ``[B, N]`` result itself (no split-K, no XLA epilogue; name suffix
        ``-fo``).

    Example:
      >>> FP8DecodeConfig(block_n=64, operand="bf16").name
      'bf16/n64k256s0w4p4'
      >>> FP8DecodeConfig(x_in_kernel=False).name
      'fp8/n128k256s0w4p4-xq'
    """

    block_n: int = 128
    block_k: int = 256
    split_k: int = 0
    target_programs: int = 264
    min_block_n: int = 64
    num_warps: int = 4
    num_stages: int = 4
    operand: str = "fp8"
    x_in_kernel: bool = True
    fused_out: bool = False

    def __post_init__(self):
        for field, lo in (("block_n", 16), ("block_k", 32), ("min_block_n", 16)):
            v = getattr(self, field)
            if v < lo or v & (v - 1):
                raise ValueError(f"FP8DecodeConfig.{field} must be a power of two >= {lo}, got {v}")
        if self.split_k < 0 or self.target_programs < 1 or self.num_warps < 1 or self.num_stages < 1:
            raise ValueError(f"FP8DecodeConfig: split_k >= 0, target_programs/num_warps/num_stages >= 1, got {self}")
        if self.operand not in OPERANDS:
            raise ValueError(f"FP8DecodeConfig.operand must be one of {OPERANDS}, got {self.operand!r}")
        if self.fused_out and self.split_k > 1:
            raise ValueError(f"FP8DecodeConfig: fused_out writes the result from one program per row block, so "
                             f"split_k must be 0 or 1, got {self.split_k}")

    @property
    def name(self) -> str:
        return (f"{self.operand}/n{self.block_n}k{self.block_k}s{self.split_k}w{self.num_warps}"
                f"p{self.num_stages}" + ("" if self.x_in_kernel else "-xq") + ("-fo" if self.fused_out else ""))

    @classmethod
    def from_name(cls, name: str) -> "FP8DecodeConfig":
        """The config whose :attr:`name` is ``name`` (``target_programs`` default).

        Example:
          >>> FP8DecodeConfig.from_name("bf16/n64k512s2w8p3") == FP8DecodeConfig(
          ...     block_n=64, block_k=512, split_k=2, num_warps=8, num_stages=3, operand="bf16")
          True
        """
        m = re.fullmatch(r"(\w+)/n(\d+)k(\d+)s(\d+)w(\d+)p(\d+)(-xq)?(-fo)?", name)
        if m is None:
            raise ValueError(f"FP8DecodeConfig.from_name: {name!r} is not a config name like 'fp8/n128k256s0w4p4'")
        bn, bk, sk, nw, ns = (int(v) for v in m.groups()[1:6])
        return cls(block_n=bn, block_k=bk, split_k=sk, num_warps=nw, num_stages=ns, operand=m.group(1),
                   x_in_kernel=m.group(7) is None, fused_out=m.group(8) is not None)


# candidates for the GPU sweep, the default first (benchmarks/kernel_bench/fp8_decode_sweep.py); shared memory per
# stage is (bn + tile) * bk bytes: <= 192 KB per block at 32 tokens for all, at 64 for the default (Hopper: 227 KB)
CONFIGS = (FP8DecodeConfig(), FP8DecodeConfig(operand="bf16"), FP8DecodeConfig(block_n=64, block_k=512),
           FP8DecodeConfig(block_k=512, num_stages=2), FP8DecodeConfig(block_n=256, block_k=128, num_warps=8),
           FP8DecodeConfig(x_in_kernel=False))


def parse_configs(spec: str) -> tuple[FP8DecodeConfig, ...]:
    """Configs from ``"operand:block_n,block_k,split_k,num_warps,num_stages;..."`` (e.g. ``"fp8:128,256,0,4,4"``;
    ``"fp8-xq:..."``: ``x_in_kernel=False``; ``"fp8-fo:..."`` / ``"fp8-xq-fo:..."``: ``fused_out=True``).

    Example:
      >>> parse_configs("bf16:64,512,2,4,3")[0].name
      'bf16/n64k512s2w4p3'
    """
    out = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        operand, _, nums = part.partition(":")
        vals = [int(v) for v in nums.split(",")]
        if len(vals) != 5:
            raise ValueError(f"fp8_decode config {part!r}: want operand:block_n,block_k,split_k,num_warps,num_stages")
        bn, bk, sk, nw, ns = vals
        base, *flags = operand.split("-")
        if set(flags) - {"xq", "fo"}:
            raise ValueError(f"fp8_decode config {part!r}: operand suffixes are -xq and -fo, got {operand!r}")
        out.append(FP8DecodeConfig(block_n=bn, block_k=bk, split_k=sk, num_warps=nw, num_stages=ns, operand=base,
                                   x_in_kernel="xq" not in flags, fused_out="fo" in flags))
    return tuple(out)


def _token_tile(b: int) -> int:
    return max(MIN_TOKEN_TILE, 1 << max(0, (b - 1).bit_length()))


def grid_cost(n_pad: int, k_pad: int, bn: int, split: int, tile: int, target_programs: int) -> float:
    """Relative time of a grid: bytes moved over the share of the GPU it fills,
    ``(N K + 8 split N tile) / min(1, programs / target_programs)`` (the E4M3 weight once, the f32 partials written
    and read once; ``programs = N / bn * split``).

    Example:
      >>> grid_cost(4096, 4096, 128, 8, 32, 264) > grid_cost(4096, 4096, 64, 4, 32, 264)
      True
    """
    programs = (n_pad // bn) * split
    return (n_pad * k_pad + 8 * split * n_pad * tile) / min(1.0, programs / target_programs)


def decode_plan(n: int, k: int, tokens: int, cfg: FP8DecodeConfig | None = None) -> dict:
    """Blocks, padding and split of one call: ``bn, n_pad, bk, k_pad, split, steps`` (K steps per program),
    ``tile`` (padded tokens) and ``programs``.

    Example:
      >>> p = decode_plan(28672, 8192, 8); (p["bn"], p["bk"], p["split"], p["steps"], p["tile"], p["programs"])
      (64, 256, 1, 32, 16, 448)
    """
    cfg = cfg or FP8DecodeConfig()
    if not 1 <= tokens <= MAX_TOKENS:
        raise ValueError(f"fp8_decode: tokens must be in 1..{MAX_TOKENS}, got {tokens}")
    bn, n_pad = C.pick_block(n, cfg.block_n, min_block=16)
    bk, k_pad = C.pick_block(k, cfg.block_k, min_block=32)
    bn, bk = max(bn, 16), max(bk, 32)  # tiny operands: pad up to the MMA's minimum
    n_pad, k_pad = -(-n_pad // bn) * bn, -(-k_pad // bk) * bk
    n_steps, tile = k_pad // bk, _token_tile(tokens)
    divisors = [d for d in range(1, n_steps + 1) if n_steps % d == 0]
    if cfg.split_k and not cfg.fused_out:
        split = max(d for d in divisors if d <= cfg.split_k)
    else:  # least grid_cost; K ranges keep >= 2 steps (the loop pipelines); a smaller bn must win by > 1 %
        # fused_out: one program per row block (no split), the grid filled by row blocks down to 16 rows
        ok = [1] if cfg.fused_out else [d for d in divisors if n_steps // d >= min(2, n_steps)]
        best = None
        b = bn
        while b >= max(16, min(16 if cfg.fused_out else cfg.min_block_n, bn)):
            for d in ok:
                c = grid_cost(n_pad, k_pad, b, d, tile, cfg.target_programs)
                if best is None or c < best[0] * 0.99:
                    best = (c, b, d)
            b //= 2
        _, bn, split = best
    return {"bn": bn, "n_pad": n_pad, "bk": bk, "k_pad": k_pad, "split": split, "steps": n_steps // split,
            "tile": tile, "programs": (n_pad // bn) * split}


def _kernel(w_ref, x_ref, *refs, steps: int, bk: int, operand: str, quantize: bool, fused: bool):
    """One ``[bn, tile]`` float32 partial: ``sum_k w[bn, k] q(x)[tile, k]`` over this program's K range; ``fused``:
    the whole K range, written as ``y[tile, bn] = (partial * factor)^T`` in the output's dtype."""
    refs = list(refs)
    o_ref = refs.pop()
    s_ref = refs.pop(0) if quantize else None
    f_ref = refs.pop(0) if fused else None
    bn, tile = w_ref.shape[0], x_ref.shape[0]
    s_x = s_ref[0] if quantize else None

    def step(i, acc):
        k0 = pl.multiple_of(i * bk, bk)
        w = w_ref[:, pl.ds(k0, bk)]
        x = x_ref[:, pl.ds(k0, bk)]
        if quantize:  # e4m3(clip(x * s_x)): round to nearest even, as jq.numerics.fp8_quantize
            x = jnp.clip(x.astype(jnp.float32) * s_x, -E4M3_MAX, E4M3_MAX).astype(jnp.float8_e4m3fn)
        if operand == "bf16":
            w, x = w.astype(jnp.bfloat16), x.astype(jnp.bfloat16)
        # [bn, bk] @ [tile, bk]^T: exact products, float32 sums (lax.dot_general: pl.dot moved across versions)
        return acc + lax.dot_general(w, x, _NT, preferred_element_type=jnp.float32)

    acc = lax.fori_loop(0, steps, step, jnp.zeros((bn, tile), jnp.float32))
    if fused:
        o_ref[...] = (acc * f_ref[0]).T.astype(o_ref.dtype)
    else:
        o_ref[...] = acc


def fp8_decode_partials(x_q, w_q, *, x_scale=None, cfg: FP8DecodeConfig | None = None,
                        interpret: bool | None = None, factor=None, out_dtype=jnp.float32):
    """The kernel alone: float32 partial sums ``[split, N_pad, tile]`` of ``w_q @ q(x)^T`` (padded shapes); with
    ``cfg.fused_out`` (``factor`` given: the float32 scalar the sums are multiplied by) the result itself,
    ``[tile, N_pad]`` in ``out_dtype``.

    ``x_q``: ``[B, K]`` float8_e4m3fn, or a float activation quantized in the kernel with ``x_scale`` (``s_x``,
    a float32 scalar); ``w_q``: ``[N, K]`` float8_e4m3fn; ``cfg`` None: the default config.
    ``y^T = partials.sum(0)[:N, :B]``.
    """
    cfg = cfg or FP8DecodeConfig()
    quantize = x_q.dtype != jnp.float8_e4m3fn
    if w_q.dtype != jnp.float8_e4m3fn or (quantize and not jnp.issubdtype(x_q.dtype, jnp.floating)):
        raise ValueError(f"fp8_decode: w must be float8_e4m3fn and x float8_e4m3fn or a float activation, got x "
                         f"{x_q.dtype}, w {w_q.dtype}")
    if quantize != (x_scale is not None):
        raise ValueError(f"fp8_decode: x_scale is needed exactly when x is not float8_e4m3fn (x {x_q.dtype}, "
                         f"x_scale {'given' if x_scale is not None else 'None'})")
    if x_q.ndim != 2 or w_q.ndim != 2 or x_q.shape[1] != w_q.shape[1]:
        raise ValueError(f"fp8_decode: want x [B, K] and w [N, K], got {x_q.shape} and {w_q.shape}")
    (b, k), n = x_q.shape, w_q.shape[0]
    p = decode_plan(n, k, b, cfg)
    w = C.pad_rows(C.pad_rows(w_q, p["n_pad"], 0), p["k_pad"], 1)
    x = C.pad_rows(C.pad_rows(x_q, p["tile"], 0), p["k_pad"], 1)
    bn, tile, split = p["bn"], p["tile"], p["split"]
    k_range = p["k_pad"] // split
    fused = cfg.fused_out
    if fused != (factor is not None):
        raise ValueError("fp8_decode: a fused_out config needs the output factor (and only it takes one)")
    kern = functools.partial(_kernel, steps=p["steps"], bk=p["bk"], operand=cfg.operand, quantize=quantize,
                             fused=fused)
    in_specs = [pl.BlockSpec((bn, k_range), lambda j, s: (j, s)), pl.BlockSpec((tile, k_range), lambda j, s: (0, s))]
    args = [w, x]
    for scalar in ([x_scale] if quantize else []) + ([factor] if fused else []):
        # a scalar rides in a 4-element block (Triton loads need power-of-two sizes)
        in_specs.append(pl.BlockSpec((4,), lambda j, s: (0,)))
        args.append(jnp.zeros((4,), jnp.float32).at[0].set(jnp.reshape(scalar, ()).astype(jnp.float32)))
    nb = p["n_pad"] // bn
    name = f"jq_fp8_decode_{cfg.operand}" + ("_qx" if quantize else "") + ("_fo" if fused else "")
    params = dict(interpret=C.resolve_interpret(interpret),
                  compiler_params=C.triton_params(cfg.num_warps, cfg.num_stages), name=name)
    if fused:  # split == 1 (decode_plan): program j writes y[:, j*bn:(j+1)*bn]
        return pl.pallas_call(kern, grid=(nb, 1), in_specs=in_specs,
                              out_specs=pl.BlockSpec((tile, bn), lambda j, s: (0, j)),
                              out_shape=jax.ShapeDtypeStruct((tile, p["n_pad"]), out_dtype), **params)(*args)
    out = pl.pallas_call(  # partials stacked as 2D rows [split * N_pad, tile]: plain 2D blocks, no squeezed dim
        kern, grid=(nb, split), in_specs=in_specs,
        out_specs=pl.BlockSpec((bn, tile), lambda j, s: (s * nb + j, 0)),
        out_shape=jax.ShapeDtypeStruct((split * p["n_pad"], tile), jnp.float32), **params)(*args)
    return out.reshape(split, p["n_pad"], tile)


def fp8_decode_matmul(x_q, w_q, scale, *, x_scale=None, out_dtype=jnp.float32, cfg: FP8DecodeConfig | None = None,
                      interpret: bool | None = None):
    """``y[B, N] = (q(x) @ w_q^T) * scale`` (``scale = (1/s_x)(1/s_w)``, a float32 scalar), in ``out_dtype``;
    ``x_q`` float8_e4m3fn, or a float activation with ``x_scale = s_x`` (quantized in the kernel).

    Example:
      >>> w = jnp.full((32, 64), 2.0, jnp.float8_e4m3fn); x = jnp.ones((1, 64), jnp.float8_e4m3fn)
      >>> fp8_decode_matmul(x, w, jnp.float32(0.25), interpret=True).shape
      (1, 32)
    """
    b, n = x_q.shape[0], w_q.shape[0]
    if cfg is not None and cfg.fused_out:  # one launch: the kernel scales, casts and lays out y itself
        y = fp8_decode_partials(x_q, w_q, x_scale=x_scale, cfg=cfg, interpret=interpret,
                                factor=jnp.asarray(scale, jnp.float32), out_dtype=out_dtype)
        return y[:b, :n]
    part = fp8_decode_partials(x_q, w_q, x_scale=x_scale, cfg=cfg, interpret=interpret)
    acc = jnp.sum(part, axis=0)[:n, :b].T  # XLA: one fusion reading the partials
    return (acc * jnp.asarray(scale, jnp.float32)).astype(out_dtype)
