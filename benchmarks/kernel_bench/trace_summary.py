"""Where a jitted GPU call's time goes: its device kernels from a ``jax.profiler`` trace, by name and by kind.

``profile_call(fn, args, steps)`` runs ``fn(*args)`` once under ``jax.profiler.trace(create_perfetto_trace=True)``
(after a warm-up call), reads the Perfetto JSON it writes and returns :func:`summarize`'s record: the kernels on the
device's stream threads (``/device:GPU:N``, threads named ``Stream ...``), per call and per ``steps`` (e.g. decode
steps inside the call), with

* ``span_us``: first kernel start to last kernel end; ``busy_us``: the union of the kernel intervals (streams
  overlapping count once); ``idle_us = span_us - busy_us``: the gaps between kernels (launch latency, host work,
  dependencies) -- time no kernel runs;
* ``kinds``: kernel time and count by :func:`kind` (jq's Pallas kernels, cuBLAS or XLA GEMMs, XLA fusions,
  copies);
* ``top``: the kernels with the most time (name, count, total and mean µs).

The trace directory is temporary (raw traces are large); only the summary is kept. Off a GPU the trace has no
device streams and the record says so.

    summary = profile_call(jax.jit(step), (weights, x), steps=32)
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile

__all__ = ["kind", "device_kernels", "summarize", "load_perfetto", "profile_call", "table", "KINDS"]

KINDS = ("pallas_kernel", "xla_gemm", "xla_fusion", "copy", "other")
_KIND_PATTERNS = (  # first match wins: jq's kernels before the GEMM names (XLA's own Triton GEMMs say "gemm")
    ("pallas_kernel", re.compile(r"^jq_|mosaic|pallas|fp8_wgmma|w4a16", re.I)),
    ("xla_gemm", re.compile(r"gemm|gemv|xmma|cutlass|cublas|sm90_|sm80_|nvjet", re.I)),
    ("copy", re.compile(r"memcpy|memset|^copy", re.I)),
    ("xla_fusion", re.compile(r"fusion|^loop_|^input_|^reduce|^transpose|^wrapped_|^concatenate|^dynamic", re.I)),
)


def kind(name: str) -> str:
    """The coarse kind of a kernel by its name (first matching pattern; ``"other"`` if none).

    Example:
      >>> kind("sm90_xmma_gemm_bf16bf16_bf16f32"), kind("jq_fp8_decode_fp8_qx"), kind("loop_add_fusion")
      ('xla_gemm', 'pallas_kernel', 'xla_fusion')
      >>> kind("triton_gemm_dot_3"), kind("jq_w4a16_gemm")    # XLA's Triton GEMM; jq's kernel
      ('xla_gemm', 'pallas_kernel')
    """
    for k, pattern in _KIND_PATTERNS:
        if pattern.search(name):
            return k
    return "other"


_DERIVED_LINES = re.compile(r"^(XLA Ops|XLA Modules|Steps|TensorFlow|Framework|Source|Launch)", re.I)


def _device_threads(trace: dict) -> dict:
    """``{(pid, tid): thread name}`` of the trace's ``/device:GPU:*`` processes."""
    events = trace.get("traceEvents", []) if isinstance(trace, dict) else trace
    devices = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
               and str(e.get("args", {}).get("name", "")).startswith("/device:GPU")}
    return {(e["pid"], e.get("tid")): str(e.get("args", {}).get("name", "")) for e in events
            if e.get("ph") == "M" and e.get("name") == "thread_name" and e.get("pid") in devices}


def device_kernels(trace: dict) -> list[dict]:
    """The complete (``"ph": "X"``) events on the stream threads (``Stream ...``) of the trace's ``/device:GPU:*``
    processes; where a device has no thread so named, its threads other than the derived lines (``XLA Ops``, ``XLA
    Modules``, ``Steps``, ...)."""
    events = trace.get("traceEvents", []) if isinstance(trace, dict) else trace
    threads = _device_threads(trace)
    streams = {k for k, name in threads.items() if name.startswith("Stream")}
    for pid in {p for p, _ in threads}:
        if not any(p == pid for p, _ in streams):
            streams |= {k for k, name in threads.items() if k[0] == pid and not _DERIVED_LINES.match(name)}
    return [e for e in events if e.get("ph") == "X" and (e.get("pid"), e.get("tid")) in streams]


