#!/bin/sh
# Regenerates the PTX embedded by model/cuda (run from anywhere; needs nvcc,
# Debian: apt-get install nvidia-cuda-toolkit). compute_80 PTX is JIT-compiled
# by the driver for the GPU at hand (A100 sm_80, H100/H200 sm_90, later);
# bf16 needs sm_80 or newer.
set -eu
cd "$(dirname "$0")"
for f in elementwise attention attention_mma; do
	nvcc -ptx -arch=compute_80 -O3 -std=c++14 -o "$f.ptx" "$f.cu"
done
