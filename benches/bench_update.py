"""The whole update, sampling included, per algorithm and variant this device supports (see the header
line "update variants on this device"). TD3-SBC: research (benches/research_code.py), torch and triton
(TD3SBC.update with that backend), triton+streams (two streams), and triton+graphs, triton+streams+graphs and
triton-bf16+graphs (CUDA only). The baselines rebrac and td3bc (no denoiser kernels): torch (eager) and torch+graphs (CUDA only), labelled
"ALGO VARIANT"; every algorithm at the size's batch. One round = policy_freq updates, so every round
holds one actor step; extra_info carries the per-round cost and updates_per_round, and for the eager
variants launches_per_pair: the kernels one round (an update pair) launches on CUDA by
fastbdm.launch_count's rule, counted after the timed rounds (with launches_by_phase; on CUDA also
cuda_kernels_per_pair from torch.profiler) and serial_launches_per_pair: those one after another (fewer
with two streams, the "+streams" variants)."""
import pytest

from fastbdm.launch_count import LaunchCounter, cuda_kernels

from .workloads import (BASELINES, UpdateLoop, baseline_variants, bench_device, update_bytes, update_flops,
                        update_variants, variant_kernels)

CASES = [("td3sbc", v) for v in update_variants(bench_device())[0]]
CASES += [(algo, v) for algo in BASELINES for v in baseline_variants(bench_device())[0]]


@pytest.mark.parametrize("algo,variant", CASES)
def test_update(algo, variant, measure, bench_setup, benchmark):
    size = bench_setup.size
    loop = UpdateLoop(variant, size, bench_setup.device, algo=algo)
    freq = loop.model.config.policy_freq

    def round_():
        for _ in range(freq // loop.steps_per_call):
            loop.step()

    measure(round_, component="update", variant=variant if algo == "td3sbc" else f"{algo} {variant}",
            backend=variant_kernels(variant)[0], updates=freq, flops=freq * update_flops(size, algo),
            bytes=freq * update_bytes(size, algo))
    if not variant.endswith("+graphs"):  # eager: every kernel of the round passes through the dispatcher
        with LaunchCounter() as counter:
            round_()
        benchmark.extra_info.update(launches_per_pair=counter.total(), serial_launches_per_pair=counter.serial(),
                                    launches_by_phase=counter.by_phase())
        if bench_setup.device.type == "cuda":
            benchmark.extra_info["cuda_kernels_per_pair"] = cuda_kernels(round_)