def _union_length(intervals) -> float:
    total, end = 0.0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def summarize(trace: dict, steps: int = 1, top: int = 20) -> dict:
    """Kernel time of one profiled call (see the module docstring); ``*_per_step`` divide by ``steps``.

    Example:
      >>> t = {"traceEvents": [
      ...     {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
      ...     {"ph": "M", "pid": 1, "tid": 7, "name": "thread_name", "args": {"name": "Stream #7(Kernel)"}},
      ...     {"ph": "X", "pid": 1, "tid": 7, "ts": 0, "dur": 4, "name": "nvjet_gemm"},
      ...     {"ph": "X", "pid": 1, "tid": 7, "ts": 6, "dur": 2, "name": "loop_add_fusion"}]}
      >>> s = summarize(t); (s["span_us"], s["busy_us"], s["idle_us"], s["kinds"]["xla_gemm"]["us"])
      (8.0, 6.0, 2.0, 4.0)
    """
    kernels = device_kernels(trace)
    threads = sorted(set(_device_threads(trace).values()))
    if not kernels:
        return {"kernels": 0, "device_threads": threads,
                "note": "no device kernels in the trace (not a GPU run, or the profiler saw none)"}
    spans = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in kernels]
    span = max(e for _, e in spans) - min(s for s, _ in spans)
    busy = _union_length(spans)
    by_name = collections.defaultdict(lambda: [0, 0.0])
    by_kind = {k: {"count": 0, "us": 0.0} for k in KINDS}
    for e in kernels:
        dur = float(e.get("dur", 0))
        by_name[e["name"]][0] += 1
        by_name[e["name"]][1] += dur
        k = by_kind[kind(e["name"])]
        k["count"] += 1
        k["us"] += dur
    for k in by_kind.values():
        k["us_per_step"] = k["us"] / steps
        k["count_per_step"] = k["count"] / steps
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]
    return {"kernels": len(kernels), "kernels_per_step": len(kernels) / steps, "steps": steps,
            "device_threads": threads,
            "span_us": span, "busy_us": busy, "idle_us": span - busy, "span_us_per_step": span / steps,
            "busy_us_per_step": busy / steps, "idle_us_per_step": (span - busy) / steps, "kinds": by_kind,
            "top": [{"name": n[:160], "kind": kind(n), "count": c, "us": t, "mean_us": t / c}
                    for n, (c, t) in ranked]}


def load_perfetto(log_dir: str) -> dict:
    """The newest ``perfetto_trace.json.gz`` under ``log_dir`` (``jax.profiler.trace``'s layout)."""
    paths = sorted(glob.glob(os.path.join(log_dir, "plugins", "profile", "*", "perfetto_trace.json.gz")))
    if not paths:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {log_dir}")
    with gzip.open(paths[-1], "rt") as f:
        return json.load(f)


def profile_call(fn, args, steps: int = 1, top: int = 20) -> dict:
    """:func:`summarize` of one call of ``fn(*args)`` (warmed up first), traced into a temporary directory."""
    import jax

    jax.block_until_ready(fn(*args))
    with tempfile.TemporaryDirectory(prefix="jq_trace_") as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            jax.block_until_ready(fn(*args))
        return summarize(load_perfetto(d), steps=steps, top=top)


def table(summary: dict) -> str:
    """A few lines: span / busy / idle per step, then the kinds."""
    if not summary.get("kernels"):
        return summary.get("note", "no kernels")
    lines = [f"per step: span {summary['span_us_per_step']:.1f} us, kernels busy {summary['busy_us_per_step']:.1f} "
             f"us, idle {summary['idle_us_per_step']:.1f} us, {summary['kernels_per_step']:.0f} kernels"]
    for k, v in summary["kinds"].items():
        if v["count"]:
            lines.append(f"  {k:14s} {v['count_per_step']:6.1f} kernels {v['us_per_step']:9.1f} us")
    return "\n".join(lines)
