"""Shows, on a CUDA device, what the CUDA-graph trainer changes (paper size: B=1024, halfcheetah shapes):
1. eager vs graphed: the same seed, N updates of the triton backend (the baselines rebrac and td3bc:
   torch, no denoiser kernels) run eagerly and by replaying the captured pair; the largest parameter
   difference (relative to the largest parameter) and whether the CUDA generator ended in the same
   state (same random draws);
2. the evaluation policy's graph against TD3SBC.act, also after the actor's parameters change in place;
3. two streams (TD3SBC streams=2, fastbdm.branches): eager with two streams against eager with one (the same
   kernels on the same inputs: equal), and eager against graphed with two streams;
4. time per update for torch eager, triton eager (one and two streams), triton+graphs with K = 1, 2, 4, 8
   pairs per graph, triton+streams+graphs and triton-bf16+graphs, the baselines eager and graphed (K = 1),
   and the implied wall time of 1M updates.
Prints a Markdown report; writes the numbers to OUT/graph_checks.json; exits 1 if 1, 2 or 3 fails.

    python profiling/graph_checks.py --out profiling/out --updates 100 --timed 400
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from workload import SIZES, UpdateLoop, sync  # noqa: E402
from benches.workloads import BASELINES  # noqa: E402
from fastbdm.graphs import GraphedPolicy  # noqa: E402

TIMED_VARIANTS = [("td3sbc", "torch", 1), ("td3sbc", "triton", 1), ("td3sbc", "triton+streams", 1),
                  ("td3sbc", "triton+graphs", 1), ("td3sbc", "triton+streams+graphs", 1),
                  ("td3sbc", "triton+graphs", 2), ("td3sbc", "triton+graphs", 4), ("td3sbc", "triton+graphs", 8),
                  ("td3sbc", "triton-bf16+graphs", 1)]
TIMED_VARIANTS += [(algo, variant, 1) for algo in BASELINES for variant in ("torch", "triton", "triton+graphs")]


def flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    """Every parameter and buffer of the agent (online and target networks), as one vector."""
    return torch.cat([t.detach().float().flatten() for t in (*model.parameters(), *model.buffers())])


def eager_vs_graphed(size, device, updates: int, algo: str = "td3sbc", backend: str = "triton") -> dict:
    """The same seed and data, `updates` updates eagerly and with graph replays (warm-up included), on the
    triton backend (every algorithm's default on CUDA; backend "triton+streams": with two streams)."""
    eager = UpdateLoop(backend, size, device, seed=0, algo=algo)
    for _ in range(updates // eager.steps_per_call):
        eager.step()
    sync(device)
    eager_params, eager_rng = flat_parameters(eager.model), torch.cuda.get_rng_state(device)
    graphed = UpdateLoop(f"{backend}+graphs", size, device, seed=0, algo=algo)  # runs its warm-up and one replay
    left = updates - graphed.model.num_updates
    if left < 0 or left % graphed.steps_per_call:
        raise SystemExit(f"--updates {updates}: needs at least {graphed.model.num_updates} and an even count")
    for _ in range(left // graphed.steps_per_call):
        graphed.step()
    sync(device)
    graphed_params = flat_parameters(graphed.model)
    scale = eager_params.abs().max().item()
    return {"algo": algo, "backend": backend, "updates": updates, "eager_num_updates": eager.model.num_updates,
            "graphed_num_updates": graphed.model.num_updates,
            "max_abs_diff": (eager_params - graphed_params).abs().max().item(), "param_scale": scale,
            "max_rel_diff": (eager_params - graphed_params).abs().max().item() / scale,
            "same_rng_state": bool(torch.equal(eager_rng, torch.cuda.get_rng_state(device)))}


def one_vs_two_streams(size, device, updates: int) -> dict:
    """The same seed and data, `updates` eager updates with one stream and with two: the largest parameter
    difference (relative to the largest parameter)."""
    params = []
    for backend in ("triton", "triton+streams"):
        loop = UpdateLoop(backend, size, device, seed=0)
        for _ in range(updates // loop.steps_per_call):
            loop.step()
        sync(device)
        params.append(flat_parameters(loop.model))
    diff = (params[0] - params[1]).abs().max().item()
    return {"updates": updates, "max_abs_diff": diff, "max_rel_diff": diff / params[0].abs().max().item()}


def policy_graph(size, device) -> dict:
    """The policy graph against TD3SBC.act, at capture and after the actor's parameters move in place
    (the graph must read them, not a copy)."""
    loop = UpdateLoop("triton", size, device, seed=1)
    obs = torch.randn(10, loop.model.obs_mean.shape[0], device=device)
    graphed = GraphedPolicy(loop.model, rows=10)
    diffs = {"policy_graph_max_abs_diff": (graphed(obs) - loop.model.act(obs).cpu()).abs().max().item()}
    with torch.no_grad():
        for p in loop.model.actor.parameters():
            p.mul_(1.1).add_(0.01)
    diffs["policy_graph_after_update_max_abs_diff"] = (graphed(obs) - loop.model.act(obs).cpu()).abs().max().item()
    return diffs


def failed_checks(results: dict) -> list:
    """What the run shows is wrong. Expected exactly equal (same kernels, same random stream); the
    tolerances leave room for a different cuBLAS algorithm under capture."""
    policy = results["policy"]
    failures = []
    for eq in (results["eager_vs_graphed"], results["eager_vs_graphed_streams"], *results["eager_vs_graphed_baselines"]):
        if not eq["same_rng_state"]:
            failures.append(f"{eq['algo']} {eq['backend']}: the CUDA generator state differs after eager and "
                            "graphed updates")
        if eq["max_rel_diff"] > 1e-3:
            failures.append(f"{eq['algo']} {eq['backend']}: eager and graphed parameters differ by "
                            f"{eq['max_rel_diff']:.3g} (relative) > 1e-3")
    if results["streams"]["max_rel_diff"] > 1e-6:
        failures.append(f"one and two streams: parameters differ by {results['streams']['max_rel_diff']:.3g} "
                        "(relative) > 1e-6")
    for key, diff in policy.items():
        if diff > 1e-5:
            failures.append(f"{key} = {diff:.3g} > 1e-5")
    return failures


def time_per_update(algo: str, variant: str, pairs: int, size, device, timed: int) -> dict:
    """Wall seconds per update over `timed` updates (device synchronised at both ends)."""
    loop = UpdateLoop(variant, size, device, seed=0, pairs_per_graph=pairs, algo=algo)
    calls = max(1, timed // loop.steps_per_call)
    for _ in range(max(1, 8 // loop.steps_per_call)):
        loop.step()
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        loop.step()
    sync(device)
    per_update = (time.perf_counter() - start) / (calls * loop.steps_per_call)
    return {"algo": algo, "variant": variant, "pairs_per_graph": pairs, "updates": calls * loop.steps_per_call,
            "ms_per_update": per_update * 1e3, "updates_per_s": 1.0 / per_update,
            "minutes_per_1M_updates": per_update * 1e6 / 60}


def report(results: dict) -> str:
    eq = results["eager_vs_graphed"]
    lines = [f"# CUDA-graph checks on {results['device_name']} (torch {results['torch']}, "
             f"triton {results['triton']}, size {results['size']})", "",
             f"Eager vs graphed after {eq['updates']} updates (same seed): max |difference| "
             f"{eq['max_abs_diff']:.3g} (relative to the largest parameter {eq['max_rel_diff']:.3g}); "
             f"CUDA generator state equal afterwards: {eq['same_rng_state']}.",
             f"Evaluation policy graph vs TD3SBC.act: max |difference| {results['policy']['policy_graph_max_abs_diff']:.3g} "
             f"at capture, {results['policy']['policy_graph_after_update_max_abs_diff']:.3g} after the actor's "
             "parameters changed in place.",
             *(f"{b['algo']} {b['backend']} eager vs graphed after {b['updates']} updates: relative difference "
               f"{b['max_rel_diff']:.3g}; CUDA generator state equal: {b['same_rng_state']}."
               for b in (results["eager_vs_graphed_streams"], *results["eager_vs_graphed_baselines"])),
             f"One stream vs two (eager, {results['streams']['updates']} updates): relative difference "
             f"{results['streams']['max_rel_diff']:.3g}.",
             "", "| algo | variant | pairs per graph | updates timed | ms / update | updates / s | min / 1M updates |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["timing"]:
        lines.append(f"| {r['algo']} | {r['variant']} | {r['pairs_per_graph']} | {r['updates']} | {r['ms_per_update']:.3f} | "
                     f"{r['updates_per_s']:.0f} | {r['minutes_per_1M_updates']:.1f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="profiling/out", help="directory for graph_checks.json")
    parser.add_argument("--size", choices=list(SIZES), default="paper")
    parser.add_argument("--updates", type=int, default=100, help="updates of the eager-vs-graphed comparison")
    parser.add_argument("--timed", type=int, default=400, help="updates timed per variant")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("graph_checks.py needs a CUDA device (CUDA graphs); nothing to check on the CPU")
    device, size = torch.device("cuda"), SIZES[args.size]
    results = {"device_name": torch.cuda.get_device_name(device), "torch": torch.__version__,
               "triton": __import__("triton").__version__, "size": size.name,
               "eager_vs_graphed": eager_vs_graphed(size, device, args.updates),
               "eager_vs_graphed_streams": eager_vs_graphed(size, device, args.updates, backend="triton+streams"),
               "streams": one_vs_two_streams(size, device, args.updates),
               "eager_vs_graphed_baselines": [eager_vs_graphed(size, device, args.updates, a) for a in BASELINES],
               "policy": policy_graph(size, device), "timing": []}
    for algo, variant, pairs in TIMED_VARIANTS:
        results["timing"].append(time_per_update(algo, variant, pairs, size, device, args.timed))
        print(results["timing"][-1], flush=True)
    text = report(results)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    results["failed_checks"] = failed_checks(results)
    with open(os.path.join(args.out, "graph_checks.json"), "w") as f:
        json.dump(results, f, indent=1)
    if results["failed_checks"]:
        raise SystemExit("FAILED: " + "; ".join(results["failed_checks"]))
    print("all graph checks passed")


if __name__ == "__main__":
    main()
