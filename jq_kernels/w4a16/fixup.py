"""The stream-K schedule's in-kernel epilogue (``MosaicConfig(epilogue="kernel")``): the CTAs sharing a row group
add their f32 partial sums through a global workspace and per-thread counters, and the last one writes ``y``.

Every thread owns the same accumulator elements in every CTA (the WGMMA layout), so the CTAs synchronize thread by
thread, without barriers or spinning; nothing waits on another CTA, so any CTA scheduling order is safe.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax._src.lib.mlir import ir
from jax._src.lib.mlir.dialects import arith, llvm, vector
from jax.experimental.mosaic.gpu import fragmented_array as fa
from jax.experimental.mosaic.gpu import utils as mu
from jax.experimental.pallas import mosaic_gpu as plgpu

__all__ = ["fixup_call", "fixup_finish_call"]


def fixup_call(rows, tpad, slots, tiles, np_, b, out_dtype):
    """``plgpu.inline_mgpu`` wrapper of :func:`_fixup_fragment` (no result: it only writes global memory).

    Called as ``fixup(accs, ws, cnt, y, factor, g, slot, npieces, defer)`` when a CTA flushes row group ``g``.
    """
    scalar = plgpu.Layout.WG_SPLAT(())
    return plgpu.inline_mgpu(
        arg_types=(tuple(plgpu.Layout.WGMMA for _ in range(rows)), plgpu.RefType(), plgpu.RefType(),
                   plgpu.RefType(), plgpu.RefType(), scalar, scalar, scalar, scalar),
        return_type=None,
    )(functools.partial(_fixup_fragment, rows, tpad, slots, tiles, np_, b, jnp.dtype(out_dtype)))


def fixup_finish_call(rows, tpad, slots, tiles, np_, b, out_dtype):
    """``plgpu.inline_mgpu`` wrapper of :func:`_fixup_finish_fragment`: ``finish(ws, cnt, y, factor, g, npieces,
    pred)`` at the end of a CTA's run."""
    scalar = plgpu.Layout.WG_SPLAT(())
    return plgpu.inline_mgpu(
        arg_types=(plgpu.RefType(), plgpu.RefType(), plgpu.RefType(), plgpu.RefType(), scalar, scalar, scalar),
        return_type=None,
    )(functools.partial(_fixup_finish_fragment, rows, tpad, slots, tiles, np_, b, jnp.dtype(out_dtype)))


