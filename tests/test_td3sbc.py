"""The TD3-SBC update (docs/ALGORITHM.md#one-td3-sbc-update): who moves when, the SBC gradient path, the compat quirks."""
import pytest
import torch

from fastbdm import Batch, CompatFlags, TD3SBC, TD3SBCConfig
from fastbdm.presets import REFERENCE_RETURNS, normalized_score, preset, split_name

N, M, B = 6, 3, 32


def make_agent(**overrides):
    cfg = TD3SBCConfig(actor_hidden=(32, 32), critic_hidden=(32, 32), denoiser_hidden=(32, 32), steps=5,
                       **overrides)
    return TD3SBC(N, M, config=cfg)


def make_batch():
    done = torch.zeros(B)
    done[:3] = 1
    valid = torch.ones(B)
    valid[-4:] = 0
    return Batch(torch.randn(B, N), torch.rand(B, M) * 2 - 1, torch.randn(B), torch.randn(B, N),
                 torch.rand(B, M) * 2 - 1, done, valid)


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return all(not torch.equal(b, p) for b, p in zip(before, module.parameters()))


def unchanged(before, module):
    return all(torch.equal(b, p) for b, p in zip(before, module.parameters()))


def test_update_moves_learners_actor_every_second_step_and_targets_by_tau():
    agent, b = make_agent(), make_batch()
    learners = {"critic": agent.critic, "denoiser": agent.bdm.denoiser, "data": agent.data_denoiser}
    targets = [agent.actor_target, agent.critic_target, agent.bdm.target_denoiser]
    online = [agent.actor, agent.critic, agent.bdm.denoiser]

    before = {k: snapshot(m) for k, m in learners.items()}
    actor0, targets0 = snapshot(agent.actor), [snapshot(t) for t in targets]
    metrics = agent.update(b)
    assert all(changed(before[k], m) for k, m in learners.items())
    assert unchanged(actor0, agent.actor) and "actor_loss" not in metrics
    assert all(unchanged(t0, t) for t0, t in zip(targets0, targets))

    before = {k: snapshot(m) for k, m in learners.items()}
    targets1 = [snapshot(t) for t in targets]
    metrics = agent.update(b)
    assert all(changed(before[k], m) for k, m in learners.items())
    assert changed(actor0, agent.actor)
    assert {"actor_loss", "bc", "sbc", "lambda"} <= metrics.keys()
    tau = agent.config.tau
    for t1, target, net in zip(targets1, targets, online):
        for old, new, cur in zip(t1, target.parameters(), net.parameters()):
            torch.testing.assert_close(new, (1 - tau) * old + tau * cur)
    assert all(torch.isfinite(v).all() for v in metrics.values())


