"""Helpers for the GPU smoke tests and benchmarks: device facts, timing, copy-bandwidth ceiling, JSON records."""

from __future__ import annotations

import datetime
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

OUT = os.environ.get("OUT", "/tmp/jq_bench")


def device_info() -> dict:
    d = jax.devices()[0]
    return {"device": getattr(d, "device_kind", str(d)), "platform": d.platform, "jax": jax.__version__,
            "python": platform.python_version(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def block(x):
    return jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x)


def time_fn(fn, arg_sets, iters: int = 20, warmup: int = 3, reps: int = 3) -> dict:
    """Median over ``reps`` of the mean time per call of ``iters`` asynchronous calls cycling ``arg_sets``."""
    for i in range(warmup):
        block(fn(*arg_sets[i % len(arg_sets)]))
    per = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = None
        for i in range(iters):
            out = fn(*arg_sets[i % len(arg_sets)])
        block(out)
        per.append((time.perf_counter() - t0) / iters)
    per.sort()
    return {"s": per[len(per) // 2], "min_s": per[0], "max_s": per[-1], "iters": iters, "reps": reps}


def copy_kernel_bandwidth(nbytes: int = 1 << 29, iters: int = 20) -> dict:
    """Device copy ceilings measured now: a Pallas-Triton tile copy and XLA elementwise ``x + 1`` (bf16)."""
    from jax.experimental import pallas as pl
    from jq_kernels._common import triton_params

    n = nbytes // 2
    cols = 8192
    rows = n // cols
    xs = [jnp.asarray(np.random.default_rng(i).standard_normal((rows, cols)), jnp.bfloat16) for i in range(2)]

    def kern(x_ref, o_ref):
        o_ref[...] = x_ref[...]

    def pallas_copy(x):
        return pl.pallas_call(kern, grid=(rows // 64, cols // 512),
                              in_specs=[pl.BlockSpec((64, 512), lambda i, j: (i, j))],
                              out_specs=pl.BlockSpec((64, 512), lambda i, j: (i, j)),
                              out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
                              compiler_params=triton_params(4, 2))(x)

    res = {}
    for name, f in (("pallas_copy", jax.jit(pallas_copy)), ("xla_add", jax.jit(lambda x: x + 1))):
        t = time_fn(f, [(x,) for x in xs], iters=iters)
        res[name] = {"GBps": 2 * rows * cols * 2 / t["s"] / 1e9, **t}
    res["best_GBps"] = max(v["GBps"] for v in res.values() if isinstance(v, dict))
    res["bytes"] = rows * cols * 2
    return res


def save(name: str, record: dict):
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name)
    with open(path, "w") as f:
        json.dump(record, f, indent=1, default=lambda o: str(o))
    return path
