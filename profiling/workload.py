"""What the profilers run: `updates` (N TD3-SBC updates of one variant, each in an NVTX range
"update/actor" or "update/critic") or `kernels` (each Triton kernel of benches/bench_kernels.py in an
NVTX range "kernel/<name>"). Used by nsys_update.sh, ncu_kernels.sh and torch_profile.py.

    python profiling/workload.py updates --variant triton --size paper --updates 20
    python profiling/workload.py kernels --size paper --calls 1 [--variant triton-bf16]
"""
import argparse
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any @triton.jit runs
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benches.bench_kernels import CASES, kernel_call  # noqa: E402
from benches.workloads import (  # noqa: E402
    KERNEL_VARIANTS, SIZES, UPDATE_VARIANTS, UpdateLoop, bench_device, default_size, sync,
)
from fastbdm.nvtx_ranges import phase  # noqa: E402


def run_updates(loop: UpdateLoop, count: int) -> None:
    """count calls of loop.step() (a pair of updates with CUDA graphs), each in a phase named by its
    kind, device synchronised at the end."""
    for _ in range(count):
        kind = "pair" if loop.steps_per_call > 1 else "actor" if loop.actor_next else "critic"
        with phase(f"update/{kind}"):
            loop.step()
    sync(loop.device)


def run_kernels(size, device, calls: int, variant: str = "triton") -> None:
    """Each kernel of benches/bench_kernels.py that has this variant, `calls` times."""
    kernels = [k for k, v in CASES if v == variant]
    if not kernels:
        raise SystemExit(f"kernel variant {variant} does not run on {device} (see the header of pytest benches/)")
    for kernel in kernels:
        fn, setup = kernel_call(kernel, variant, size, device)
        for _ in range(calls):
            args = setup() if setup else ()
            with phase(f"kernel/{kernel}"):
                fn(*args)
    sync(device)


def common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=list(SIZES), default=None, help="default: paper on CUDA, small on CPU")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def setup_from(args):
    torch.set_num_threads(args.threads)
    device = bench_device()
    return SIZES[args.size or default_size(device)], device


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    up = sub.add_parser("updates")
    up.add_argument("--variant", choices=UPDATE_VARIANTS, default="triton" if torch.cuda.is_available() else "torch")
    up.add_argument("--updates", type=int, default=20, help="calls of the update step (pairs with CUDA graphs)")
    up.add_argument("--warmup", type=int, default=4)
    common_args(up)
    ker = sub.add_parser("kernels")
    ker.add_argument("--calls", type=int, default=1)
    ker.add_argument("--variant", choices=KERNEL_VARIANTS, default="triton")
    common_args(ker)
    args = parser.parse_args()
    size, device = setup_from(args)
    if args.what == "updates":
        loop = UpdateLoop(args.variant, size, device)
        run_updates(loop, args.warmup)
        with phase("measured"):
            run_updates(loop, args.updates)
    else:
        run_kernels(size, device, args.calls, args.variant)
    print(f"done: {args.what} on {device}, size {size.name}")


if __name__ == "__main__":
    main()
