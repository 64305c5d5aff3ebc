"""Local generation on tiny budgets: Minari output, metadata, stopping rules, atomicity, the CLI."""
import errno
import json
import os

import numpy as np
import pytest
from minari.dataset._storages.hdf5_storage import HDF5Storage

from fastbdm.data import DatasetError, load_transitions
from fastbdm.data import generate as gen
from fastbdm.data.errors import PartialDatasetError

TD3_TINY = dict(warmup=50, hidden=(16, 16), batch_size=16, eval_every=100, eval_episodes=1)
TINY = dict(TD3_TINY, progress=False)


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "d4rl"))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def metadata(root, dataset_id):
    return json.loads((root / dataset_id / "data" / "metadata.json").read_text())


def test_medium_replay_step_cap_is_a_partial_dataset(root):
    with pytest.raises(PartialDatasetError) as err:
        gen.generate_dataset("hopper-medium-replay", max_steps=250, **TINY)
    dataset_id = err.value.dataset_id
    assert dataset_id == "fastbdm/hopper/medium-replay-partial-v0"
    assert not (root / "fastbdm" / "hopper" / "medium-replay-v0").exists()  # not under the full name
    meta = metadata(root, dataset_id)
    info = meta["fastbdm"]
    assert meta["total_steps"] == 250 and info["transitions"] == 250 and info["steps"] == 250
    assert info["stop"] == "step cap" and info["medium_reached"] is False
    level = info["level"]
    assert level["partial"] and level["wanted_score"] == 45.0 and level["reached_return"] == info["eval_history"][-1][1]
    assert info["medium_score"] == 45.0 and [s for s, _ in info["eval_history"]] == [100, 200]
    assert meta["ref_min_score"] == pytest.approx(-20.272305) and meta["ref_max_score"] == pytest.approx(3234.3)
    message = str(err.value)
    assert "\n" not in message and f"normalised {level['reached_score']:.1f}" in message
    assert "normalised 45" in message and "--max-steps" in message and "--time-budget" in message
    with pytest.raises(DatasetError, match="partial dataset.*--allow-partial-dataset"):
        load_transitions("hopper-medium-replay", generate=False)
    with pytest.raises(DatasetError, match="--allow-partial-dataset"):  # an explicit path is refused too
        load_transitions("hopper-medium-replay", dataset_path=root / dataset_id)
    tr = load_transitions("hopper-medium-replay", generate=False, allow_partial=True)
    assert tr.partial and tr.level == level and tr.source_kind == "generated" and tr.env_id == "Hopper-v5"
    assert tr.source == f"minari:{dataset_id}" and tr.obs_dim == 11 and tr.act_dim == 3
    assert tr.terminals.sum() > 0  # hopper falls under early policies
    # every stored transition is consistent: the row after a non-final row starts at its s'
    follow = (tr.valid == 1).numpy()
    np.testing.assert_allclose(tr.next_observations[:-1][follow[:-1]], tr.observations[1:][follow[:-1]])
    assert info["episodes"] == len(tr.episode_returns) == info["complete_episodes"] + 1  # the last one is cut
    assert info["episode_return_max"] == pytest.approx(tr.episode_returns[:-1].max())


def test_medium_replay_stops_at_first_medium_evaluation(root, monkeypatch):
    monkeypatch.setitem(gen.MEDIUM_SCORE, "hopper", -100.0)  # any policy reaches this "medium level"
    info = metadata(root, gen.generate_dataset("hopper-medium-replay", max_steps=1000, **TINY))["fastbdm"]
    assert info["stop"] == "reached" and info["medium_reached"] and info["steps"] == 100
    assert info["transitions"] == 100 and info["level"]["partial"] is False
    tr = load_transitions("hopper-medium-replay", generate=False)
    assert tr.source == "minari:fastbdm/hopper/medium-replay-v0" and not tr.partial


def test_time_budget_stop_refused_by_loading_unless_allowed(root, monkeypatch):
    """Generation from load_transitions (the training command's path) cut by its time budget."""
    tiny = dict(TD3_TINY, time_budget_s=0.0, size=60)
    with pytest.raises(DatasetError, match="time budget.*partial dataset.*--time-budget.*--allow-partial-dataset"):
        load_transitions("hopper-medium", generate_kwargs=tiny, progress=False)
    assert (root / "fastbdm" / "hopper" / "medium-partial-v0").is_dir()
    assert not (root / "fastbdm" / "hopper" / "medium-v0").exists()
    monkeypatch.setattr(gen, "generate_dataset", lambda *a, **k: pytest.fail("the partial one is found"))
    tr = load_transitions("hopper-medium", allow_partial=True)
    assert tr.partial and tr.level["stop"] == "time budget" and tr.level["reached_return"] is None


