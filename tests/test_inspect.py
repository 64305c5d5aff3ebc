"""fastbdm.inspect: state recovery in MuJoCo, the comparison on the linear-Gaussian MDP, the command."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fastbdm import BellmanDiffusion
from fastbdm import inspect as inspect_cli
from fastbdm import train as train_cli
from fastbdm.data.names import make_env
from fastbdm.inspect import geometric_horizons
from fastbdm.mujoco_states import field_names, recoverable, set_observation, step_unlimited
from fastbdm.sample_comparison import compare_samples
from test_successor_measure import A, B_MAT, K, QUERIES, SIGMA, train_bdm


def random_rollout(task: str, steps: int, seed: int = 0):
    """(obs (steps+1, n) float64, actions (steps, m)) of one episode with uniform random actions."""
    env = make_env(task)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    observations, actions = [obs], []
    for _ in range(steps):
        action = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
        obs, _, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        actions.append(action)
        if terminated or truncated:
            break
    env.close()
    return np.array(observations), np.array(actions)


@pytest.mark.parametrize("task", ["halfcheetah", "hopper", "walker2d"])
def test_recovered_state_gives_back_the_observation_and_its_next_one(task):
    obs, actions = random_rollout(task, 40)
    env = make_env(task)
    env.reset(seed=1)
    checked = 0
    for t in np.flatnonzero(recoverable(task, obs[:-1])):
        assert np.array_equal(set_observation(env, obs[t]), obs[t])
        next_obs, _ = step_unlimited(env, actions[t])
        np.testing.assert_allclose(next_obs, obs[t + 1], rtol=0, atol=1e-6)
        checked += 1
    assert checked >= 5  # random torques swing Walker2d's joints past the clip in most steps
    env.close()


@pytest.mark.parametrize("task", ["halfcheetah", "hopper"])
def test_rollouts_take_the_action_then_the_policy_and_stay_at_a_terminal_state(task):
    obs, actions = random_rollout(task, 300)
    end = len(actions)
    assert (end < 300) == (task == "hopper")  # hopper falls within the 300 steps: obs[end] is terminal
    start = np.flatnonzero(recoverable(task, obs[:end - 3]))[-1]

    def replay(states):  # the recorded action of the recorded observation nearest to each state, but
        nearest = np.abs(states[:, None, :] - obs[None, :end]).max(-1).argmin(1)  # not at the start: the
        return np.where((nearest == start)[:, None], -actions[nearest], actions[nearest])  # data's action is

    rollouts = inspect_cli.Rollouts(lambda: make_env(task), 4, seed=0)
    falls = task == "hopper"
    horizons = np.array([1, 2, end - start, end - start + (7 if falls else 0)])
    states, terminated = rollouts.occupancy(obs[start], actions[start], replay, horizons)  # taken there
    rollouts.close()
    np.testing.assert_allclose(states, obs[start + np.minimum(horizons, end - start)], rtol=0, atol=1e-4)
    assert terminated.tolist() == [False, False, falls, falls]


def test_model_samples_are_in_raw_observation_space():
    """A model whose every sample is its (normalised) query state gives back the raw state."""
    mean, std = torch.tensor([5.0, -3.0, 0.5]), torch.tensor([2.0, 0.1, 1.0])
    agent = SimpleNamespace(obs_mean=mean, obs_std=std, bdm=SimpleNamespace(sample=lambda s, a: s * 1.0))
    obs = np.float32([6.0, -3.2, 0.0])
    samples = inspect_cli.model_samples(agent, obs, np.float32([0.1]), 4)
    np.testing.assert_allclose(samples, np.tile(obs, (4, 1)), rtol=0, atol=1e-5)


def test_field_names_and_the_velocity_clip():
    env = make_env("halfcheetah")
    names = field_names(env)
    env.close()
    assert len(names) == 17 and names[:2] == ["rootz position", "rooty angle"]
    assert names[8:11] == ["rootx velocity", "rootz velocity", "rooty angular velocity"]
    hopper = np.zeros((3, 11))
    hopper[1, 7], hopper[2, 10] = 10.0, -9.5  # rooty angular velocity at the clip bound; one below it
    assert recoverable("hopper", hopper).tolist() == [True, False, True]
    assert recoverable("halfcheetah", np.full((1, 17), 50.0)).all()  # HalfCheetah does not clip


def linear_mdp_occupancy(s0, a0, gamma, count, rng):
    """(count, 2) states at k ~ Geometric(1 - gamma) steps of the linear-Gaussian MDP under a = K s."""
    horizons = geometric_horizons(rng, gamma, count)
    a_mat, b_mat, k_mat = A.numpy(), B_MAT.numpy(), K.numpy()
    s, a = np.tile(s0, (count, 1)), np.tile(a0, (count, 1))
    for step in range(1, horizons.max() + 1):
        moving = horizons >= step
        s[moving] = s[moving] @ a_mat.T + a[moving] @ b_mat.T + SIGMA * rng.normal(size=(moving.sum(), 2))
        a = s @ k_mat.T
    return s


def test_geometric_horizons_have_the_measures_weights():
    k = geometric_horizons(np.random.default_rng(0), 0.9, 200_000)
    assert k.min() == 1
    assert abs(k.mean() - 10.0) < 0.1  # E[k] = 1 / (1 - gamma)
    assert abs((k == 1).mean() - 0.1) < 0.003 and abs((k == 3).mean() - 0.1 * 0.81) < 0.003


def test_comparison_tells_a_trained_model_from_an_untrained_one():
    gamma, count = 0.5, 512
    untrained = BellmanDiffusion(2, 1, hidden=(128, 128), steps=10, gamma=gamma)
    trained = train_bdm(gamma, 600)
    rng = np.random.default_rng(0)
    for s0, a0 in QUERIES:
        s0, a0 = np.float32(s0), np.float32(a0)
        reality = linear_mdp_occupancy(s0, a0, gamma, count, rng)
        s, a = torch.tensor(s0).expand(count, 2).contiguous(), torch.tensor(a0).expand(count, 1).contiguous()
        good = compare_samples(trained.sample(s, a).numpy(), reality, resamples=20)
        bad = compare_samples(untrained.sample(s, a).numpy(), reality, resamples=20)
        # a 10-level DDIM shrinks the spread even with the exact denoiser (docs/ALGORITHM.md#samplers)
        assert good.mean_abs_error < 0.3 and ((good.std_ratio > 0.6) & (good.std_ratio < 1.5)).all(), good
        assert good.energy_distance < 0.05, good
        assert bad.mean_abs_error > max(0.5, 5 * good.mean_abs_error), bad
        assert np.abs(np.log(bad.std_ratio)).max() > np.log(2) and bad.energy_distance > 10 * good.energy_distance, bad


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 4-update halfcheetah run on 300 transitions of a real HalfCheetah-v5 episode (random actions)."""
    root = tmp_path_factory.mktemp("inspect")
    obs, actions = random_rollout("halfcheetah", 300)
    rows = len(actions)
    timeouts = np.zeros(rows, bool)
    timeouts[-1] = True
    np.savez(root / "tiny.npz", observations=obs[:-1].astype(np.float32), next_observations=obs[1:].astype(np.float32),
             actions=actions, rewards=np.zeros(rows, np.float32), terminals=np.zeros(rows, bool), timeouts=timeouts)
    assert train_cli.main(["--env", "halfcheetah-medium-replay", "--dataset", str(root / "tiny.npz"), "--out",
                           str(root / "runs"), "--steps", "4", "--batch-size", "32", "--eval-every", "4",
                           "--eval-episodes", "1", "--no-async-eval", "--no-progress", "--device", "cpu",
                           "--eval-env", "HalfCheetah-v5"]) == 0  # the data's environment (an npz is taken as v4)
    return root / "runs" / "halfcheetah-medium-replay" / "seed0"


