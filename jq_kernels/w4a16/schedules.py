"""The decode GEMM's Mosaic GPU kernels: the grid and stream-K schedules (one warpgroup per CTA, or warp-specialized),
each streaming 64-row weight tiles through a TMA pipeline, decoding them in registers (:mod:`jq_kernels.w4a16.decode`)
and multiplying them by the token tile ``x^T`` on the tensor cores (swap-AB: the weights are the wgmma M side).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from jq_kernels.w4a16.decode import decode_a
from jq_kernels.w4a16.fixup import fixup_call, fixup_finish_call
from jq_kernels.w4a16.layout import PackedW4
from jq_kernels.w4a16.plan import MosaicConfig, plan

__all__ = ["mosaic_call"]


def mosaic_call(xs, pw: PackedW4, cfg: MosaicConfig, b: int, factor=None, out_dtype=jnp.bfloat16):
    """The Mosaic kernel alone: tokens ``[Tpad, Kp]`` -> f32 partial sums ``[slots, Np, Tpad]``; with
    ``cfg.epilogue == "kernel"``: ``y [B, Np]`` (``out_dtype``, scaled by ``factor``, default ``pw.factor``)."""
    p = plan(pw, b, cfg)
    if cfg.schedule == "grid":
        return _grid_kernel(xs, pw, p)
    if cfg.epilogue == "kernel":
        f = jnp.reshape(jnp.asarray(pw.factor if factor is None else factor, jnp.float32), (1,))
        return _stream_k_kernel(xs, pw, p, ws=False, fused=(b, jnp.dtype(out_dtype), f))
    return _stream_k_kernel(xs, pw, p, ws=cfg.schedule == "ws")


def _x_spec(p, index_map):
    return plgpu.BlockSpec((p["tpad"], p["bk"]), index_map,
                           transforms=(plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128)))


def _grid_kernel(xs, pw, p):
    fmt, rows, bk, kc, sgroups = pw.fmt, p["rows"], p["bk"], p["kc"], p["sgroups"]
    split, tpad = p["split"], p["tpad"]
    steps = p["n_steps"] // split

    def w4a16_grid(codes_g, scales_g, x_g, out_g):
        cta = lax.axis_index("n")
        ks = lax.axis_index("s")

        def scoped(*accs):
            def step(_, c_smem, s_smem, x_smem):
                for r in range(rows):
                    for j in range(bk // 64):
                        cref = c_smem.at[r, pl.ds(4 * j, 4)]
                        sref = (s_smem.at[r, pl.ds(4 * j, 4)] if fmt == "nvfp4"
                                else s_smem.at[r, pl.ds((64 * j) // 128, 1)])
                        a = decode_a(fmt, cref, sref, None, pw.dtype)
                        plgpu.wgmma(accs[r], a, plgpu.transpose_ref(x_smem.at[:, pl.ds(64 * j, 64)], (1, 0)))
                plgpu.wgmma_wait(0)

            plgpu.emit_pipeline(
                step, grid=(steps,),
                in_specs=[
                    plgpu.BlockSpec((rows, kc, 128), lambda i: (0, i, 0)),
                    plgpu.BlockSpec((rows, sgroups, 32), lambda i: (0, i, 0)),
                    _x_spec(p, lambda i: (0, i)),
                ],
                max_concurrent_steps=min(p["stages"], steps),
            )(codes_g.at[pl.ds(cta * rows, rows), pl.ds(ks * (steps * kc), steps * kc)],
              scales_g.at[pl.ds(cta * rows, rows), pl.ds(ks * (steps * sgroups), steps * sgroups)],
              x_g.at[:, pl.ds(ks * (steps * bk), steps * bk)])
            for r in range(rows):
                out_g[ks, pl.ds((cta * rows + r) * 64, 64), :] = accs[r][...]

        pl.run_scoped(scoped, *([plgpu.ACC((64, tpad), jnp.float32)] * rows))

    return plgpu.kernel(
        w4a16_grid, out_type=jax.ShapeDtypeStruct((split, p["np_"], tpad), jnp.float32), grid=(p["groups"], split),
        grid_names=("n", "s"),
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Lane),
    )(pw.codes, pw.scales, xs)


def _stream_k_kernel(xs, pw, p, ws: bool, fused=None):
    """Stream-K schedule: the ``total = groups * n_steps`` (row group, K step) pairs, in row-group-major order,
    are cut into ``ctas`` equal contiguous runs of ``per`` steps (the last may be shorter), one per CTA, so every
    SM streams the same number of weight bytes whatever the shape. A CTA flushes its accumulators when a row group
    ends or its run ends; the j-th CTA touching a row group writes partial-sum slot j, and the CTA holding the
    group's first step zero-fills the slots no CTA uses for that group.

    ``ws``: warp-specialized pipeline (``plgpu.emit_pipeline_warp_specialized``): warpgroup ``rows`` only issues
    the TMA copies, warpgroups ``0..rows-1`` each decode and multiply one 64-row tile of the group and release
    the SMEM slot when their wgmma is done. Otherwise one warpgroup per CTA does everything (``emit_pipeline``).

    ``fused = (b, out_dtype, factor [1] f32)``: in-kernel epilogue (:mod:`jq_kernels.w4a16.fixup`); the kernel returns
    ``y [b, Np]`` in ``out_dtype`` and its f32 workspace (unused by the caller).
    """
    fmt, rows, bk, kc, sgroups = pw.fmt, p["rows"], p["bk"], p["kc"], p["sgroups"]
    tpad, per, ctas, slots, total, ns = p["tpad"], p["per"], p["ctas"], p["slots"], p["total"], p["n_steps"]
    static_len = total % per == 0
    ntile = 1 if ws else rows  # tiles (accumulators) per warpgroup

    def zeros():
        return plgpu.layout_cast(jnp.zeros((64, tpad), jnp.float32), plgpu.Layout.WGMMA)

    def w4a16_stream_k(codes_g, scales_g, x_g, *refs):
        if fused is not None:
            f_g, y_g, ws_g = refs
            # one counter per (row group, thread), zeroed for every call (Pallas' GMEM semaphore scratch)
            cnt = pl.get_global(plgpu.SemaphoreType.REGULAR((p["groups"] * 128,)))
        else:
            (out_g,) = refs
        c = lax.axis_index("n")
        start = c * per
        n = per if static_len else jnp.minimum(total - start, per)

        def gk(i):
            t = start + i
            return lax.div(t, ns), lax.rem(t, ns)

        def body(idx, c_smem, s_smem, x_smem, accs):
            (i,) = idx
            g, kk = gk(i)

            def mm(acc_refs):
                for r in range(ntile):
                    for j in range(bk // 64):
                        if ws:
                            cref = c_smem.at[:, pl.ds(4 * j, 4)]
                            sref = (s_smem.at[:, pl.ds(4 * j, 4)] if fmt == "nvfp4"
                                    else s_smem.at[:, pl.ds((64 * j) // 128, 1)])
                        else:
                            cref = c_smem.at[r, pl.ds(4 * j, 4)]
                            sref = (s_smem.at[r, pl.ds(4 * j, 4)] if fmt == "nvfp4"
                                    else s_smem.at[r, pl.ds((64 * j) // 128, 1)])
                        a = decode_a(fmt, cref, sref, "wg" if ws else None, pw.dtype)
                        plgpu.wgmma(acc_refs[r], a, plgpu.transpose_ref(x_smem.at[:, pl.ds(64 * j, 64)], (1, 0)))

            accs = pl.run_state(mm)(tuple(plgpu.ACC.init(a) for a in accs))
            flush = jnp.logical_or(kk == ns - 1, i == n - 1)
            first = lax.div(g * ns, per)  # CTA holding the group's first step
            slot = c - first
            npieces = lax.div(g * ns + ns - 1, per) - first + 1

            def do_flush(accs):
                if fused is not None:
                    # a group shared with the previous CTA that ends before this run does (only the run's first
                    # group can): store the partial sums now, synchronize at the end of the run (fixup_finish)
                    defer = jnp.logical_and(npieces > 1, i < n - 1).astype(jnp.int32)
                    fixup(tuple(accs), ws_g, cnt, y_g, f_g, g, slot, npieces, defer)
                    return tuple(zeros() for _ in range(ntile))
                for r in range(ntile):
                    tile = g * rows + (lax.axis_index("wg") if ws else r)
                    out_g[slot, pl.ds(tile * 64, 64), :] = accs[r]
                    for s_ in range(1, slots):
                        @pl.when(jnp.logical_and(slot == 0, npieces <= s_))
                        def _zero():
                            out_g[s_, pl.ds(tile * 64, 64), :] = zeros()
                return tuple(zeros() for _ in range(ntile))

            return lax.cond(flush, do_flush, lambda a: a, accs)

        def idx_map(i):
            g, kk = gk(i)
            return g, kk, 0

        in_specs = [
            plgpu.BlockSpec((rows, kc, 128), idx_map),
            plgpu.BlockSpec((rows, sgroups, 32), idx_map),
            _x_spec(p, lambda i: (0, gk(i)[1])),
        ]
        if ws:
            def ctx(run):
                run(tuple(zeros() for _ in range(ntile)))

            plgpu.emit_pipeline_warp_specialized(
                body, grid=(n,), memory_registers=40, in_specs=in_specs,
                max_concurrent_steps=max(2, min(p["stages"], per)), wg_axis="wg", num_compute_wgs=rows,
                compute_context=ctx,
            )(codes_g, scales_g, x_g)
        else:
            plgpu.emit_pipeline(body, grid=(n,), in_specs=in_specs, max_concurrent_steps=min(p["stages"], per),
                                init_carry=tuple(zeros() for _ in range(ntile)))(codes_g, scales_g, x_g)
        if fused is not None:  # the deferred fix-up of the run's first group (see do_flush)
            g0 = lax.div(start, ns)
            first0 = lax.div(g0 * ns, per)
            np0 = lax.div(g0 * ns + ns - 1, per) - first0 + 1
            deferred = jnp.logical_and(np0 > 1, g0 * ns + ns - 1 < start + n - 1).astype(jnp.int32)
            fixup_finish(ws_g, cnt, y_g, f_g, g0, np0, deferred)

    extra = dict(num_threads=rows + 1, thread_name="wg") if ws else {}
    if fused is not None:
        fb, fdt, fvec = fused
        fixup = fixup_call(ntile, tpad, slots, p["tiles"], p["np_"], fb, fdt)
        fixup_finish = fixup_finish_call(ntile, tpad, slots, p["tiles"], p["np_"], fb, fdt)
        out_type = (jax.ShapeDtypeStruct((fb, p["np_"]), fdt),
                    jax.ShapeDtypeStruct((slots * p["np_"] * tpad,), jnp.float32))
        args = (pw.codes, pw.scales, xs, fvec)
    else:
        out_type = jax.ShapeDtypeStruct((slots, p["np_"], tpad), jnp.float32)
        args = (pw.codes, pw.scales, xs)
    return plgpu.kernel(
        w4a16_stream_k, out_type=out_type, grid=(ctas,), grid_names=("n",),
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Lane), **extra,
    )(*args)
