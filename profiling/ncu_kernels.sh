#!/usr/bin/env bash
# Shows: Nsight Compute metrics (--set full: roofline, memory, occupancy, stall reasons) of every Triton kernel of the BDM hot path, one launch per kernel at the paper size; open profiling/out/kernels_<size>.ncu-rep with `ncu-ui`, or print it with `ncu --import <file> --page details`.
# Usage: profiling/ncu_kernels.sh [small|paper]   (needs a CUDA device and ncu on PATH; may need root or
# NVreg_RestrictProfilingToAdminUsers=0 for GPU counters)
set -euo pipefail
cd "$(dirname "$0")/.."
size="${1:-paper}"
command -v ncu >/dev/null || { echo "ncu (Nsight Compute) not found on PATH" >&2; exit 1; }
mkdir -p profiling/out
# Triton kernels are named after their @triton.jit functions: _<name>_kernel (torch/cuBLAS kernels do not match).
ncu --set full --nvtx --kernel-name 'regex:^_.*_kernel$' --force-overwrite \
    -o "profiling/out/kernels_${size}" \
    python profiling/workload.py kernels --size "$size" --calls 1
echo "report: profiling/out/kernels_${size}.ncu-rep (ncu-ui, or ncu --import ... --page details)"
