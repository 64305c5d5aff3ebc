"""Shows: a torch.profiler trace of N TD3-SBC updates (CPU ops, and CUDA kernels on a GPU) with each
update as a named range (update/actor, update/critic, and the update's phases where fastbdm marks
them); writes a Chrome trace: open it in https://ui.perfetto.dev or chrome://tracing. Prints the top
ops by self time.

    python profiling/torch_profile.py --variant torch --size small --updates 4
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from workload import UPDATE_VARIANTS, UpdateLoop, common_args, run_updates, setup_from  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=UPDATE_VARIANTS, default="triton" if torch.cuda.is_available() else "torch")
    parser.add_argument("--updates", type=int, default=4, help="profiled updates (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=None, help="trace path (default profiling/out/trace_<variant>_<size>.json)")
    parser.add_argument("--top", type=int, default=25, help="rows of the printed op table")
    common_args(parser)
    args = parser.parse_args()
    size, device = setup_from(args)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "out",
                                   f"trace_{args.variant.replace('+', '_')}_{size.name}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)

    loop = UpdateLoop(args.variant, size, device)
    run_updates(loop, args.warmup)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        run_updates(loop, args.updates)
    prof.export_chrome_trace(out)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.top))
    print(f"{args.updates} updates of {args.variant} ({size.name}, {device}, {torch.get_num_threads()} threads): "
          f"trace written to {out}; open it in https://ui.perfetto.dev or chrome://tracing")


if __name__ == "__main__":
    main()
