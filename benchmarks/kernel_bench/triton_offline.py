"""Compile a Pallas-Triton kernel for sm_90 on a CPU machine: the Triton half of the compilation that the CUDA lowering
tests (``tests/kernels/test_lowering.py``) do not reach, plus register / spill / loop-instruction counts.

Two steps in two Python environments (pip's ``triton`` is not a jq dependency and must not shadow jaxlib's):

1. project env -- the TTIR of the W4A16 prefill kernel, captured from Pallas' lowering for CUDA::

     PYTHONPATH=. python -m benchmarks.kernel_bench.triton_offline dump --fmt nvfp4 \\
         --config m128n128k64w8p4-swap-ptx --shape 1024x1024 --m 512 --out /tmp/k.ttir

2. a venv with ``pip install triton`` (3.9.0 here) -- Triton's TTIR passes (which ``triton.compile`` skips for an IR
   file and XLA runs), PTX for ``cuda:90``, ``ptxas -v`` and the K loop's SASS instructions::

     /tmp/tvenv/bin/python benchmarks/kernel_bench/triton_offline.py compile /tmp/k.ttir --num-warps 8 --num-stages 4

XLA bundles its own Triton, so a clean compile here is evidence, not proof. Results: ``docs/w4a16_prefill.md``.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import subprocess
import sys


def dump(fmt: str, config: str, n: int, k: int, m: int, out: str) -> str:
    """The prefill kernel's TTIR (text) for a ``[n, k]`` weight and ``m`` tokens, written to ``out``."""
    import jax
    import jax.numpy as jnp
    from jax._src.pallas.triton import pallas_call_registration as reg

    from jq import qtensor
    from jq.config import QuantizerSpec
    from jq_kernels.w4a16 import pack_w4
    from jq_kernels.w4a16.prefill import PrefillConfig, w4a16_prefill_matmul

    specs = {"nvfp4": QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, "type": "dynamic", "scale_bits": (4, 3)}),
             "int4": QuantizerSpec(num_bits=4, block_sizes={-1: 128})}
    qt = qtensor.quantize(jax.random.normal(jax.random.key(0), (n, k), jnp.float32), specs[fmt])
    pw = pack_w4(qt.data, qt.scale, qt.global_scale, fmt=fmt, shape=qt.shape)
    cfg = PrefillConfig.from_name(config)
    captured = []
    lower = reg.lowering.lower_jaxpr_to_triton_module

    def capture(*a, **kw):
        res = lower(*a, **kw)
        captured.append(res.module.operation.get_asm(enable_debug_info=False))
        return res

    reg.lowering.lower_jaxpr_to_triton_module = capture
    try:
        x = jax.ShapeDtypeStruct((m, k), jnp.bfloat16)
        jax.jit(lambda x, p: w4a16_prefill_matmul(x, p, cfg=cfg, interpret=False)).trace(x, pw).lower(
            lowering_platforms=("cuda",))
    finally:
        reg.lowering.lower_jaxpr_to_triton_module = lower
    with open(out, "w") as f:
        f.write(captured[-1])
    return out


def loop_counts(sass: str) -> tuple[int, collections.Counter]:
    """Instructions between the largest backward branch and its target (the K loop) and their opcodes."""
    ins = [(int(a, 16), t.strip()) for a, t in re.findall(r"/\*([0-9a-f]{4})\*/\s+([^;]*);", sass)]
    best = None
    for addr, txt in ins:
        t = re.search(r"BRA\s.*?0x([0-9a-f]+)", txt)
        if t and int(t.group(1), 16) < addr and (best is None or addr - int(t.group(1), 16) > best[1] - best[0]):
            best = (int(t.group(1), 16), addr)
    if best is None:
        return 0, collections.Counter()
    body = [t for a, t in ins if best[0] <= a <= best[1]]
    return len(body), collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0] for t in body)


def compile_ttir(path: str, num_warps: int, num_stages: int) -> dict:
    """Triton's TTIR passes, PTX for cuda:90, ``ptxas -v`` and the loop's SASS counts (run with pip's triton)."""
    import triton
    from triton._C.libtriton import ir, passes
    from triton.backends.compiler import GPUTarget

    ctx = ir.context()
    ir.load_dialects(ctx)
    mod = ir.parse_mlir_module(path, ctx)
    pm = ir.pass_manager(ctx)
    for add in (passes.common.add_inliner, passes.common.add_canonicalizer, passes.ttir.add_combine,
                passes.ttir.add_reorder_broadcast, passes.common.add_cse, passes.common.add_symbol_dce,
                passes.ttir.add_loop_unroll):
        add(pm)
    pm.run(mod, "make_ttir")
    opt = path + ".opt.ttir"
    with open(opt, "w") as f:
        f.write(str(mod))
    kern = triton.compile(opt, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})
    ptx, ttgir = kern.asm["ptx"], kern.asm["ttgir"]
    with open(path + ".ptx", "w") as f:
        f.write(ptx)
    rec = {"shared_bytes": kern.metadata.shared, "wgmma": ptx.count("wgmma.mma_async"),
           "wgmma_pendings": re.findall(r"pendings = (\d+)", ttgir)}
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for ptxas in sorted(glob.glob(os.path.join(bindir, "ptxas*")), reverse=True):  # the newest PTX ISA first
        r = subprocess.run([ptxas, "-arch=sm_90a", "-v", path + ".ptx", "-o", path + ".cubin"], capture_output=True,
                           text=True, check=False)
        if r.returncode == 0:
            regs = re.search(r"Used (\d+) registers", r.stderr)
            spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", r.stderr)
            rec.update(ptxas=os.path.basename(ptxas), registers=int(regs.group(1)) if regs else None,
                       spill_store_bytes=int(spill.group(1)) if spill else None)
            sass = subprocess.run([os.path.join(bindir, "cuobjdump"), "-sass", path + ".cubin"], capture_output=True,
                                  text=True, check=False).stdout
            n, ops = loop_counts(sass)
            rec.update(loop_instructions=n, loop_top_ops=dict(ops.most_common(12)))
            break
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--fmt", default="nvfp4", choices=("nvfp4", "int4"))
    d.add_argument("--config", default="m128n128k64w8p4")
    d.add_argument("--shape", default="1024x1024", help="NxK")
    d.add_argument("--m", type=int, default=512)
    d.add_argument("--out", required=True)
    c = sub.add_parser("compile")
    c.add_argument("ttir")
    c.add_argument("--num-warps", type=int, default=8)
    c.add_argument("--num-stages", type=int, default=4)
    a = ap.parse_args(argv)
    if a.cmd == "dump":
        n, k = (int(v) for v in a.shape.split("x"))
        print(dump(a.fmt, a.config, n, k, a.m, a.out))
    else:
        print(compile_ttir(a.ttir, a.num_warps, a.num_stages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
