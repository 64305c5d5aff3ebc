"""The baselines on TD3-SBC's update (config.algo): ReBRAC without the state-BC learners, TD3+BC as
Fujimoto & Gu 2021 define it."""
import pytest
import torch
import torch.nn.functional as F

from fastbdm import Batch, TD3SBC, TD3SBCConfig, reference
from fastbdm.monitor import UpdateMonitor
from fastbdm.presets import ALGOS, preset

N, M, B = 6, 3, 32
SMALL = dict(actor_hidden=(32, 32), critic_hidden=(32, 32), denoiser_hidden=(32, 32), steps=5)


def make_agent(algo, seed=0, **overrides):
    torch.manual_seed(seed)
    return TD3SBC(N, M, config=TD3SBCConfig.for_algo(algo, **{**SMALL, **overrides}))


def make_batch(seed):
    g = torch.Generator().manual_seed(seed)
    done = torch.zeros(B)
    done[:3] = 1
    valid = torch.ones(B)
    valid[-4:] = 0
    return Batch(torch.randn(B, N, generator=g), torch.rand(B, M, generator=g) * 2 - 1, torch.randn(B, generator=g),
                 torch.randn(B, N, generator=g), torch.rand(B, M, generator=g) * 2 - 1, done, valid)


def parameters(agent):
    """Actor, critics and their targets: what ReBRAC and TD3-SBC have in common."""
    return [p.detach().clone() for m in (agent.actor, agent.critic, agent.actor_target, agent.critic_target)
            for p in m.parameters()]


def train(agent, updates=4):
    """`updates` updates on fixed batches; the RNG is reseeded before each update, so the target
    policy's smoothing noise (the first draw of an update) is the same for every algorithm."""
    for i in range(updates):
        torch.manual_seed(100 + i)
        agent.update(make_batch(i))
    return parameters(agent)


def test_rebrac_learns_what_td3sbc_with_w_rel_0_learns():
    sbc, rebrac = make_agent("td3sbc", w_rel=0.0), make_agent("rebrac")
    assert sbc.config.w_actor_bc == rebrac.config.w_actor_bc and sbc.config.w_critic_bc == rebrac.config.w_critic_bc
    start = parameters(rebrac)
    assert all(torch.equal(a, b) for a, b in zip(parameters(sbc), start))
    after_sbc, after_rebrac = train(sbc), train(rebrac)
    assert not any(torch.equal(a, b) for a, b in zip(start[:4], after_rebrac[:4]))  # the actor moved
    for a, b in zip(after_sbc, after_rebrac):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # the comparison sees the state-BC term when it is on
    with_sbc = train(make_agent("td3sbc"))
    assert not all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(with_sbc, after_rebrac))


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_rebrac_allocates_no_denoiser():
    sbc, rebrac = make_agent("td3sbc"), make_agent("rebrac")
    assert rebrac.bdm is None and rebrac.data_denoiser is None
    stepped = {id(p) for p in rebrac.optimizers["learners"].param_groups[0]["params"]}
    assert stepped == {id(p) for net in (rebrac.actor, rebrac.critic) for p in net.parameters()}
    denoisers = count(sbc.bdm) + count(sbc.data_denoiser)
    assert denoisers > 0 and count(rebrac) == count(sbc) - denoisers
    assert count(rebrac) == 2 * (count(rebrac.actor) + count(rebrac.critic))  # online and target nets only
    assert not any(k.startswith(("bdm.", "data_denoiser.")) for k in rebrac.state_dict())


