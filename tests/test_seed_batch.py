"""fastbdm.seed_batch: S = 3 seeds in one batched update against three single-seed TD3SBC updates on
the same batches and noise, for every algorithm.

Tolerance: the batched update differs from the single ones only in how its matmuls are blocked
(vmap turns each seed's mm into one bmm over the seeds) and summed, fp32 rounding of ~1e-7 relative
per gradient. Adam turns a gradient g into a step lr m / (sqrt(v) + 1e-8), which for |g| >> 1e-8 is
insensitive to g's relative rounding (the ratio cancels it), so after 5 updates of lr = 1e-3 the
parameters (O(0.1..1)) agree to ~5 x 1e-3 x 1e-7 plus their own rounding (a few ulps, ~6e-8):
measured at most 6e-8 (rebrac) and 3e-8 (td3sbc, td3bc): atol 1e-6. An element whose gradient cancels
by chance to near Adam's eps (|g| ~ 1e-7 where the median is 2e-2: one in ~1e5) turns that rounding into
a step difference of up to ~lr (seed 0 with generator 100's draws: g = -3.6e-7 at update 1 in
bdm.denoiser.linears.0.weight[13, 13], off by 1.4e-6 after two updates), so such isolated elements may
pass atol (ALLOWED_OFF of a tensor's elements, at least one, each within 2 lr). A seed that read another
seed's weights, batch or noise, or a wrong step, moves nearly every element by ~lr = 1e-3, 1000 times
atol (a grad handed to the fused Adam in a transposed layout was caught here: 2e-3).
"""
from types import SimpleNamespace

import pytest
import torch

from fastbdm import TD3SBC, TD3SBCConfig
from fastbdm.launch_count import LaunchCounter
from fastbdm.seed_batch import SeedBatch, stack_batches, stack_noise
from fastbdm.replay import TransitionBuffer
from fastbdm.td3sbc import Batch

N, M, B, SEEDS, UPDATES = 6, 3, 16, 3, 5
ALLOWED_OFF = 1e-3  # the share of a parameter's elements that may pass atol (module docstring)


def assert_same_parameters(got, want, what: str, lr: float = 1e-3) -> None:
    """got within atol 1e-6 of want but for isolated elements (ALLOWED_OFF of them, at least one), each
    within 2 lr: the module docstring's tolerance."""
    off = int(((got - want).abs() > 1e-6).sum())
    assert off <= max(1, ALLOWED_OFF * want.numel()), f"{what}: {off} of {want.numel()} elements off by more than 1e-6"
    torch.testing.assert_close(got, want, rtol=0, atol=2 * lr, msg=lambda m: f"{what}: {m}")


def make_agent(algo, seed, **overrides):
    torch.manual_seed(seed)  # what a single-seed run with this seed does before building its agent
    fields = dict(actor_hidden=(32, 32), critic_hidden=(32, 32), denoiser_hidden=(32, 32), steps=4,
                  backend="torch", precision="ieee")
    cfg = TD3SBCConfig.for_algo(algo, **{**fields, **overrides})
    return TD3SBC(N, M, config=cfg)


def make_batch(gen):
    done = (torch.rand(B, generator=gen) < 0.2).float()
    return Batch(torch.randn(B, N, generator=gen), torch.rand(B, M, generator=gen) * 2 - 1,
                 torch.randn(B, generator=gen), torch.randn(B, N, generator=gen),
                 torch.rand(B, M, generator=gen) * 2 - 1, done, torch.ones(B))


@pytest.mark.parametrize("algo, overrides, batched_backend, updates", [
    ("td3sbc", {}, "torch", UPDATES), ("td3sbc", {"sampler": "ddpm"}, "torch", UPDATES),
    ("rebrac", {}, "torch", UPDATES), ("td3bc", {}, "torch", UPDATES),
    ("td3sbc", {}, "triton", 2),  # one update of each kind: the interpreter is slow
    ("td3bc", {}, "triton", 2),  # the fused actor and critics without LayerNorm
])
def test_batched_update_equals_single_seed_updates(algo, overrides, batched_backend, updates):
    """batched_backend "triton": the batched update through the Triton kernels (CPU interpreter, exact
    fp32 dots) under vmap and torch.func.grad, via the ops' seed-axis vmap rules, against single-seed
    updates on the torch backend (the same fp32 arithmetic up to summation order: the same tolerance)."""
    singles = [make_agent(algo, seed, **overrides) for seed in range(SEEDS)]
    generators = [torch.Generator().manual_seed(100 + seed) for seed in range(SEEDS)]
    batched = SeedBatch([make_agent(algo, seed, **overrides, backend=batched_backend) for seed in range(SEEDS)],
                        generators)
    for seed, agent in enumerate(singles):  # seed k starts from the single-seed run's initial parameters
        state = batched.agent_state(seed)
        assert all(torch.equal(state[name], p) for name, p in agent.state_dict().items())
    for update in range(1, updates + 1):
        actor_step = update % 2 == 0
        batches = [make_batch(gen) for gen in generators]
        noises = [agent.draw_noise(B, "cpu", actor_step, generator=gen) for agent, gen in zip(singles, generators)]
        expected = [agent.update(b, noise) for agent, b, noise in zip(singles, batches, noises)]
        metrics = batched.update(stack_batches(batches), stack_noise(noises))
        assert metrics.keys() == expected[0].keys() and ("actor_loss" in metrics) == actor_step
        for name, value in metrics.items():
            torch.testing.assert_close(value, torch.stack([m[name] for m in expected]), rtol=1e-5, atol=1e-6)
    for seed, agent in enumerate(singles):
        state = batched.agent_state(seed)
        for name, p in agent.state_dict().items():
            assert_same_parameters(state[name], p, f"seed {seed} {name}")
        moved = [name for name, p in agent.named_parameters() if not torch.equal(p, make_agent(
            algo, seed, **overrides).state_dict()[name])]
        assert len(moved) == len(list(agent.parameters())), "every learner moved: the comparison is not vacuous"


