#!/bin/bash
# Issue 15 items 1-2: 8B-shaped decode (32 layers, separate per-layer buffers, q/k/v and gate/up fused, quantized
# lm_head) with the Triton FP8 decode kernel's fused-output config (never run on a GPU), against bf16 and the
# default FP8 policy in the same run (~5 min).
set -u
nvidia-smi --query-gpu=name --format=csv,noheader
JQ_FP8_DECODE_CFG="${JQ_FP8_DECODE_CFG:-fp8-fo:128,256,0,4,4}" XLA_FLAGS=--xla_allow_excess_precision=false \
  PYTHONUNBUFFERED=1 PYTHONPATH=. timeout 570 python3 -m benchmarks.llm_decode --out "$OUT/decode_fp8_fo.json" \
  --layout separate --passes decode --batches 1,8,32 --budget-s 480 \
  --variants bf16_fused,fp8_fused_qhead,fp8_kernel_fused_qhead 2>&1 | grep -v "^W0000\|^I0000" | tail -40
