"""TD3SBC.update_pair (one reverse chain per update pair, issue 14 part 2) learns as two updates in
today's order: each update's BDM target chain, then the critic-side step, then the actor's SBC chain
with pi after that step, each chain on its own rows. The reference below is that order, spelled with
the loss functions' own evaluation of the frozen networks (critic_side_losses and actor_loss without
FrozenOutputs: one chain each).

Tolerance: the merged evaluation runs the same rows through matmuls of 2B or 4B rows instead of B or
2B, so results may differ by float rounding only (the row count can change a BLAS kernel's blocking,
never which numbers are summed); learning is the same when the parameters after N pairs agree to a
few fp32 ulps of the Adam steps: rtol 1e-5 and atol 1e-6 (the learning rate 1e-3 is 1000x that), and
most runs agree bit for bit."""
import pytest
import torch

from fastbdm import Batch, TD3SBC, TD3SBCConfig
from fastbdm.launch_count import LaunchCounter

N, M, B, PAIRS = 5, 3, 16, 3


def make_agent(algo="td3sbc", backend="torch", **overrides):
    torch.manual_seed(0)
    small = dict(actor_hidden=(16, 16), critic_hidden=(16, 16), denoiser_hidden=(32, 32), steps=4)
    cfg = TD3SBCConfig.for_algo(algo, backend=backend, **{**small, **overrides})
    return TD3SBC(N, M, config=cfg)


def make_batch(g: torch.Generator) -> Batch:
    done = (torch.rand(B, generator=g) < 0.2).float()
    valid = (torch.rand(B, generator=g) < 0.9).float()
    return Batch(torch.randn(B, N, generator=g), torch.rand(B, M, generator=g) * 2 - 1, torch.randn(B, generator=g),
                 torch.randn(B, N, generator=g), torch.rand(B, M, generator=g) * 2 - 1, done, valid)


def draws(agent, g):
    """Both updates' batches and noise, in the order two single updates draw them."""
    batches, noises = [], []
    for actor_step in (False, True):
        batches.append(make_batch(g))
        noises.append(agent.draw_noise(B, "cpu", actor_step, generator=g))
    return batches, noises


def unmerged_update(agent: TD3SBC, b: Batch, noise) -> None:
    """One update in today's order: its frozen outputs evaluated by the losses themselves."""
    agent.num_updates += 1
    opt = agent.optimizers["learners"]
    loss, _ = agent.critic_side_losses(b, noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if agent.num_updates % agent.config.policy_freq == 0:
        loss, _ = agent.actor_loss(b, noise)
        params = list(agent.actor.parameters())
        opt.zero_grad(set_to_none=True)
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        opt.step()
        agent.update_targets()


def parameters(agent):
    return {k: v.detach().clone() for k, v in agent.state_dict().items()}


def train_both(algo="td3sbc", backend="torch", **overrides):
    merged, unmerged = make_agent(algo, backend, **overrides), make_agent(algo, backend, **overrides)
    g_merged, g_unmerged = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for _ in range(PAIRS):
        merged.update_pair(*draws(merged, g_merged))
        for b, noise in zip(*draws(unmerged, g_unmerged)):
            unmerged_update(unmerged, b, noise)
    return parameters(merged), parameters(unmerged)


@pytest.mark.parametrize("algo,overrides", [
    ("td3sbc", {"sampler": "ddim"}), ("td3sbc", {"sampler": "ddpm"}), ("td3sbc", {"compat": True}),
    ("rebrac", {}), ("td3bc", {})])
def test_update_pair_learns_as_two_updates_in_todays_order(algo, overrides):
    if overrides.get("compat"):
        from fastbdm import CompatFlags
        overrides = {"compat": CompatFlags.all()}
    merged, unmerged = train_both(algo, **overrides)
    assert merged.keys() == unmerged.keys()
    moved = make_agent(algo, **overrides).state_dict()
    for name, value in merged.items():
        torch.testing.assert_close(value, unmerged[name], rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(moved[k], v) for k, v in merged.items() if k.startswith("actor."))


def test_update_pair_on_triton_kernels_in_the_interpreter_learns_as_two_updates():
    merged, unmerged = train_both("td3sbc", "triton", sampler="ddpm")
    for name, value in merged.items():
        torch.testing.assert_close(value, unmerged[name], rtol=1e-5, atol=1e-6, msg=name)


def test_update_pair_runs_one_reverse_chain_and_update_keeps_working():
    agent = make_agent("td3sbc", "triton")
    g = torch.Generator().manual_seed(1)
    with LaunchCounter() as counter:
        agent.update_pair(*draws(agent, g))
    assert counter.ops["chain", "triton::_reverse_chain_kernel"] == 1
    assert sum(n for (_, op), n in counter.ops.items() if op == "triton::_reverse_chain_kernel") == 1
    batches, noises = draws(agent, g)
    single = [agent.update(b, noise) for b, noise in zip(batches, noises)]
    assert "actor_loss" not in single[0] and "sbc" in single[1]
    with pytest.raises(ValueError, match="even update count"):
        agent.update(batches[0], noises[0])
        agent.update_pair(batches, noises)