@pytest.fixture
def denoiser_calls(monkeypatch):
    """Counts the reverse-chain runs and denoiser forwards of the torch backend (the CPU path)."""
    calls = {"reverse_chain": 0, "denoiser_forward": 0}
    for name in calls:
        original = getattr(reference, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(reference, name, counted)
    return calls


@pytest.mark.parametrize("algo", ["rebrac", "td3bc"])
def test_baselines_run_no_chain_and_no_denoiser(algo, denoiser_calls):
    agent = make_agent("td3sbc")
    train(agent, 2)
    # per update: one chain (the TD loss's; on the actor step merged with the SBC chain), D' on the targets, D on
    # 2B rows, E; the actor step: E, D'
    assert denoiser_calls == {"reverse_chain": 2, "denoiser_forward": 2 * 3 + 2}
    denoiser_calls.update(reverse_chain=0, denoiser_forward=0)
    agent = make_agent(algo)
    metrics = [agent.update(make_batch(i)) for i in range(2)]
    assert denoiser_calls == {"reverse_chain": 0, "denoiser_forward": 0}
    assert not {"bdm_loss", "data_loss", "sbc"} & {k for m in metrics for k in m}


def test_td3bc_losses_are_fujimoto_and_gus():
    """TD3+BC (CORL td3_bc.py), with Q1', Q2' the target critics and pi the actor:
        critic:  y = r + gamma (1 - done) min(Q1'(s', a'), Q2'(s', a'))   (no critic BC)
                 L_Q = mean (Q1(s, a) - y)^2 + mean (Q2(s, a) - y)^2
        actor:   lambda = alpha / mean |Q1(s, pi(s))| (detached), alpha = 2.5
                 L_pi = -lambda mean Q1(s, pi(s)) + mean over rows and action dims of (pi(s) - a)^2
        target action a' = clamp(pi'(s') + clamp(0.2 N(0, I), -0.5, 0.5), -1, 1)."""
    agent, b = make_agent("td3bc"), make_batch(0)
    for _ in range(4):  # targets away from the online nets
        agent.update(make_batch(1))
    next_action = torch.rand(B, M) * 2 - 1  # differs from b.next_actions: a critic BC would show
    with torch.no_grad():
        q1_next, q2_next = agent.critic_target(b.next_obs, next_action)
        y = b.rewards + 0.99 * (1 - b.dones) * torch.minimum(q1_next, q2_next)
    q1, q2 = agent.critic(b.obs, b.actions)
    torch.testing.assert_close(agent.critic_loss(b, next_action)[0], F.mse_loss(q1, y) + F.mse_loss(q2, y))

    pi = agent.actor(b.obs)
    q = agent.critic(b.obs, pi)[0]
    lmbda = 2.5 / q.abs().mean().detach()
    expected = -lmbda * q.mean() + F.mse_loss(pi, b.actions)
    loss, terms = agent.actor_loss(b)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(terms["bc"], F.mse_loss(pi, b.actions))
    params = list(agent.actor.parameters())
    for g, g_expected in zip(torch.autograd.grad(loss, params), torch.autograd.grad(expected, params)):
        torch.testing.assert_close(g, g_expected)

    torch.manual_seed(7)
    a_next = agent.target_action(b.next_obs)
    torch.manual_seed(7)
    noise = (0.2 * torch.randn(B, M)).clamp(-0.5, 0.5)
    torch.testing.assert_close(a_next, (agent.actor_target(b.next_obs) + noise).clamp(-1, 1))


def test_td3bc_defaults_are_the_reference_implementations():
    cfg = TD3SBCConfig.for_algo("td3bc")
    assert (cfg.lr, cfg.alpha, cfg.w_actor_bc, cfg.w_critic_bc, cfg.w_rel) == (3e-4, 2.5, 1.0, 0.0, 0.0)
    assert (cfg.tau, cfg.gamma, cfg.policy_freq, cfg.policy_noise, cfg.noise_clip) == (0.005, 0.99, 2, 0.2, 0.5)
    agent = TD3SBC(17, 6, config=cfg)
    assert [tuple(p.shape) for p in agent.actor.parameters()] == [(256, 17), (256,), (256, 256), (256,), (6, 256), (6,)]
    assert [tuple(p.shape) for p in agent.critic.parameters()] == [  # two members, no LayerNorm parameters
        (2, 23, 256), (2, 1, 256), (2, 256, 256), (2, 1, 256), (2, 256, 1), (2, 1, 1)]
    assert all(o.param_groups[0]["lr"] == 3e-4 for o in agent.optimizers.values())
    assert preset("hopper-medium", "td3bc") == preset("walker2d-random", "td3bc")  # no per-task coefficients
    assert preset("hopper-medium", "rebrac").w_actor_bc == preset("hopper-medium").w_actor_bc == 0.01


def test_a_baseline_with_a_state_bc_weight_is_refused():
    with pytest.raises(ValueError, match="w_rel=0.1: rebrac has no state-BC term"):
        TD3SBC(N, M, config=TD3SBCConfig(algo="rebrac"))
    with pytest.raises(ValueError, match="unknown algo 'iql'"):
        TD3SBCConfig.for_algo("iql")


@pytest.mark.parametrize("algo", ALGOS)
def test_absent_terms_are_not_divergence(algo):
    agent, monitor = make_agent(algo), UpdateMonitor("cpu")
    for i in range(4):
        monitor.record(agent.update(make_batch(i)))
    row = monitor.read()
    assert monitor.nonfinite() == []
    has_sbc = algo == "td3sbc"
    assert ({"bdm_loss", "data_loss", "sbc"} <= row.keys()) == has_sbc
    assert {"critic_loss", "q_mean", "actor_loss", "bc", "lambda"} <= row.keys()
