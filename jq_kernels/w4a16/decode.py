"""The decode GEMM's A operand: a ``[64, 64]`` f16/bf16 wgmma fragment decoded in registers from the packed codes
and scales in shared memory, one ``llvm.inline_asm`` of :mod:`jq_kernels.w4a16.ptx` per 32-bit register."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from jax._src.lib.mlir import ir
from jax._src.lib.mlir.dialects import arith, llvm, memref
from jax.experimental.mosaic import gpu as mgpu
from jax.experimental.mosaic.gpu import fragmented_array as fa
from jax.experimental.mosaic.gpu import utils as mu
from jax.experimental.pallas import mosaic_gpu as plgpu

from jq_kernels.w4a16.ptx import bf16_scale_pair_ptx, int4_decode_ptx, nvfp4_bf16_decode_ptx, nvfp4_f16_decode_ptx

__all__ = ["decode_a"]


def _decode_fragment(fmt, codes_ref, scales_ref, lead=None, dtype="f16"):
    """inline_mgpu body: the [64, 64] wgmma A fragment of 4 chunks (16 columns each) of one 64-row tile.

    ``lead``: None when the refs are the tile's ``[4, 128]`` / ``[4|1, 32]`` views; ``"wg"`` when they carry a
    leading tile dimension indexed by the calling warpgroup (consumer warpgroup ``w`` decodes tile ``w``).
    """
    i32 = ir.IntegerType.get_signless(32)
    index = ir.IndexType.get()
    bf16 = dtype == "bf16"
    f16x2 = ir.VectorType.get((2,), ir.BF16Type.get() if bf16 else ir.F16Type.get())
    tall = mu.thread_idx()
    tid = arith.remui(tall, mu.c(128, i32))
    tidx = arith.index_cast(index, tid)
    sidx = arith.index_cast(index, arith.shrui(tid, mu.c(2, i32)))  # row pair of the thread
    pre = [] if lead is None else [arith.index_cast(index, arith.divui(tall, mu.c(128, i32)))]
    regs = np.empty(fa.WGMMA_LAYOUT.registers_shape((64, 64)), dtype=object)
    for c in range(4):
        ci = arith.constant(index, c)
        w = memref.load(codes_ref, [*pre, ci, tidx])
        if fmt == "nvfp4":
            s = arith.extui(i32, memref.load(scales_ref, [*pre, ci, sidx]))
            asm = nvfp4_f16_decode_ptx
        else:
            s = memref.load(scales_ref, [*pre, arith.constant(index, 0), sidx])
            asm = functools.partial(int4_decode_ptx, bf16=bf16)
        if bf16 and fmt == "nvfp4":
            pair = llvm.inline_asm(i32, [s], bf16_scale_pair_ptx(), "=r,r")
        for k, (c8, r8) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            if bf16 and fmt == "nvfp4":
                out = llvm.inline_asm(i32, [w, pair], nvfp4_bf16_decode_ptx(k), "=r,r,r")
            else:
                out = llvm.inline_asm(i32, [w, s], asm(k), "=r,r,r")
            regs[0, 2 * c + c8, 0, 0, r8, 0, 0, 0, 0] = mu.bitcast(out, f16x2)
    return mgpu.FragmentedArray(_registers=regs, _layout=fa.WGMMA_LAYOUT, _is_signed=None)


def _decode_fragment_ctx(fmt, lead, dtype, ctx, codes_ref, scales_ref):
    del ctx
    return _decode_fragment(fmt, codes_ref, scales_ref, lead, dtype)


def decode_a(fmt, cref, sref, lead=None, dtype="f16"):
    """The f16/bf16 wgmma A operand ``[64, 64]`` decoded in registers from the SMEM views ``cref`` / ``sref``
    (inside a Mosaic GPU kernel; Lane lowering semantics)."""
    jdt = jnp.bfloat16 if dtype == "bf16" else jnp.float16
    return plgpu.inline_mgpu(
        arg_types=(plgpu.RefType(), plgpu.RefType()),
        return_type=plgpu.ShapeDtypeStruct((64, 64), jdt, layout=plgpu.Layout.WGMMA),
    )(functools.partial(_decode_fragment_ctx, fmt, lead, dtype))(cref, sref)
