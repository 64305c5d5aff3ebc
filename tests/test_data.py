"""Dataset loading: every reader, the transition conventions, source priority and bad input."""
import time
import warnings

import h5py
import mujoco
import numpy as np
import pytest
import torch

from fastbdm.data import DatasetError, load_transitions, make_env, parse_name
from fastbdm.data.names import DIMS, d4rl_filename

OBS, ACT = DIMS["halfcheetah"]


def episodes_raw(lengths=(5, 4), ends=("timeout", "terminal"), seed=0, next_obs=True):
    """D4RL-layout arrays of consecutive episodes; s' of each row is the next row's s inside an episode."""
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")}
    for length, end in zip(lengths, ends):
        states = rng.normal(size=(length + 1, OBS)).astype(np.float32)
        cols["observations"].append(states[:-1])
        cols["next_observations"].append(states[1:])
        cols["actions"].append(rng.uniform(-1, 1, (length, ACT)).astype(np.float32))
        cols["rewards"].append(rng.normal(size=length).astype(np.float32))
        flags = np.zeros(length, bool)
        flags[-1] = True
        cols["terminals"].append(flags if end == "terminal" else np.zeros(length, bool))
        cols["timeouts"].append(flags if end == "timeout" else np.zeros(length, bool))
    raw = {k: np.concatenate(v) for k, v in cols.items()}
    if not next_obs:
        del raw["next_observations"]
    return raw


def write_hdf5(path, raw):
    with h5py.File(path, "w") as f:
        for key, value in raw.items():
            f[key] = value
        f.create_group("infos")["qpos"] = np.zeros((len(raw["observations"]), 3))
    return path


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Empty D4RL and Minari locations: nothing is found unless a test puts it there."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "d4rl"))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path


def test_names_and_envs():
    assert parse_name("halfcheetah-medium-replay-v2") == ("halfcheetah", "medium-replay")
    assert parse_name("walker2d-full-replay") == ("walker2d", "full-replay")
    assert d4rl_filename("halfcheetah", "medium-replay") == "halfcheetah_medium_replay-v2.hdf5"
    for env, (obs_dim, act_dim) in DIMS.items():
        e = make_env(env)
        assert e.observation_space.shape == (obs_dim,) and e.action_space.shape == (act_dim,)
        e.close()


