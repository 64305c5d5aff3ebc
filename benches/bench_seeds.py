"""Many seeds in one process (fastbdm.seed_batch): the whole update of S seeds, sampling included, batched
(one SeedBatch.pair_step for all S per update pair) for S = 1, 2, 4, 8, and S = 4 run one after another
(four TD3SBC agents, TD3SBC.update_pair each) as today's sequential --seeds does. td3sbc at the size's batch,
eager, the torch backend on the CPU and triton on CUDA (graphs for the batch: pending, see docs/PERFORMANCE.md).
One round = one update pair (policy_freq = 2 updates) of every seed; extra_info: seeds, updates_per_round (per seed) and
per_seed_update_s = median / (seeds x updates_per_round), the number to compare across S."""
import pytest
import torch

from fastbdm import TD3SBC
from fastbdm.backends import torch_matmul_precision
from fastbdm.seed_batch import SeedBatch
from fastbdm.update_draws import draw_updates

from .workloads import ACT_DIM, OBS_DIM, config, synthetic_buffer, update_bytes, update_flops

CASES = [(seeds, "batched") for seeds in (1, 2, 4, 8)] + [(4, "sequential")]


def agents(size, device, backend, seeds):
    """Seed k's agent as a single-seed run with seed k builds it."""
    built = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        built.append(TD3SBC(OBS_DIM, ACT_DIM, config=config(size, backend), device=device))
    return built


@pytest.mark.parametrize("seeds, mode", CASES)
def test_seeds(seeds, mode, measure, bench_setup, benchmark):
    size, device = bench_setup.size, bench_setup.device
    backend = "triton" if device.type == "cuda" else "torch"
    buffer = synthetic_buffer(size, device)
    learners = agents(size, device, backend, seeds)
    freq = learners[0].config.policy_freq
    if mode == "batched":
        batch = SeedBatch(learners, [torch.Generator(device).manual_seed(seed) for seed in range(seeds)])
        pair = lambda: batch.pair_step(buffer, size.batch)  # noqa: E731
    else:  # each agent's pair of updates, as the trainer's runner does (UpdateRunner.pair)
        def pair():
            for agent in learners:
                agent.update_pair(*draw_updates(agent, buffer, size.batch, [False, True], [None], seed_axis=False))

    def round_():
        with torch_matmul_precision("tf32"):
            pair()

    measure(round_, component="update_seeds", variant=f"S={seeds} {mode}", backend=backend, updates=freq,
            flops=seeds * freq * update_flops(size, "td3sbc"), bytes=seeds * freq * update_bytes(size, "td3sbc"))
    info = benchmark.extra_info
    info["seeds"] = seeds
    if "median_s" in info:
        info["per_seed_update_s"] = info["median_s"] / (seeds * freq)
