"""The whole TD3-SBC update, sampling included, per variant this device supports (see the header
line "update variants on this device"): research (benches/research_code.py), torch and triton
(TD3SBC.update with that backend), triton+graphs and triton-bf16+graphs (CUDA only). One round = policy_freq updates, so
every round holds one actor step; extra_info carries the per-round cost and updates_per_round."""
import pytest

from .workloads import UpdateLoop, bench_device, update_bytes, update_flops, update_variants, variant_kernels

VARIANTS, _ = update_variants(bench_device())


@pytest.mark.parametrize("variant", VARIANTS)
def test_update(variant, measure, bench_setup):
    size = bench_setup.size
    loop = UpdateLoop(variant, size, bench_setup.device)
    freq = loop.model.config.policy_freq

    def round_():
        for _ in range(freq // loop.steps_per_call):
            loop.step()

    measure(round_, component="update", variant=variant, backend=variant_kernels(variant)[0], updates=freq,
            flops=freq * update_flops(size), bytes=freq * update_bytes(size))