def test_each_seed_draws_its_batch_and_noise_from_its_own_stream():
    """Seed 1's batch indices and noise in a batch of seeds 0, 1, 2 are those of seed 1 alone."""
    buffer = make_buffer()
    three = SeedBatch([make_agent("td3sbc", seed) for seed in range(3)],
                      [torch.Generator().manual_seed(10 + seed) for seed in range(3)])
    alone = SeedBatch([make_agent("td3sbc", 1)], [torch.Generator().manual_seed(11)])
    for actor_step in (False, True):
        (batch3, noise3), (batch1, noise1) = three.draw(buffer, B, actor_step), alone.draw(buffer, B, actor_step)
        for got, want in zip((*batch3, *noise3), (*batch1, *noise1)):
            assert (got is None) == (want is None) and (got is None or torch.equal(got[1], want[0]))
        assert not torch.equal(batch3.obs[0], batch3.obs[1]) and not torch.equal(noise3.policy[0], noise3.policy[1])
        assert (noise3.sbc_t is not None) == actor_step
    metrics = [three.step(buffer, B) for _ in range(2)]  # draw + update; the second one moves the actors
    assert "actor_loss" not in metrics[0] and all(v.shape == (3,) for v in metrics[1].values())
    metrics = three.pair_step(buffer, B)  # both draws, then both updates
    assert "actor_loss" not in metrics[0] and all(v.shape == (3,) for v in metrics[1].values())


@pytest.mark.parametrize("algo, overrides, batched_backend", [
    ("td3sbc", {"sampler": "ddpm"}, "torch"), ("rebrac", {}, "torch"), ("td3sbc", {}, "triton")])
def test_batched_update_pair_equals_single_seed_update_pairs(algo, overrides, batched_backend):
    """SeedBatch.update_pair (the frozen outputs of both updates and every seed in one vmapped call, one
    reverse chain) against each seed's TD3SBC.update_pair on the same draws; the tolerance of the module
    docstring (tests/test_update_pair.py: update_pair learns as two updates in today's order)."""
    singles = [make_agent(algo, seed, **overrides) for seed in range(SEEDS)]
    generators = [torch.Generator().manual_seed(100 + seed) for seed in range(SEEDS)]
    batched = SeedBatch([make_agent(algo, seed, **overrides, backend=batched_backend) for seed in range(SEEDS)],
                        generators)
    for _ in range(2):
        draws = []
        for actor_step in (False, True):
            batches = [make_batch(gen) for gen in generators]
            noises = [agent.draw_noise(B, "cpu", actor_step, generator=gen) for agent, gen in zip(singles, generators)]
            draws.append((batches, noises))
        expected = [agent.update_pair([draws[0][0][k], draws[1][0][k]], [draws[0][1][k], draws[1][1][k]])
                    for k, agent in enumerate(singles)]
        with LaunchCounter() as counter:
            metrics = batched.update_pair([stack_batches(b) for b, _ in draws], [stack_noise(n) for _, n in draws])
        chains = sum(n for (_, op), n in counter.ops.items() if op == "triton::_reverse_chain_kernel")
        assert chains == (1 if batched_backend == "triton" else 0)  # both updates, all seeds: one chain
        for update in range(2):
            assert metrics[update].keys() == expected[0][update].keys()
            for name, value in metrics[update].items():
                torch.testing.assert_close(value, torch.stack([e[update][name] for e in expected]), rtol=1e-5,
                                           atol=1e-6)
    for seed, agent in enumerate(singles):
        state = batched.agent_state(seed)
        for name, p in agent.state_dict().items():
            assert_same_parameters(state[name], p, f"seed {seed} {name}")
    with pytest.raises(ValueError, match="even update count"):
        batched.step(make_buffer(), B)
        batched.pair_step(make_buffer(), B)


def make_buffer():
    rows = 50
    data = SimpleNamespace(observations=torch.randn(rows, N), next_observations=torch.randn(rows, N),
                           actions=torch.rand(rows, M), next_actions=torch.rand(rows, M), rewards=torch.randn(rows),
                           terminals=torch.zeros(rows), valid=torch.ones(rows), obs_mean=torch.zeros(N),
                           obs_std=torch.ones(N))
    return TransitionBuffer(data, "cpu")