def test_random_and_medium_expert_via_load(root):
    tr = load_transitions("halfcheetah-random", generate_kwargs=dict(size=1200), progress=False)
    assert tr.source == "minari:fastbdm/halfcheetah/random-v0 (generated)"
    assert len(tr) == 1198  # two timeout rows dropped (a 1000-step episode, then one cut at 200 steps)
    assert tr.timeouts.sum() == 2 and tr.terminals.sum() == 0
    info = tr.metadata["fastbdm"]
    assert info["episodes"] == 2 and info["complete_episodes"] == 1
    assert info["episode_return_mean"] == pytest.approx(tr.episode_returns[0])
    assert -5 < (tr.episode_returns[0] + 280.178953) / 124.15 < 5  # ~0 normalised
    with pytest.raises(PartialDatasetError) as err:  # 150 steps reach no medium level
        gen.generate_dataset("hopper-medium-expert", max_steps=150, size=60, **TINY)
    info = metadata(root, err.value.dataset_id)["fastbdm"]
    assert info["transitions"] == 120 and info["steps"] == 150 and info["level"]["partial"]


def test_long_run_cut_by_its_time_budget_is_partial(root, monkeypatch):
    monkeypatch.setitem(gen.MEDIUM_SCORE, "hopper", -100.0)  # the medium level is no obstacle here
    with pytest.raises(PartialDatasetError, match=r"cut at 0 of 150 TD3 steps.*--time-budget") as err:
        gen.generate_dataset("hopper-expert", max_steps=150, size=60, time_budget_s=0.0, **TINY)
    assert err.value.dataset_id == "fastbdm/hopper/expert-partial-v0"
    info = metadata(root, gen.generate_dataset("hopper-expert", max_steps=150, size=60, **TINY))["fastbdm"]
    assert info["level"]["partial"] is False and info["steps"] == 150 and info["transitions"] == 60


def test_interrupted_generation_leaves_nothing(root, monkeypatch):
    """Ctrl-C after Minari has written the first episode: no dataset, no staging directory."""
    write = HDF5Storage.update_episodes

    def interrupt(storage, episodes):
        write(storage, list(episodes)[:1])
        raise KeyboardInterrupt

    monkeypatch.setattr(HDF5Storage, "update_episodes", interrupt)
    with pytest.raises(KeyboardInterrupt):
        gen.generate_dataset("hopper-random", size=300, progress=False)
    assert not (root / "fastbdm" / "hopper" / "random-v0").exists()
    assert not list(root.glob(".staging-*"))
    with pytest.raises(DatasetError, match="no hopper-random dataset found"):
        load_transitions("hopper-random", generate=False)


def test_a_generated_dataset_is_on_disk_before_it_appears(root, monkeypatch):
    final = root / "fastbdm" / "hopper" / "random-v0"
    synced = []  # (path, whether the dataset had appeared)
    fsync = os.fsync

    def recording_fsync(fd):
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), final.exists()))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    gen.generate_dataset("hopper-random", size=50, progress=False)
    before = {os.path.basename(path) for path, appeared in synced if not appeared}
    after = {path for path, appeared in synced if appeared}
    assert {"main_data.hdf5", "metadata.json", "namespace_metadata.json.tmp"} <= before
    assert {str(root / "fastbdm" / "hopper"), str(root / "fastbdm"), str(root)} <= after


def test_a_full_disk_while_writing_a_dataset_is_one_line(root, monkeypatch):
    def full_disk(storage, episodes):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(HDF5Storage, "update_episodes", full_disk)
    with pytest.raises(DatasetError) as failed:
        gen.generate_dataset("hopper-random", size=50, progress=False)
    message = str(failed.value)
    assert "\n" not in message and f"cannot write dataset fastbdm/hopper/random-v0 in {root}" in message
    assert "No space left on device; it needs" in message and "MB free there" in message
    assert not (root / "fastbdm" / "hopper" / "random-v0").exists() and not list(root.glob(".staging-*"))
def test_cli_exits_non_zero_with_one_line_when_short_of_the_level(root, capsys, monkeypatch):
    argv = ["--env", "hopper-medium-replay", "--max-steps", "120", "--time-budget", "60", "--no-progress"]
    original = gen.generate_dataset
    monkeypatch.setattr(gen, "generate_dataset", lambda name, **kw: original(name, **{**kw, **TD3_TINY}))
    assert gen.main(argv) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "step cap (120)" in err[0] and "short of the medium level" in err[0]
    assert "fastbdm/hopper/medium-replay-partial-v0" in err[0] and "--max-steps 240" in err[0]
    assert (root / "fastbdm" / "hopper" / "medium-replay-partial-v0").is_dir()


def test_cli_and_existing_dataset(root, capsys):
    assert gen.main(["--env", "walker2d-random-v2", "--size", "200", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "fastbdm/walker2d/random-v0" in out and "transitions: 200" in out
    assert gen.main(["--env", "walker2d-random", "--size", "200", "--no-progress"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_an_eta_is_printed_once_after_the_first_interval(root, monkeypatch, capsys):
    monkeypatch.setattr(gen, "ETA_AFTER_S", 0.0)  # stands in for the first minute
    with pytest.raises(PartialDatasetError):
        gen.generate_dataset("hopper-medium-replay", max_steps=120, **TINY)
    err = [line for line in capsys.readouterr().err.splitlines() if "steps/s" in line]
    assert len(err) == 1 and "1 steps in" in err[0] and "the 119 steps left to the cap take about" in err[0]
    assert "time budget ends this run in 14 min" in err[0]  # medium-replay's default budget
