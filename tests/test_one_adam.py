"""One Adam over every learner (TD3SBC.optimizers["learners"]): learns as one Adam per learner did, and
TD3's delay holds (a learner without a gradient is not stepped, its moments and step count unchanged)."""
import copy

import pytest
import torch

from fastbdm import TD3SBC, TD3SBCConfig
from fastbdm.td3sbc import one_adam_state

from test_td3sbc import make_batch

N, M = 6, 3


def make_agent(algo):
    cfg = TD3SBCConfig.for_algo(algo, actor_hidden=(32, 32), critic_hidden=(32, 32), denoiser_hidden=(32, 32),
                                steps=5)
    return TD3SBC(N, M, config=cfg)


def per_learner_update(agent, adams, b, noise, actor_step):
    """The update before one Adam: each learner's own fused Adam, the actor's on actor steps only."""
    side = [name for name in ("critic", "denoiser", "data_denoiser") if name in adams]
    loss, _ = agent.critic_side_losses(b, noise)
    for name in side:
        adams[name].zero_grad(set_to_none=True)
    loss.backward()
    for name in side:
        adams[name].step()
    if actor_step:
        loss, _ = agent.actor_loss(b, noise)
        params = list(agent.actor.parameters())
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        adams["actor"].step()
        agent.update_targets()


@pytest.mark.parametrize("algo", ["td3sbc", "rebrac"])
def test_one_adam_learns_as_one_adam_per_learner(algo):
    agent = make_agent(algo)
    today = copy.deepcopy(agent)
    learners = {"actor": today.actor, "critic": today.critic}
    if today.bdm is not None:
        learners.update(denoiser=today.bdm.denoiser, data_denoiser=today.data_denoiser)
    adams = {name: torch.optim.Adam(net.parameters(), lr=today.config.lr, fused=True) for name, net in learners.items()}
    for update in range(1, 7):
        b = make_batch()
        noise = agent.draw_noise(b.obs.shape[0], "cpu", actor_step=update % 2 == 0)
        agent.update(b, noise)
        per_learner_update(today, adams, b, noise, update % 2 == 0)
    # the same per-tensor fused Adam arithmetic on the same gradients: equal to the bit
    for (name, p), q in zip(agent.named_parameters(), today.parameters()):
        assert torch.equal(p, q), name


def test_one_adam_skips_the_learners_without_gradients():
    agent, b = make_agent("td3sbc"), make_batch()
    adam = agent.optimizers["learners"]
    assert {id(p) for p in adam.param_groups[0]["params"]} == {
        id(p) for net in (agent.actor, agent.critic, agent.bdm.denoiser, agent.data_denoiser) for p in net.parameters()}
    steps = lambda net: {adam.state[p]["step"].item() if p in adam.state else 0 for p in net.parameters()}  # noqa: E731
    agent.update(b)
    assert steps(agent.actor) == {0} and steps(agent.critic) == steps(agent.bdm.denoiser) == {1}
    actor = [p.detach().clone() for p in agent.actor.parameters()]
    agent.update(b)
    assert steps(agent.actor) == {1} and steps(agent.critic) == steps(agent.data_denoiser) == {2}
    moments = [adam.state[p]["exp_avg"].clone() for p in agent.actor.parameters()]
    assert not any(torch.equal(a, p) for a, p in zip(actor, agent.actor.parameters()))
    agent.update(b)  # a critic step: the actor, its moments and its step count stay
    assert steps(agent.actor) == {1} and steps(agent.critic) == {3}
    assert all(torch.equal(a, adam.state[p]["exp_avg"]) for a, p in zip(moments, agent.actor.parameters()))


def test_a_checkpoint_with_one_adam_per_learner_resumes_into_the_one_adam():
    """one_adam_state (train.py's resume): per-learner Adam states of an older checkpoint, merged, give
    the one Adam every parameter's moments and step count: the next updates equal the older code's."""
    agent = make_agent("td3sbc")
    adams = {name: torch.optim.Adam(net.parameters(), lr=agent.config.lr, fused=True) for name, net in (
        ("actor", agent.actor), ("critic", agent.critic), ("data_denoiser", agent.data_denoiser),
        ("denoiser", agent.bdm.denoiser))}
    batches = [make_batch() for _ in range(5)]
    noises = [agent.draw_noise(batches[0].obs.shape[0], "cpu", actor_step=u % 2 == 0) for u in range(1, 6)]
    for update in range(3):  # the older run: three updates, then its checkpoint
        per_learner_update(agent, adams, batches[update], noises[update], update % 2 == 1)
    saved = copy.deepcopy({name: adam.state_dict() for name, adam in adams.items()})  # as torch.load gives it
    resumed = copy.deepcopy(agent)
    resumed.optimizers["learners"].load_state_dict(one_adam_state(saved)["learners"])
    resumed.num_updates = 3
    for update in range(3, 5):
        per_learner_update(agent, adams, batches[update], noises[update], update % 2 == 1)
        resumed.update(batches[update], noises[update])
    for (name, p), q in zip(resumed.named_parameters(), agent.parameters()):
        assert torch.equal(p, q), name
    assert one_adam_state(resumed_state := {"learners": resumed.optimizers["learners"].state_dict()}) is resumed_state
