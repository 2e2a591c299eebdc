"""benchmarks/kernel_bench/trace_summary.py: device kernels of a jax.profiler Perfetto trace, busy vs idle."""

import gzip
import json

import pytest

from benchmarks.kernel_bench import trace_summary as T


def _trace():
    """A GPU trace as jax writes it: a host process (its events are not kernels), the device process with two
    stream threads (one overlapping the other) and a derived "XLA Ops" thread (not a stream)."""
    meta = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "M", "pid": 1, "tid": 1, "name": "thread_name", "args": {"name": "python3"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "pid": 2, "tid": 7, "name": "thread_name", "args": {"name": "Stream #7(Kernel)"}},
        {"ph": "M", "pid": 2, "tid": 9, "name": "thread_name", "args": {"name": "Stream #9(Kernel)"}},
        {"ph": "M", "pid": 2, "tid": 3, "name": "thread_name", "args": {"name": "XLA Ops"}},
    ]
    x = [
        {"ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 100, "name": "python call"},
        {"ph": "X", "pid": 2, "tid": 3, "ts": 10, "dur": 50, "name": "fusion.1"},
        {"ph": "X", "pid": 2, "tid": 7, "ts": 10, "dur": 20, "name": "sm90_xmma_gemm_bf16"},   # 10-30
        {"ph": "X", "pid": 2, "tid": 9, "ts": 25, "dur": 10, "name": "jq_fp8_decode_fp8_qx"},  # 25-35: overlaps
        {"ph": "X", "pid": 2, "tid": 7, "ts": 40, "dur": 5, "name": "loop_add_fusion"},        # gap 35-40
        {"ph": "X", "pid": 2, "tid": 7, "ts": 50, "dur": 10, "name": "sm90_xmma_gemm_bf16"},   # gap 45-50
    ]
    return {"traceEvents": meta + x}


def test_only_stream_kernels_of_the_device_count():
    names = [e["name"] for e in T.device_kernels(_trace())]
    assert names == ["sm90_xmma_gemm_bf16", "jq_fp8_decode_fp8_qx", "loop_add_fusion", "sm90_xmma_gemm_bf16"]


def test_a_device_without_stream_named_threads_falls_back_to_its_non_derived_threads():
    events = [e for e in _trace()["traceEvents"] if e.get("tid") != 9]
    for e in events:
        if e.get("tid") == 7 and e.get("ph") == "M":
            e["args"] = {"name": "Compute 7"}
    names = [e["name"] for e in T.device_kernels({"traceEvents": events})]
    assert names == ["sm90_xmma_gemm_bf16", "loop_add_fusion", "sm90_xmma_gemm_bf16"]  # not XLA Ops' fusion.1
    assert T.summarize({"traceEvents": events})["device_threads"] == ["Compute 7", "XLA Ops"]


def test_busy_is_the_union_of_kernel_intervals_and_idle_the_gaps():
    s = T.summarize(_trace(), steps=2)
    assert (s["span_us"], s["busy_us"], s["idle_us"]) == (50.0, 40.0, 10.0)  # 10-60; busy 10-35, 40-45, 50-60
    assert s["span_us_per_step"] == 25.0 and s["kernels_per_step"] == 2.0
    assert s["kinds"]["xla_gemm"] == {"count": 2, "us": 30.0, "us_per_step": 15.0, "count_per_step": 1.0}
    assert s["kinds"]["pallas_kernel"]["us"] == 10.0 and s["kinds"]["xla_fusion"]["us"] == 5.0
    assert [t["name"] for t in s["top"]] == ["sm90_xmma_gemm_bf16", "jq_fp8_decode_fp8_qx", "loop_add_fusion"]
    assert s["top"][0]["count"] == 2 and s["top"][0]["mean_us"] == 15.0
    assert "idle 5.0 us" in T.table(s)


@pytest.mark.parametrize("name,want", [("nvjet_hsh_128x64", "xla_gemm"), ("mosaic_gpu_kernel", "pallas_kernel"),
                                       ("input_reduce_fusion", "xla_fusion"), ("Memcpy DtoD", "copy"),
                                       ("rsqrt_kernel", "other")])
def test_kind_of_kernel_names(name, want):
    assert T.kind(name) == want


def test_a_trace_without_device_kernels_says_so(tmp_path):
    s = T.summarize({"traceEvents": _trace()["traceEvents"][:2]})
    assert s["kernels"] == 0 and "no device kernels" in s["note"] and T.table(s) == s["note"]
    run = tmp_path / "plugins" / "profile" / "2026_12_08"
    run.mkdir(parents=True)
    with gzip.open(run / "perfetto_trace.json.gz", "wt") as f:
        json.dump(_trace(), f)
    assert T.summarize(T.load_perfetto(str(tmp_path)))["busy_us"] == 40.0
    with pytest.raises(FileNotFoundError, match="perfetto_trace"):
        T.load_perfetto(str(tmp_path / "none"))


def test_profile_call_traces_a_real_call():
    """jax.profiler on this machine: a CPU run has no device streams, so the record carries the note."""
    import jax
    import jax.numpy as jnp

    s = T.profile_call(jax.jit(lambda x: jnp.tanh(x @ x.T)), (jnp.ones((64, 64)),), steps=1)
    assert s["kernels"] == 0 if jax.default_backend() == "cpu" else s["kernels"] > 0
