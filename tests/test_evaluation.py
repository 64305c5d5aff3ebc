"""Vectorised evaluation: seeded, first episode per environment, D4RL-normalised scores; environments
reused across evaluations; evaluation in a worker process."""
import os
import subprocess
import sys
import time

import numpy as np
import torch

from fastbdm import TD3SBC, TD3SBCConfig
from fastbdm.data import make_env
from fastbdm.evaluation import BackgroundEvaluator, Evaluator, evaluate
from fastbdm.presets import normalized_score


def test_random_halfcheetah_scores_near_zero():
    gen = torch.Generator().manual_seed(0)
    result = evaluate(lambda obs: torch.rand(obs.shape[0], 6, generator=gen) * 2 - 1, "halfcheetah", episodes=3, seed=0)
    assert result.returns.shape == (3,) and result.scores.shape == (3,)
    assert np.all((-5 < result.scores) & (result.scores < 5))
    np.testing.assert_allclose(result.scores, normalized_score("halfcheetah", result.returns))
    assert result.mean_score == result.scores.mean() and result.mean_return == result.returns.mean()


def sequential_returns(env_name, policy, episodes, seed):
    """Reference: one environment at a time, env i seeded seed + i, as the vector env does."""
    returns = []
    for i in range(episodes):
        env = make_env(env_name)
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            action = policy(torch.as_tensor(obs, dtype=torch.float32)[None])[0].numpy()
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + reward, terminated or truncated
        returns.append(total)
    return np.array(returns)


def test_episodes_of_different_lengths_count_once():
    """Hopper falls at different times; each env's first episode only, identical to sequential runs."""
    policy = lambda obs: 0.5 * torch.tanh(obs[:, :3] * 3.0)  # noqa: E731  (deterministic, state dependent)
    result = evaluate(policy, "hopper-medium-v2", episodes=4, seed=7)
    expected = sequential_returns("hopper", policy, 4, 7)
    np.testing.assert_allclose(result.returns, expected, rtol=1e-6)
    assert len(set(np.round(expected, 3))) > 1
    again = evaluate(lambda obs: policy(obs).numpy(), "hopper", episodes=4, seed=7)  # numpy output works too
    np.testing.assert_array_equal(again.returns, result.returns)


def test_reused_environments_give_the_returns_of_fresh_ones():
    policy = lambda obs: 0.5 * torch.tanh(obs[:, :3] * 3.0)  # noqa: E731
    evaluator = Evaluator("hopper", episodes=3)
    try:
        reused = [evaluator(policy, seed).returns for seed in (7, 8, 7)]
    finally:
        evaluator.close()
    np.testing.assert_array_equal(reused[0], evaluate(policy, "hopper", episodes=3, seed=7).returns)
    np.testing.assert_array_equal(reused[1], evaluate(policy, "hopper", episodes=3, seed=8).returns)
    np.testing.assert_array_equal(reused[2], reused[0])


def test_background_evaluation_uses_the_snapshot_taken_at_submission():
    torch.manual_seed(0)
    agent = TD3SBC(17, 6, config=TD3SBCConfig(actor_hidden=(32, 32), critic_hidden=(32, 32),
                                              denoiser_hidden=(32, 32), steps=2))
    expected = evaluate(agent.act, "halfcheetah", episodes=2, seed=5).returns
    background = BackgroundEvaluator("halfcheetah", episodes=2)
    try:
        before = background.submit(agent.cpu_policy(), seed=5)
        with torch.no_grad():  # training goes on while the evaluation runs
            for p in agent.actor.parameters():
                p.mul_(-1.0)
        after = background.submit(agent.cpu_policy(), seed=5)
        np.testing.assert_array_equal(before.result().returns, expected)
        np.testing.assert_array_equal(after.result().returns, evaluate(agent.act, "halfcheetah", 2, 5).returns)
        assert not np.array_equal(after.result().returns, expected)
    finally:
        background.close()


ORPHAN_SCRIPT = """
import sys, time, torch
from fastbdm import TD3SBC, TD3SBCConfig
from fastbdm.evaluation import BackgroundEvaluator
if __name__ == "__main__":
    agent = TD3SBC(17, 6, config=TD3SBCConfig(actor_hidden=(8,), critic_hidden=(8,), denoiser_hidden=(8,), steps=2))
    background = BackgroundEvaluator("halfcheetah", episodes=1)
    background.submit(agent.cpu_policy(), seed=0).result()
    print(*background.pool._processes, flush=True)
    time.sleep(600)
"""


def test_the_worker_exits_when_the_trainer_is_killed(tmp_path):
    """SIGKILL (or SIGTERM) skips the trainer's cleanup; the worker notices and exits by itself."""
    script = tmp_path / "trainer.py"
    script.write_text(ORPHAN_SCRIPT)
    trainer = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(trainer.stdout.readline())
    finally:
        trainer.kill()
        trainer.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and os.path.exists(f"/proc/{worker}") and "Z" not in status(worker):
        time.sleep(0.2)
    assert not os.path.exists(f"/proc/{worker}") or "Z" in status(worker)


def status(pid: int) -> str:
    try:
        return next(line for line in open(f"/proc/{pid}/status") if line.startswith("State:"))
    except (FileNotFoundError, StopIteration):
        return "Z"


def test_evaluation_runs_in_the_environment_it_is_given():
    """Walker2d-v4 (D4RL's models) and Walker2d-v5 differ (foot friction, healthy reward): same policy and
    seeds, different returns; both normalised with walker2d's D4RL references."""
    policy = lambda obs: 0.5 * torch.tanh(obs[:, :6] * 3.0)  # noqa: E731
    v4, v5 = Evaluator("Walker2d-v4", episodes=2), Evaluator("Walker2d-v5", episodes=2)
    try:
        assert (v4.env_id, v5.env_id, v4.task) == ("Walker2d-v4", "Walker2d-v5", "walker2d")
        r4, r5 = v4(policy, seed=3), v5(policy, seed=3)
    finally:
        v4.close()
        v5.close()
    assert not np.allclose(r4.returns, r5.returns)
    np.testing.assert_allclose(r4.scores, normalized_score("walker2d", r4.returns))
    np.testing.assert_array_equal(r4.returns, sequential_returns("Walker2d-v4", policy, 2, 3))