def test_d4rl_hdf5_timeouts_next_actions_valid(isolated):
    raw = episodes_raw(lengths=(5, 4), ends=("timeout", "terminal"))
    path = write_hdf5(isolated / "hc.hdf5", raw)
    tr = load_transitions("halfcheetah-medium-replay", dataset_path=path)
    # the timeout row (row 4) is dropped; the terminal row (row 8) is kept as a done
    keep = np.array([0, 1, 2, 3, 5, 6, 7, 8])
    assert len(tr) == 8 and tr.obs_dim == OBS and tr.act_dim == ACT
    np.testing.assert_array_equal(tr.observations.numpy(), raw["observations"][keep])
    np.testing.assert_array_equal(tr.next_observations.numpy(), raw["next_observations"][keep])
    np.testing.assert_array_equal(tr.terminals.numpy(), [0, 0, 0, 0, 0, 0, 0, 1])
    assert torch.equal(tr.dones, tr.terminals)
    np.testing.assert_array_equal(tr.timeouts.numpy(), [0, 0, 0, 1, 0, 0, 0, 0])  # episode cut after row 3
    np.testing.assert_array_equal(tr.valid.numpy(), [1, 1, 1, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(tr.next_actions[:3].numpy(), raw["actions"][1:4])
    np.testing.assert_array_equal(tr.next_actions[4:7].numpy(), raw["actions"][6:9])
    kept = raw["observations"][keep].astype(np.float64)
    np.testing.assert_allclose(tr.obs_mean.numpy(), kept.mean(0), rtol=1e-5)
    np.testing.assert_allclose(tr.obs_std.numpy(), kept.std(0), rtol=1e-5)
    np.testing.assert_allclose(tr.episode_returns, [raw["rewards"][:5].sum(), raw["rewards"][5:].sum()], rtol=1e-5)
    assert tr.observations.dtype == torch.float32 and tr.rewards.shape == (8,)
    assert tr.name == "halfcheetah-medium-replay" and tr.env_name == "halfcheetah" and tr.source == str(path)
    assert tr.source_kind == "d4rl" and tr.env_id == "HalfCheetah-v4"  # D4RL's data: gymnasium v4


def test_npz_without_next_observations(isolated):
    raw = episodes_raw(lengths=(4, 3), ends=("terminal", "timeout"), next_obs=False)
    np.savez(isolated / "hc.npz", **raw)
    tr = load_transitions("halfcheetah-expert", dataset_path=isolated / "hc.npz")
    # s' = next row's s; the timeout row 6 is dropped (it is also the last row)
    assert len(tr) == 6
    np.testing.assert_array_equal(tr.next_observations.numpy(), raw["observations"][1:7][:6])
    np.testing.assert_array_equal(tr.terminals.numpy(), [0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(tr.timeouts.numpy(), [0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(tr.valid.numpy(), [1, 1, 1, 0, 1, 0])
    assert len(tr.episode_returns) == 2
    assert tr.source_kind == "npz" and tr.env_id == "HalfCheetah-v4"  # D4RL's keys: taken as D4RL's data


def write_minari(dataset_id, raw, env="HalfCheetah-v5"):
    import minari
    from minari.data_collector import EpisodeBuffer

    ends = np.flatnonzero(raw["terminals"] | raw["timeouts"]) + 1
    buffers, start = [], 0
    for i, stop in enumerate(ends):
        obs = np.concatenate([raw["observations"][start:stop], raw["next_observations"][stop - 1:stop]])
        buffers.append(EpisodeBuffer(id=i, observations=obs, actions=raw["actions"][start:stop],
                                     rewards=list(raw["rewards"][start:stop]),
                                     terminations=list(raw["terminals"][start:stop]),
                                     truncations=list(raw["timeouts"][start:stop])))
        start = stop
    return minari.create_dataset_from_buffers(dataset_id, buffer=buffers, env=env, eval_env=env, algorithm_name="test",
                                              author="test", author_email="test@localhost", code_permalink="tests",
                                              description="test data")


@pytest.mark.filterwarnings("ignore:.*HalfCheetah-v4 is out of date:DeprecationWarning")  # Minari's own gym.make
def test_minari_loader_by_id_and_path(isolated):
    raw = episodes_raw(lengths=(5, 4), ends=("timeout", "terminal"))
    write_minari("mujoco/halfcheetah/medium-v0", raw)
    tr = load_transitions("halfcheetah-medium", generate=False)
    assert tr.source == "minari:mujoco/halfcheetah/medium-v0" and len(tr) == 8
    np.testing.assert_allclose(tr.observations.numpy(), raw["observations"][[0, 1, 2, 3, 5, 6, 7, 8]], rtol=1e-6)
    np.testing.assert_array_equal(tr.valid.numpy(), [1, 1, 1, 0, 1, 1, 1, 0])
    by_path = load_transitions("halfcheetah-medium", dataset_path=isolated / "minari/mujoco/halfcheetah/medium-v0")
    assert torch.equal(by_path.actions, tr.actions)
    assert tr.source_kind == by_path.source_kind == "minari" and tr.env_id == by_path.env_id == "HalfCheetah-v5"
    write_minari("mujoco/halfcheetah/expert-v0", raw, env="HalfCheetah-v4")  # the recorded environment wins
    assert load_transitions("halfcheetah-expert", generate=False).env_id == "HalfCheetah-v4"


def test_d4rl_hdf5_found_by_name_is_evaluated_in_v4(isolated):
    (isolated / "d4rl").mkdir()
    write_hdf5(isolated / "d4rl" / "walker2d_medium_replay-v2.hdf5", episodes_raw(lengths=(3,), ends=("terminal",)))
    tr = load_transitions("walker2d-medium-replay", generate=False)
    assert tr.source_kind == "d4rl" and tr.env_id == "Walker2d-v4"
    assert tr.provenance() == {"source": tr.source, "source_kind": "d4rl", "transitions": 3, "env_id": "Walker2d-v4"}


def test_v4_environments_make_without_the_out_of_date_warning():
    """D4RL's data are evaluated in v4 on purpose: gymnasium's 'v5 exists' warning is not shown, others are."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for gym_id, dims in (("HalfCheetah-v4", DIMS["halfcheetah"]), ("Hopper-v4", DIMS["hopper"]),
                             ("Walker2d-v4", DIMS["walker2d"])):
            env = make_env(gym_id)
            assert env.spec.id == gym_id and (env.observation_space.shape[0], env.action_space.shape[0]) == dims
            env.close()
        warnings.warn("another deprecation", DeprecationWarning)
    assert [str(w.message) for w in caught] == ["another deprecation"]


def test_source_priority(isolated):
    """explicit path > D4RL directory > local Minari; nothing found and no generation -> DatasetError."""
    with pytest.raises(DatasetError, match="python -m fastbdm.data.generate --env halfcheetah-medium"):
        load_transitions("halfcheetah-medium", generate=False)
    write_minari("fastbdm/halfcheetah/medium-v0", episodes_raw(lengths=(3,), ends=("terminal",)))
    assert load_transitions("halfcheetah-medium", generate=False).source == "minari:fastbdm/halfcheetah/medium-v0"
    write_minari("mujoco/halfcheetah/medium-v0", episodes_raw(lengths=(4,), ends=("terminal",)))
    assert load_transitions("halfcheetah-medium", generate=False).source == "minari:mujoco/halfcheetah/medium-v0"
    (isolated / "d4rl").mkdir()
    d4rl = write_hdf5(isolated / "d4rl" / "halfcheetah_medium-v2.hdf5", episodes_raw(lengths=(6,), ends=("terminal",)))
    tr = load_transitions("halfcheetah-medium-v2", generate=False)
    assert tr.source == str(d4rl) and len(tr) == 6
    explicit = write_hdf5(isolated / "mine.hdf5", episodes_raw(lengths=(2,), ends=("terminal",)))
    assert len(load_transitions("halfcheetah-medium", dataset_path=explicit)) == 2


def test_download_fails_fast_offline(isolated, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(DatasetError, match="drop --download"):
        load_transitions("hopper-expert", download=True, generate=False)
    assert time.monotonic() - start < 5


def bad(raw, **changes):
    raw = dict(raw)
    for key, value in changes.items():
        if value is None:
            del raw[key]
        else:
            raw[key] = value
    return raw


BAD_CASES = {
    "missing keys": (lambda r: bad(r, actions=None, rewards=None), "lacks key.*actions, rewards"),
    "wrong obs dim": (lambda r: bad(r, observations=r["observations"][:, :11]),
                      r"'observations'.*\(N, 17\).*another environment"),
    "wrong act dim": (lambda r: bad(r, actions=r["actions"][:, :3]), r"'actions'.*\(N, 6\)"),
    "NaN": (lambda r: bad(r, rewards=np.where(np.arange(9) == 2, np.nan, r["rewards"])),
            "'rewards' contains 1 NaN/inf"),
    "inf": (lambda r: bad(r, observations=np.where(np.arange(9)[:, None] == 0, np.inf, r["observations"])), "NaN/inf"),
    "empty": (lambda r: {k: v[:0] for k, v in r.items()}, "is empty"),
    "row mismatch": (lambda r: bad(r, terminals=r["terminals"][:4]), "'terminals' has shape"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
@pytest.mark.parametrize("fmt", ["hdf5", "npz"])
def test_bad_content_raises_dataset_error(isolated, case, fmt):
    make, pattern = BAD_CASES[case]
    raw = make(episodes_raw(lengths=(5, 4), ends=("timeout", "terminal")))
    path = isolated / f"bad.{fmt}"
    write_hdf5(path, raw) if fmt == "hdf5" else np.savez(path, **raw)
    with pytest.raises(DatasetError, match=pattern) as err:
        load_transitions("halfcheetah-medium", dataset_path=path, generate=False)
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)


def test_bad_files_and_names(isolated):
    with pytest.raises(DatasetError, match="does not exist"):
        load_transitions("halfcheetah-medium", dataset_path=isolated / "nope.hdf5")
    for suffix in ("hdf5", "npz"):
        (isolated / f"junk.{suffix}").write_bytes(b"\x00garbage" * 10)
        with pytest.raises(DatasetError, match="corrupted"):
            load_transitions("halfcheetah-medium", dataset_path=isolated / f"junk.{suffix}")
    (isolated / "notminari").mkdir()
    with pytest.raises(DatasetError, match="not a Minari dataset directory"):
        load_transitions("halfcheetah-medium", dataset_path=isolated / "notminari")
    with pytest.raises(DatasetError, match="did you mean halfcheetah-medium-replay"):
        load_transitions("halfcheeta-medium-replay")
    with pytest.raises(DatasetError, match="did you mean hopper-medium-expert"):
        load_transitions("hopper-medium_expert")


def test_mujoco_warnings_become_python_warnings_without_the_asset_deprecation(capfd):
    """Compiling gymnasium's half_cheetah.xml makes MuJoCo warn about a deprecated attribute (printed at
    every compile by default); that one is dropped, and a real warning arrives as a RuntimeWarning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = make_env("halfcheetah")
        env.reset(seed=0)
        env.unwrapped.data.qvel[:] = float("nan")
        mujoco.mj_step(env.unwrapped.model, env.unwrapped.data)
        env.close()
    printed = capfd.readouterr()
    assert "settotalmass" not in printed.out + printed.err
    assert [(w.category, str(w.message)[:38]) for w in caught if "MuJoCo" in str(w.message)] == [
        (RuntimeWarning, "MuJoCo: Nan, Inf or huge value in QVEL")]