@pytest.mark.parametrize("algo", ["td3sbc", "td3bc"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_actor_loss_holds_the_critic_weights_constant(algo, backend):
    """Q1 in the actor loss is differentiable in its action input only: no graph to the critic's weights (the
    fused backward would compute their gradients, unasked), and the actor's gradient unchanged by it."""
    cfg = TD3SBCConfig.for_algo(algo, actor_hidden=(32, 32), critic_hidden=(32, 32), denoiser_hidden=(32, 32),
                                steps=5, backend=backend)
    agent, b = TD3SBC(N, M, config=cfg), make_batch()
    torch.manual_seed(0)
    loss, _ = agent.actor_loss(b)
    critic = list(agent.critic.parameters())
    assert all(p.requires_grad for p in critic)
    assert all(g is None for g in torch.autograd.grad(loss, critic, allow_unused=True, retain_graph=True))
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(loss, list(agent.actor.parameters())))


def test_sbc_gradient_reaches_actor_only_through_target_action_input():
    agent, b = make_agent(), make_batch()
    params = list(agent.actor.parameters())
    _, terms = agent.actor_loss(b)
    grads = torch.autograd.grad(terms["sbc"], params, retain_graph=True)
    assert all(g.abs().sum() > 0 for g in grads)
    assert not any(p.requires_grad for p in agent.bdm.target_denoiser.parameters())
    others = [p for m in (agent.critic, agent.bdm.denoiser, agent.data_denoiser) for p in m.parameters()]
    assert all(g is None for g in torch.autograd.grad(terms["sbc"], others, allow_unused=True))
    # cut the action columns of the target denoiser's first layer: the SBC gradient vanishes
    with torch.no_grad():
        agent.bdm.target_denoiser.linears[0].weight[:, 2 * N + 1:] = 0
    _, terms = agent.actor_loss(b)
    grads = torch.autograd.grad(terms["sbc"], params, allow_unused=True)
    assert all(g is None or g.abs().max() == 0 for g in grads)
    assert terms["sbc"] > 0


def test_compat_critic_penalty_acts_as_batch_mean():
    b = make_batch()
    fixed, compat = make_agent(), make_agent(compat=CompatFlags(broadcast_critic_penalty=True))
    compat.load_state_dict(fixed.state_dict())
    next_action = torch.rand(B, M) * 2 - 1
    penalty = fixed.config.w_critic_bc * b.valid * (next_action - b.next_actions).square().sum(-1)
    # the fixed loss with the per-row penalty replaced by its batch mean has the compat gradient
    loss_compat, _ = compat.critic_loss(b, next_action)
    grads_compat = torch.autograd.grad(loss_compat, list(compat.critic.parameters()))
    with torch.no_grad():
        q_next = fixed.critic_target(b.next_obs, next_action).min(0).values
        y = b.rewards + 0.99 * (1 - b.dones) * (q_next - penalty.mean())
    q = fixed.critic(b.obs, b.actions)
    loss_mean = (q - y).square().mean(1).sum()
    grads_mean = torch.autograd.grad(loss_mean, list(fixed.critic.parameters()))
    for g1, g2 in zip(grads_compat, grads_mean):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(fixed.critic_loss(b, next_action)[0], loss_mean)


def test_compat_mismatched_data_denoiser_noises_next_states():
    b = make_batch()
    fixed, compat = make_agent(), make_agent(compat=CompatFlags(mismatched_data_denoiser=True))
    compat.load_state_dict(fixed.state_dict())
    noise = fixed.draw_noise(B, "cpu", actor_step=False)
    loss_compat = compat.data_denoiser_loss(b, noise)
    assert not torch.allclose(loss_compat, fixed.data_denoiser_loss(b, noise))
    t, eps = noise.data_t, noise.data_eps
    sch = fixed.bdm.schedule
    out = fixed.data_denoiser(sch.q_sample(b.next_obs, t, eps), sch.time_input(t))
    torch.testing.assert_close(loss_compat, (out - b.obs).square().mean())


def test_compat_standardised_sbc_half():
    s = torch.randn(B, N) * 3 + 1
    compat = make_agent(compat=CompatFlags(standardised_sbc_half=True))
    S = compat.sbc_states(s)
    torch.testing.assert_close(S[B:], (s - s.mean(0)) / s.std(0))
    fixed = make_agent()
    torch.manual_seed(7)
    S = fixed.sbc_states(s)
    torch.manual_seed(7)  # the same draws: s_rand = batch mean + batch std * N(0, 1), per dim
    torch.testing.assert_close(S, torch.cat([s, s.mean(0) + s.std(0) * torch.randn_like(s)]), rtol=0, atol=1e-6)
    # and as a distribution, on many rows: the random half has the batch's mean and std per dim
    # (standard errors std / sqrt(rows) and std / sqrt(2 rows): 4.5 of each allowed)
    rows = 20_000
    big = torch.randn(rows, N) * torch.linspace(0.5, 3, N) + torch.linspace(-2, 2, N)
    half = fixed.sbc_states(big)[rows:]
    torch.testing.assert_close(half.mean(0), big.mean(0), rtol=0, atol=4.5 * 3 / rows ** 0.5)
    torch.testing.assert_close(half.std(0) / big.std(0), torch.ones(N), rtol=0, atol=4.5 / (2 * rows) ** 0.5)


def test_compat_sbc_weights_broadcast_to_an_unweighted_mean():
    """Research code: eta (2B, 1) times the (2B,) errors -> a (2B, 2B) product whose mean drops the
    per-row weights. With the flag the SBC term is that product's mean; without it, the weighted mean."""
    agent, b = make_agent(compat=CompatFlags(broadcast_sbc_weights=True)), make_batch()
    noise = agent.draw_noise(B, "cpu")  # the same draws for every loss below
    sbc = agent.actor_loss(b, noise)[1]["sbc"]
    sch, cfg = agent.bdm.schedule, agent.config
    S = agent.sbc_states(b.obs, noise.sbc_normal)
    A = agent.actor(S)
    t, eps, z = noise.sbc_t, noise.sbc_eps, noise.sbc_z
    eta = sch.eta[t] / sch.eta[t].mean()
    x_t = sch.q_sample(agent.bdm.sample(S, A, z), t, eps)
    c = sch.time_input(t)
    err = (agent.data_denoiser(x_t, c) - agent.bdm.target_denoiser(x_t, c, S, A)).square().sum(-1)
    outer = eta[:, None] * err[None, :]
    torch.testing.assert_close(sbc, cfg.w_rel * cfg.w_actor_bc * outer.mean())
    fixed = make_agent()
    fixed.load_state_dict(agent.state_dict())
    sbc_fixed = fixed.actor_loss(b, noise)[1]["sbc"]
    torch.testing.assert_close(sbc_fixed, cfg.w_rel * cfg.w_actor_bc * (eta * err).mean())
    assert not torch.allclose(sbc, sbc_fixed, rtol=1e-3)


def test_compat_all_turns_every_flag_on():
    flags = CompatFlags.resolve(True)
    assert len(flags.enabled()) == 7 and CompatFlags.resolve(False).enabled() == []
    agent = make_agent(compat=flags)
    assert agent.bdm.sampler == "posterior_mean"
    agent.update(make_batch())
    assert all(torch.isfinite(v).all() for v in agent.update(make_batch()).values())


def test_presets_and_scores():
    assert split_name("hopper-medium-expert-v2") == ("hopper", "medium-expert")
    p = preset("halfcheetah-medium-replay")
    assert (p.w_actor_bc, p.w_critic_bc, p.w_rel) == (0.01, 0.001, 0.1)
    assert preset("walker2d-random").w_critic_bc == 0.0 and preset("hopper-expert").w_rel == 1.0
    lo, hi = REFERENCE_RETURNS["hopper"]
    assert normalized_score("hopper", lo) == 0 and normalized_score("hopper", hi) == pytest.approx(100)
    with pytest.raises(ValueError, match="unknown task"):
        preset("ant-medium")


@pytest.mark.parametrize("algo", ["td3sbc", "rebrac", "td3bc"])
def test_actor_gradients_from_the_kernels_outputs_equal_autograd_of_the_actor_loss(algo):
    """actor_gradients (Triton: backward from Q1, pi(S) and D''s output with the kernels' own gradients, the
    SBC term's added by actor_terms) gives the gradients and terms of autograd through actor_loss."""
    torch.manual_seed(0)
    cfg = TD3SBCConfig.for_algo(algo, actor_hidden=(16, 16), critic_hidden=(16, 16), denoiser_hidden=(16, 16),
                                steps=3, backend="triton")
    agent, b = TD3SBC(N, M, config=cfg), make_batch()
    noise = agent.draw_noise(B, "cpu")
    frozen = lambda: agent.frozen_outputs([(b, noise)], actor_last=True, targets=False)[0]  # noqa: E731 (pi(S)'s graph)
    grads, terms = agent.actor_gradients(b, noise, frozen())
    loss, want_terms = agent.actor_loss(b, noise, frozen())
    want = torch.autograd.grad(loss, list(agent.actor.parameters()))
    assert terms.keys() == want_terms.keys() and all(not t.requires_grad for t in terms.values())
    for name in terms:
        torch.testing.assert_close(terms[name], want_terms[name].detach(), rtol=1e-6, atol=1e-7, msg=name)
    assert all(g.abs().sum() > 0 for g in grads)
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