class _FixupPtx:
    """Per-thread global-memory helpers (inline PTX) shared by the in-kernel epilogue's two parts."""

    def __init__(self, tiles, np_, ws_ref, cnt_ref, y_ref, f_ref):
        self.i1, self.i16, self.i32, self.i64 = (ir.IntegerType.get_signless(w) for w in (1, 16, 32, 64))
        self.f32 = ir.F32Type.get()
        self.void = ir.Type.parse("!llvm.void")
        self.tiles, self.np_ = tiles, np_
        self.tid = arith.remui(mu.thread_idx(), self.c(128))
        self.ws, self.cnt, self.y, self.fp = (llvm.ptrtoint(self.i64, mu.memref_ptr(r))
                                              for r in (ws_ref, cnt_ref, y_ref, f_ref))

    def c(self, v, t=None):
        return mu.c(v, t or self.i32)

    def asm(self, ret, ops, text, cons):
        return llvm.inline_asm(ret, ops, text, cons, has_side_effects=True)

    def addr(self, base, idx, nbytes):
        return arith.addi(base, arith.muli(arith.extui(self.i64, idx), self.c(nbytes, self.i64)))

    def lt(self, a, v):
        return arith.cmpi(arith.CmpIPredicate.slt, a, v)

    def eq(self, a, v):
        return arith.cmpi(arith.CmpIPredicate.eq, a, v)

    def ws_addr(self, s, tile, k, n_el):  # ws[((s * tiles + tile) * n_el + k) * 128 + tid]
        a = arith
        t = a.addi(a.muli(s, self.c(self.tiles)), tile)
        return self.addr(self.ws, a.addi(a.muli(a.addi(a.muli(t, self.c(n_el)), self.c(k)), self.c(128)), self.tid), 4)

    def counter(self, g):
        return self.addr(self.cnt, arith.addi(arith.muli(g, self.c(128)), self.tid), 4)

    def arrive(self, g, pred):
        """``atom.acq_rel.gpu.add(cnt[g, tid], 1)`` where ``pred`` (else 0): the pieces that arrived before."""
        return self.asm(self.i32, [self.counter(g), self.c(1), pred],
                        "mov.u32 $0, 0;\n@$3 atom.acq_rel.gpu.global.add.u32 $0, [$1], $2;", "=r,l,r,b")

    def store_ws(self, v, s, tile, k, n_el, pred):
        self.asm(self.void, [self.ws_addr(s, tile, k, n_el), v, pred], "@$2 st.global.f32 [$0], $1;", "l,f,b")

    def load_ws(self, s, tile, k, n_el, pred):
        return self.asm(self.f32, [self.ws_addr(s, tile, k, n_el), pred],
                        "mov.f32 $0, 0f00000000;\n@$2 ld.global.cg.f32 $0, [$1];", "=f,l,b")

    def store_y(self, total, row, col, tile, b, out_dtype, last):
        """``y[col, tile * 64 + row] = total * factor`` (rounded to ``out_dtype``) where ``last`` and col < B."""
        a = arith
        if getattr(self, "_fac", None) is None:
            self._fac = self.asm(self.f32, [self.fp], "ld.global.f32 $0, [$1];", "=f,l")
        out = a.mulf(total, self._fac)
        ok = a.andi(last, self.lt(col, self.c(b)))
        oidx = a.addi(a.muli(col, self.c(self.np_)), a.addi(a.muli(tile, self.c(64)), row))
        if out_dtype == jnp.dtype(jnp.float32):
            self.asm(self.void, [self.addr(self.y, oidx, 4), out, ok], "@$2 st.global.f32 [$0], $1;", "l,f,b")
        else:
            half = ir.BF16Type.get() if out_dtype == jnp.dtype(jnp.bfloat16) else ir.F16Type.get()
            h = a.bitcast(self.i16, a.truncf(half, out))
            self.asm(self.void, [self.addr(self.y, oidx, 2), h, ok], "@$2 st.global.b16 [$0], $1;", "l,h,b")

    def reset(self, g, pred):
        self.asm(self.void, [self.counter(g), self.c(0), pred], "@$2 st.relaxed.gpu.global.u32 [$0], $1;", "l,r,b")


def _own_positions(tpad):
    """(row, col) of this thread's accumulator elements of a ``[64, tpad]`` WGMMA tile, in register order (k)."""
    i32 = ir.IntegerType.get_signless(32)
    out = []
    for idx in fa.WGMMA_LAYOUT.thread_idxs((64, tpad)):
        for e in range(fa.WGMMA_LAYOUT.vector_length):
            out.append((arith.index_cast(i32, idx[0]), arith.addi(arith.index_cast(i32, idx[1]), mu.c(e, i32))))
    return out


