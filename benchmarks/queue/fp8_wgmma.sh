#!/bin/bash
# Issue 15 items 1-2, one call (~8 min): the Mosaic GPU fp8 wgmma decode GEMM (jq_kernels/fp8_wgmma.py, never run
# on a GPU; CPU-tested in jax's GPU interpreter and by its CUDA lowering).
# 1. fp8_decode_sweep at the fused Llama-3-8B layer shapes, B = 1, 8, 32: XLA bf16, cuBLASLt w8a8, the bf16 GEMM on
#    E4M3, the Triton decode kernel (the default) and five wgmma configs (grid and stream-K schedules); time per
#    GEMM, weight GB/s, correctness against w8a8 (rel err < 1e-4). A config that fails to compile or hangs (90 s) is
#    recorded as an error.
# 2. The 8B-shaped decode (32 layers, separate buffers, fused q/k/v and gate/up, FP8 lm_head) with the wgmma config
#    most often fastest in step 1, against bf16 and the default FP8 policy (Triton kernel) in the same run.
set -u
nvidia-smi --query-gpu=name --format=csv,noheader
export XLA_FLAGS=--xla_allow_excess_precision=false PYTHONUNBUFFERED=1 PYTHONPATH=.
timeout 240 python3 -m benchmarks.kernel_bench.fp8_decode_sweep --shapes llama3_8b_fused --batches 1,8,32 \
  --every-config --configs "fp8:128,256,0,4,4" \
  --wgmma-configs "1,256,4,0;2,256,4,0;1,512,3,0;sk2:1,256,4,0;sk3:1,256,4,0" \
  --budget-s 190 --out-name fp8_wgmma_sweep.json 2>&1 | grep -v "^W0000\|^I0000" | tail -45
JQ_FP8_WGMMA_CFG=sweep:fp8_wgmma_sweep.json timeout 320 python3 -m benchmarks.llm_decode \
  --out "$OUT/decode_fp8_wgmma_8b.json" --layout separate --passes decode --batches 1,8,32 --budget-s 280 \
  --variants bf16_fused,fp8_wgmma_fused_qhead,fp8_fused_qhead 2>&1 | grep -v "^W0000\|^I0000" | tail -25