def test_command_writes_the_table_the_json_and_the_png(tiny_run, tmp_path, capsys):
    assert inspect_cli.main([str(tiny_run), "--states", "3", "--samples", "24", "--resamples", "10",
                             "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    result = json.loads((tmp_path / "inspect.json").read_text())
    assert len(result["per_state"]) == 3 and result["skipped_states"] == []
    assert (result["samples"], result["gamma"], result["sampler"]) == (24, 0.99, "ddim")
    assert result["checkpoint_step"] == 4 and result["gym_env"] == "HalfCheetah-v5"
    for row in result["per_state"]:
        assert len(row["mean_error"]) == len(row["std_ratio"]) == len(row["reality_std"]) == 17
        assert row["roundtrip_error"] == 0.0 and row["next_obs_error"] < 1e-5  # the state behind s, recovered
        assert 0 < row["p_value"] <= 1 and row["energy_distance"] > 0
        reality_std = np.array(row["reality_std"])
        np.testing.assert_allclose(row["std_ratio"], np.array(row["model_std"]) / reality_std, rtol=1e-6)
        np.testing.assert_allclose(row["mean_error"], (np.array(row["model_mean"]) - row["reality_mean"]) / reality_std,
                                   rtol=1e-6)
        assert row["mean_abs_error"] == pytest.approx(np.abs(row["mean_error"]).mean())
    indices = [str(r["index"]) for r in result["per_state"]]
    assert [line.split()[0] for line in table[2:5]] == indices and table[6].split()[0] == "all"
    assert float(table[6].split()[1]) == pytest.approx(result["summary"]["mean_abs_error"], abs=1e-3)
    png = (tmp_path / "inspect.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def one_line_error(capsys, argv) -> str:
    assert inspect_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def copy_run(run_dir, dest, **config_changes):
    dest.mkdir()
    (dest / "checkpoint.pt").write_bytes((run_dir / "checkpoint.pt").read_bytes())
    config = {**json.loads((run_dir / "config.json").read_text()), **config_changes}
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def test_one_line_errors(tiny_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((tiny_run / "config.json").read_text())
    assert "no checkpoint.pt in" in one_line_error(capsys, [str(empty)])
    moved = copy_run(tiny_run, tmp_path / "moved", dataset=str(tmp_path / "gone.npz"))
    assert "gone.npz does not exist" in one_line_error(capsys, [str(moved)])
    unknown = copy_run(tiny_run, tmp_path / "unknown", env="cartpole-medium")
    assert "unknown dataset name 'cartpole-medium'" in one_line_error(capsys, [str(unknown)])
    cartpole = copy_run(tiny_run, tmp_path / "cartpole", eval_env="CartPole-v1")
    assert "CartPole-v1 is not a MuJoCo environment" in one_line_error(capsys, [str(cartpole)])
    small = tmp_path / "small.npz"
    np.savez(small, observations=np.zeros((10, 5), np.float32), actions=np.zeros((10, 6), np.float32),
             rewards=np.zeros(10, np.float32), terminals=np.zeros(10, bool))
    assert "halfcheetah needs (N, 17)" in one_line_error(capsys, [str(tiny_run), "--dataset", str(small)])