def _fixup_fragment(rows, tpad, slots, tiles, np_, b, out_dtype, ctx, accs, ws_ref, cnt_ref, y_ref, f_ref,
                    g_fa, slot_fa, npieces_fa, defer_fa):
    """In-kernel stream-K epilogue of row group ``g`` (its ``rows`` accumulators ``[64, Tpad]``), per thread.

    A thread stores its f32 partial sums to ``ws[slot, tile, k, tid]`` (k: its k-th element) and adds 1 to the
    counter ``cnt[g, tid]`` with ``atom.acq_rel.gpu``; the thread that sees ``npieces - 1`` arrived last (exactly
    one per (g, tid)) reads the other pieces' partial sums (``ld.global.cg``, after its acquire), adds them in slot
    order (the same bits whichever CTA finishes last), multiplies by the factor, rounds to the output dtype and
    stores ``y[token, row]``, then resets its counter to 0. A group held by one CTA (``npieces == 1``) skips the
    workspace and the counter.

    ``defer`` (a run's first group, shared with the previous CTA and ending before the run does): only the
    workspace store happens here; the counter and the sum wait for :func:`_fixup_finish_fragment` at the end of the
    run, so that no release/acquire fence stalls the CTA's weight stream in the middle of its run.
    """
    del ctx
    x = _FixupPtx(tiles, np_, ws_ref, cnt_ref, y_ref, f_ref)
    g, slot, npieces, defer = (v.registers.item() for v in (g_fa, slot_fa, npieces_fa, defer_fa))
    multi = arith.cmpi(arith.CmpIPredicate.sgt, npieces, x.c(1))
    sync = arith.andi(multi, x.eq(defer, x.c(0)))

    own = []  # this thread's values of each tile, in the order of _own_positions
    for acc in accs:
        vals = []
        for reg in acc.registers.flat:
            if isinstance(reg.type, ir.VectorType):
                for e in range(ir.VectorType(reg.type).shape[0]):
                    vals.append(vector.extract(reg, dynamic_position=[], static_position=ir.DenseI64ArrayAttr.get([e])))
            else:
                vals.append(reg)
        own.append(vals)
    pos = _own_positions(tpad)
    n_el = len(pos)
    assert all(len(v) == n_el for v in own), (n_el, [len(v) for v in own])

    tile0 = arith.muli(g, x.c(rows))
    for r in range(rows):
        tile = arith.addi(tile0, x.c(r))
        for k, v in enumerate(own[r]):
            x.store_ws(v, slot, tile, k, n_el, multi)
    old = x.arrive(g, sync)
    last = arith.andi(x.eq(old, arith.subi(npieces, x.c(1))), x.eq(defer, x.c(0)))
    for r in range(rows):
        tile = arith.addi(tile0, x.c(r))
        for k, (v, (row, col)) in enumerate(zip(own[r], pos)):
            total = None
            for s_ in range(slots):
                is_own = x.eq(slot, x.c(s_))
                have = x.lt(x.c(s_), npieces)
                pred = arith.andi(arith.andi(last, have), arith.xori(is_own, x.c(1, x.i1)))
                vs = arith.select(is_own, v, x.load_ws(x.c(s_), tile, k, n_el, pred))
                total = vs if total is None else arith.select(have, arith.addf(total, vs), total)
            x.store_y(total, row, col, tile, b, out_dtype, last)
    x.reset(g, arith.andi(last, multi))
    return None


def _fixup_finish_fragment(rows, tpad, slots, tiles, np_, b, out_dtype, ctx, ws_ref, cnt_ref, y_ref, f_ref,
                           g_fa, npieces_fa, pred_fa):
    """The deferred half of :func:`_fixup_fragment` for group ``g`` (where ``pred``): arrive on the counter and,
    if last, add every piece from the workspace (this CTA's own included) in slot order and store ``y``."""
    del ctx
    x = _FixupPtx(tiles, np_, ws_ref, cnt_ref, y_ref, f_ref)
    g, npieces, pred = (v.registers.item() for v in (g_fa, npieces_fa, pred_fa))
    go = arith.cmpi(arith.CmpIPredicate.ne, pred, x.c(0))
    old = x.arrive(g, go)
    last = arith.andi(go, x.eq(old, arith.subi(npieces, x.c(1))))
    pos = _own_positions(tpad)
    tile0 = arith.muli(g, x.c(rows))
    for r in range(rows):
        tile = arith.addi(tile0, x.c(r))
        for k, (row, col) in enumerate(pos):
            total = None
            for s_ in range(slots):
                have = x.lt(x.c(s_), npieces)
                vs = x.load_ws(x.c(s_), tile, k, len(pos), arith.andi(last, have))
                total = vs if total is None else arith.select(have, arith.addf(total, vs), total)
            x.store_y(total, row, col, tile, b, out_dtype, last)
    x.reset(g, last)
    return None
