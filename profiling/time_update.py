"""Shows: the wall time of single updates of one algorithm (batch sampling included, device synchronised
after each), median over N updates, split into actor and non-actor steps (the research variant) or timed by pairs
(the trainer's eager step, TD3SBC.update_pair; per update: half a pair); prints one summary line with
the process's CPU time / wall time (below the thread count: other processes took the cores).

    python profiling/time_update.py --variant torch --size paper --updates 50 --threads 1
    python profiling/time_update.py --algo rebrac --size paper --batch 256 --updates 200
"""
import argparse
import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from workload import UPDATE_VARIANTS, UpdateLoop, common_args, setup_from, sync  # noqa: E402
from benches.workloads import BASELINE_VARIANTS  # noqa: E402
from fastbdm.presets import ALGOS  # noqa: E402


def time_updates(loop: UpdateLoop, count: int) -> dict:
    """{"actor": [s, ...], "other": [s, ...]}: seconds per update by kind; a CUDA-graph pair (one
    call) counts as two updates of kind "pair" at half its time."""
    times = {"actor": [], "other": [], "pair": []}
    for _ in range(count):
        kind = "pair" if loop.steps_per_call > 1 else "actor" if loop.actor_next else "other"
        start = time.perf_counter()
        loop.step()
        sync(loop.device)
        times[kind] += [(time.perf_counter() - start) / loop.steps_per_call] * loop.steps_per_call
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=ALGOS, default="td3sbc")
    parser.add_argument("--variant", choices=list(dict.fromkeys(UPDATE_VARIANTS + BASELINE_VARIANTS)), default="torch",
                        help=f"td3sbc: {', '.join(UPDATE_VARIANTS)}; baselines: {', '.join(BASELINE_VARIANTS)}")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the size's)")
    parser.add_argument("--updates", type=int, default=50, help="calls of the update step (pairs with CUDA graphs)")
    parser.add_argument("--warmup", type=int, default=4)
    common_args(parser)
    args = parser.parse_args()
    size, device = setup_from(args)
    if args.batch is not None:
        size = dataclasses.replace(size, batch=args.batch)
    loop = UpdateLoop(args.variant, size, device, algo=args.algo)
    time_updates(loop, args.warmup)
    wall, cpu = time.perf_counter(), time.process_time()
    times = time_updates(loop, args.updates)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    ms = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    every = [t for ts in times.values() for t in ts]
    line = (f"{args.algo} {args.variant} size={size.name} B={size.batch} device={device} "
            f"threads={torch.get_num_threads()} "
            f"updates={len(every)}: median {ms(every):.1f} ms/update (mean {statistics.mean(every) * 1e3:.1f})"
            f"; process CPU / wall {cpu / wall:.2f} (threads x 1.0 when no other process competed)")
    if times["actor"] and times["other"]:
        line += (f"; actor steps median {ms(times['actor']):.1f} ms (n={len(times['actor'])}), "
                 f"non-actor steps median {ms(times['other']):.1f} ms (n={len(times['other'])}); "
                 f"mean of the two medians {(ms(times['actor']) + ms(times['other'])) / 2:.1f} ms")
    print(line)


if __name__ == "__main__":
    main()
