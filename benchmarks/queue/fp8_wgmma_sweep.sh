#!/bin/bash
# Issue 15 items 1-2: the Mosaic GPU fp8 wgmma decode GEMM (jq_kernels/fp8_wgmma.py, never run on a GPU) against
# XLA bf16, cuBLASLt w8a8 and the Pallas-Triton decode kernel (default and fused-output configs) at the fused
# Llama-3-8B layer shapes, B = 1, 8, 32: time per GEMM, weight GB/s, correctness against w8a8 (rel err < 1e-4).
# A config that fails to compile or hangs (90 s) is recorded as an error; the others run.
set -u
nvidia-smi --query-gpu=name --format=csv,noheader
XLA_FLAGS=--xla_allow_excess_precision=false PYTHONUNBUFFERED=1 PYTHONPATH=. timeout 570 \
  python3 -m benchmarks.kernel_bench.fp8_decode_sweep --shapes llama3_8b_fused --batches 1,8,32 --every-config \
  --configs "fp8:128,256,0,4,4;fp8-fo:128,256,0,4,4" --budget-s 470 --out-name fp8_wgmma_sweep.json 2>&1 \
  | grep -v "^W0000\|^I0000" | tail -80
