"""Kernels one update pair (the critic-only update and the critic-and-actor update of TD3's policy delay,
batch sampling and metric recording included: what one CUDA graph replay of the trainer holds) launches,
per phase: counted on any device by fastbdm.launch_count's rule (ATen ops + Triton launches), and on CUDA
also by torch.profiler (--cuda).

    python profiling/launch_count.py --algo td3sbc --backend triton [--size small] [--json out.json]
    python profiling/launch_count.py --all              # td3sbc triton (one and two streams) and torch, rebrac, td3bc
"""
import argparse
import json
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any @triton.jit runs
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benches.workloads import SIZES, UpdateLoop, bench_device  # noqa: E402
from fastbdm.launch_count import LaunchCounter, cuda_kernels  # noqa: E402

CASES = (("td3sbc", "triton"), ("td3sbc", "triton+streams"), ("td3sbc", "torch"), ("rebrac", "triton"), ("rebrac", "torch"), ("td3bc", "triton"),
         ("td3bc", "torch"))
WARMUP_PAIRS = 2  # optimizer state and the monitor's index tensors exist before the counted pair


def count_pair(algo: str, backend: str, size, device, cuda: bool = False) -> dict:
    """One eager update pair of `algo` with `backend` (an UpdateLoop eager variant: torch, triton,
    triton+streams) at `size` after WARMUP_PAIRS pairs: {"launches" (the rule's count), "serial" (those one
    after another with the variant's streams), "phases" {phase: {aten, triton, total}}, "syncs", and with
    cuda "cuda" (the profiler's kernels, memcpy, memset)}."""
    loop = UpdateLoop(backend, size, device, algo=algo)
    assert loop.steps_per_call == 2, "the eager step of UpdateLoop is one update pair"
    for _ in range(WARMUP_PAIRS):
        loop.step()
    with LaunchCounter() as counter:
        loop.step()
    result = {"algo": algo, "backend": backend, "size": size.name, "launches": counter.total(),
              "serial": counter.serial(), "phases": counter.by_phase(), "syncs": counter.syncs}
    if cuda:
        result["cuda"] = cuda_kernels(loop.step)
    return result


def count_seed_pair(seeds: int, size, device, backend: str = "triton") -> int:
    """One SeedBatchRunner pair of `seeds` td3sbc agents (SeedBatch.pair_step, the trainer's stacked monitors:
    one fused record on the triton backend) at `size` after WARMUP_PAIRS pairs: the rule's launches."""
    from benches.workloads import ACT_DIM, OBS_DIM, config, synthetic_buffer
    from fastbdm import TD3SBC
    from fastbdm.graphs import SeedBatchRunner
    from fastbdm.monitor import UpdateMonitor
    from fastbdm.seed_batch import SeedBatch

    torch.manual_seed(0)
    agents = [TD3SBC(OBS_DIM, ACT_DIM, config=config(size, backend), device=device) for _ in range(seeds)]
    batch = SeedBatch(agents, [torch.Generator(device).manual_seed(seed) for seed in range(seeds)])
    monitors = [UpdateMonitor(device, fused=backend == "triton") for _ in range(seeds)]
    runner = SeedBatchRunner(batch, synthetic_buffer(size, device), monitors, size.batch)
    for _ in range(WARMUP_PAIRS):
        runner.pair()
    with LaunchCounter() as counter:
        runner.pair()
    return counter.total()


def table(results) -> str:
    """Markdown: one row per case, the total, the serial path's and each phase's launches (aten + triton)."""
    phases = list(dict.fromkeys(p for r in results for p in r["phases"]))
    head = ["algo", "backend", "launches / pair", "serial / pair", *phases]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results:
        cells = [r["algo"], r["backend"], str(r["launches"]), str(r["serial"])]
        for p in phases:
            row = r["phases"].get(p)
            cells.append("" if row is None else f"{row['total']}" + (f" ({row['triton']} T)" if row["triton"] else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", default="td3sbc", choices=("td3sbc", "rebrac", "td3bc"))
    parser.add_argument("--backend", default="triton", choices=("triton", "triton+streams", "torch"),
                        help="triton+streams: the update's independent work on two CUDA streams")
    parser.add_argument("--all", action="store_true", help="every case of CASES")
    parser.add_argument("--size", choices=list(SIZES), default="small",
                        help="network and batch size (the count does not depend on it below the multi-tensor limits)")
    parser.add_argument("--cuda", action="store_true", help="also count with torch.profiler (CUDA only)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = bench_device()
    if args.cuda and device.type != "cuda":
        raise SystemExit("--cuda counts with torch.profiler on a CUDA device; none here")
    cases = CASES if args.all else [(args.algo, args.backend)]
    results = [count_pair(algo, backend, SIZES[args.size], device, args.cuda) for algo, backend in cases]
    print(table(results))
    for r in results:
        if "cuda" in r:
            print(f"{r['algo']} {r['backend']}: torch.profiler on CUDA: {r['cuda']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
