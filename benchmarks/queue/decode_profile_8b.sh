#!/bin/bash
# Issue 15 items 1 and 3 (explain the limit with measurements): where the 8B-shaped decode step's time goes at
# B = 1 -- each variant's decode timed as in llm_decode, then one more call traced with jax.profiler: device kernels
# per step by kind (cuBLAS GEMMs, jq's Pallas/Mosaic kernels, XLA fusions), their time, and the idle time between
# kernels (benchmarks/kernel_bench/trace_summary.py; only the summary is kept) (~4 min).
set -u
nvidia-smi --query-gpu=name --format=csv,noheader
XLA_FLAGS=--xla_allow_excess_precision=false PYTHONUNBUFFERED=1 PYTHONPATH=. timeout 570 \
  python3 -m benchmarks.llm_decode --out "$OUT/decode_profile_8b.json" --layout separate --passes decode \
  --batches 1 --budget-s 480 --profile \
  --variants bf16_fused,fp8_fused_qhead,int4_fused_qhead,nvfp4_fused_qhead 2>&1 | grep -v "^W0000\|^I0000" | tail -50
