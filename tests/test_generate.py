"""Local generation on tiny budgets: Minari output, metadata, stopping rules, atomicity, the CLI."""
import errno
import json
import os

import numpy as np
import pytest
from minari.dataset._storages.hdf5_storage import HDF5Storage

from fastbdm.data import DatasetError, load_transitions
from fastbdm.data import generate as gen

TINY = dict(warmup=50, hidden=(16, 16), batch_size=16, eval_every=100, eval_episodes=1, progress=False)


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "d4rl"))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def metadata(root, dataset_id):
    return json.loads((root / dataset_id / "data" / "metadata.json").read_text())


def test_medium_replay_step_cap(root):
    dataset_id = gen.generate_dataset("hopper-medium-replay", max_steps=250, **TINY)
    assert dataset_id == "fastbdm/hopper/medium-replay-v0"
    meta = metadata(root, dataset_id)
    info = meta["fastbdm"]
    assert meta["total_steps"] == 250 and info["transitions"] == 250 and info["steps"] == 250
    assert info["stop"] == "step cap" and info["medium_reached"] is False
    assert info["medium_score"] == 45.0 and [s for s, _ in info["eval_history"]] == [100, 200]
    assert meta["ref_min_score"] == pytest.approx(-20.272305) and meta["ref_max_score"] == pytest.approx(3234.3)
    tr = load_transitions("hopper-medium-replay", generate=False)
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
    assert info["transitions"] == 100


def test_random_and_medium_expert_via_load(root):
    tr = load_transitions("halfcheetah-random", generate_kwargs=dict(size=1200), progress=False)
    assert tr.source == "minari:fastbdm/halfcheetah/random-v0 (generated)"
    assert len(tr) == 1198  # two timeout rows dropped (a 1000-step episode, then one cut at 200 steps)
    assert tr.timeouts.sum() == 2 and tr.terminals.sum() == 0
    info = tr.metadata["fastbdm"]
    assert info["episodes"] == 2 and info["complete_episodes"] == 1
    assert info["episode_return_mean"] == pytest.approx(tr.episode_returns[0])
    assert -5 < (tr.episode_returns[0] + 280.178953) / 124.15 < 5  # ~0 normalised
    info = metadata(root, gen.generate_dataset("hopper-medium-expert", max_steps=150, size=60, **TINY))["fastbdm"]
    assert info["transitions"] == 120 and info["steps"] == 150


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


def test_cli_and_existing_dataset(root, capsys):
    assert gen.main(["--env", "walker2d-random-v2", "--size", "200", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "fastbdm/walker2d/random-v0" in out and "transitions: 200" in out
    assert gen.main(["--env", "walker2d-random", "--size", "200", "--no-progress"]) == 1
    assert "already exists" in capsys.readouterr().err
