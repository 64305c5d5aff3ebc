#!/usr/bin/env bash
# Shows: an Nsight Systems timeline of N TD3-SBC updates (CUDA kernels, memcpys, host syncs, CUDA graph launches, and the NVTX ranges update/actor, update/critic and fastbdm's phases); open profiling/out/update_<variant>_<size>.nsys-rep in `nsys-ui`, or summarise it with `nsys stats <file>`.
# Usage: profiling/nsys_update.sh [variant: research|torch|triton|triton+graphs] [small|paper] [updates]
# (needs nsys on PATH; on a machine without a GPU only the CPU side and NVTX ranges are recorded)
set -euo pipefail
cd "$(dirname "$0")/.."
variant="${1:-triton}"; size="${2:-paper}"; updates="${3:-20}"
command -v nsys >/dev/null || { echo "nsys (Nsight Systems) not found on PATH" >&2; exit 1; }
mkdir -p profiling/out
out="profiling/out/update_${variant//+/_}_${size}"
nsys profile --trace=cuda,nvtx,osrt --cuda-graph-trace=node --force-overwrite=true -o "$out" \
    python profiling/workload.py updates --variant "$variant" --size "$size" --updates "$updates"
echo "report: ${out}.nsys-rep (nsys-ui, or nsys stats ${out}.nsys-rep)"
