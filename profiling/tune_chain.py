"""Shows: the reverse-chain kernel's time per block configuration against its floor, to choose
BLOCK_M / num_warps per precision (halfcheetah shapes, hidden 512, T = 10, DDIM).

The floor is the chain's matmul FLOPs (benches/workloads.kernel_cost) at the rate torch.matmul reaches
on this device for the chain's own layer shape (rows x H) @ (H x H), at the same precision (tf32, or
bf16 for precision "bf16"). On the CPU it runs in the Triton interpreter (small sizes only; the times
say nothing about a GPU).

--seeds S ...: the chain on S seeds stacked (kernels/seed_axis.py; S different denoisers, rows (S, R, n)),
with its programs (S x R / BLOCK_M), programs per SM and the time per seed (the floor scales with S):
the measurement behind docs/PERFORMANCE.md's seed-axis model.

    python profiling/tune_chain.py --rows 1024 2048 --precision tf32 bf16 --block-m 16 32 64 --warps 4 8
    python profiling/tune_chain.py --rows 1024 --seeds 1 2 4 8 --block-m 32 64
"""
import argparse
import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from workload import SIZES, bench_device, sync  # noqa: E402  (first: sets TRITON_INTERPRET on the CPU)
from benches.workloads import ACT_DIM, OBS_DIM, kernel_cost  # noqa: E402
from fastbdm.backends import torch_matmul_precision  # noqa: E402
from fastbdm.kernels.reverse_chain import reverse_chain  # noqa: E402
from fastbdm.networks import Denoiser  # noqa: E402
from fastbdm.schedule import DiffusionSchedule  # noqa: E402


def median_seconds(fn, device, repeats: int) -> float:
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(rows: int, hidden: int, precision: str, device, repeats: int) -> float:
    """FLOP/s of torch.matmul (rows, H) @ (H, H) at this precision (tf32 allowed, or bf16 operands)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(rows, hidden, device=device, dtype=dtype)
    b = torch.randn(hidden, hidden, device=device, dtype=dtype)
    with torch_matmul_precision("ieee" if precision == "ieee" else "tf32"):
        seconds = median_seconds(lambda: a @ b, device, repeats)
    return 2 * rows * hidden * hidden / seconds


def stacked_denoisers(seeds: int, hidden: int, device):
    """Weights of `seeds` different denoisers, each stacked (S, ...) (kernels/seed_axis.py)."""
    nets = [Denoiser(OBS_DIM, ACT_DIM, True, (hidden,) * 2).to(device) for _ in range(seeds)]
    return [torch.stack(ws).detach() for ws in zip(*(net.weights() for net in nets))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="seeds stacked per chain call")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--precision", nargs="+", default=["tf32", "bf16"])
    parser.add_argument("--block-m", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = bench_device()
    torch.manual_seed(0)
    sched = DiffusionSchedule(10).to(device)
    buffers = [sched.sqrt_ab, sched.sqrt_one_minus_ab, sched.sqrt_ab_prev, sched.sqrt_one_minus_ab_prev,
               sched.coef_x0, sched.coef_xt, sched.posterior_std]
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, {sms} SMs, "
          f"hidden {args.hidden}, T {sched.steps}, DDIM, sample prediction")
    print("| seeds | rows | precision | BLOCK_M | warps | programs | per SM | time | per seed | floor | x floor |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for seeds in args.seeds:
        weights = stacked_denoisers(seeds, args.hidden, device)
        for rows in args.rows:
            size = dataclasses.replace(SIZES["paper"], batch=rows // 2, hidden=args.hidden)
            flops = seeds * kernel_cost("reverse_chain", size)["flops"]
            s, z = torch.randn(2, seeds, rows, OBS_DIM, device=device)
            a = torch.randn(seeds, rows, ACT_DIM, device=device)
            for precision in args.precision:
                floor = flops / matmul_rate(rows, args.hidden, precision, device, args.repeats)
                for block_m in args.block_m:
                    for warps in args.warps:
                        def chain():
                            return reverse_chain(weights, s, a, z, *buffers, sched.steps, precision=precision,
                                                 block_m=block_m, num_warps=warps)
                        seconds = median_seconds(chain, device, args.repeats)
                        programs = seeds * -(-rows // block_m)
                        print(f"| {seeds} | {rows} | {precision} | {block_m} | {warps} | {programs} | "
                              f"{programs / sms:.2f} | {seconds * 1e6:.1f} us | {seconds / seeds * 1e6:.1f} us | "
                              f"{floor * 1e6:.1f} us | {seconds / floor:.2f} |", flush=True)


if __name__ == "__main__":
    main()
