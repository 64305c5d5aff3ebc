"""Local generation on tiny budgets: Minari output, metadata, stopping rules, atomicity, the CLI."""
import errno
import json
import os
import signal
from pathlib import Path

import minari

import numpy as np
import pytest
from minari.dataset._storages.hdf5_storage import HDF5Storage

from fastbdm.data import DatasetError, load_transitions
from fastbdm.data import generate as gen
from fastbdm.data.errors import GenerationStopped, PartialDatasetError

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
    assert "--resume --time-budget" in str(err.value)
    with pytest.raises(DatasetError, match="stopped generation of hopper-expert is kept at .*--resume.*--restart"):
        gen.generate_dataset("hopper-expert", max_steps=150, size=60, **TINY)
    info = metadata(root, gen.generate_dataset("hopper-expert", resume=True, progress=False))["fastbdm"]
    assert info["level"]["partial"] is False and info["steps"] == 150 and info["transitions"] == 60
    assert info["td3"]["hidden"] == [16, 16] and info["time_budget_s"] is None  # settings from the checkpoint
    assert not (root / ".generation" / "hopper" / "expert.pt").exists()  # removed once the dataset is complete


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
    # measured from the first step with an update (warm-up 50): the warm-up's fast random steps left out
    assert len(err) == 1 and "1 steps in" in err[0] and "the 69 steps left to the cap take about" in err[0]
    assert "time budget ends this run in 35 min" in err[0]  # hopper-medium-replay's default budget, 35 min


def stored(dataset_id):
    """(every episode's arrays, the 'fastbdm' metadata without its wall time) of a dataset in the Minari root."""
    episodes = [[ep.observations, ep.actions, ep.rewards, ep.terminations, ep.truncations]
                for ep in minari.load_dataset(dataset_id).iterate_episodes()]
    info = metadata(Path(os.environ["MINARI_DATASETS_PATH"]), dataset_id)["fastbdm"]
    del info["wall_time_s"]
    return episodes, info


def signal_after(monkeypatch, cls, method, count, at, signum):
    """Send `signum` to this process the first time `count(obj)` equals `at` after a call of cls.method."""
    original, sent = getattr(cls, method), []

    def then_signal(obj, *args):
        original(obj, *args)
        if count(obj) == at and not sent:
            sent.append(signum)
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(cls, method, then_signal)
    return lambda: monkeypatch.setattr(cls, method, original)


RESUME_CASES = {  # name: (generation settings, where the signal comes: class, method, counter, value, signal)
    # stopped while seeking the medium level, an evaluation in flight, then cut by the step cap (partial)
    "hopper-medium-replay": (dict(max_steps=400), (gen.BehaviourRun, "_step", lambda run: run.steps, 170, signal.SIGINT)),
    # stopped in the 'full' stage, after the medium level and the medium rollouts
    "hopper-medium-expert": (dict(max_steps=300, size=60), (gen.BehaviourRun, "_step", lambda run: run.steps, 250,
                                                            signal.SIGTERM)),
    # stopped in the medium rollouts (16 environments, 5 steps each), at an environment's third step
    "hopper-medium": (dict(max_steps=300, size=80), (gen.EpisodeRecorder, "step", lambda rec: rec.steps, 3,
                                                     signal.SIGINT)),
}


@pytest.mark.parametrize("name", list(RESUME_CASES))
def test_a_stopped_and_resumed_generation_equals_an_uninterrupted_one(name, root, tmp_path, monkeypatch):
    settings, (cls, method, count, at, signum) = RESUME_CASES[name]
    if name != "hopper-medium-replay":
        monkeypatch.setitem(gen.MEDIUM_SCORE, "hopper", -100.0)  # reached at the first evaluation

    def generate(**kwargs):
        try:
            return gen.generate_dataset(name, **kwargs)
        except PartialDatasetError as err:
            return err.dataset_id

    expected = stored(generate(**settings, **TINY))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "stopped"))
    undo = signal_after(monkeypatch, cls, method, count, at, signum)
    with pytest.raises(GenerationStopped) as stopped:
        gen.generate_dataset(name, **settings, **TINY)
    undo()
    signame = signal.Signals(signum).name
    assert f"stopped by {signame}" in str(stopped.value) and f"--env {name} --resume" in str(stopped.value)
    assert stopped.value.exit_code == {"SIGINT": 130, "SIGTERM": 143}[signame]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are restored
    resumed = stored(generate(resume=True, progress=False))
    for got, want in zip(resumed[0], expected[0], strict=True):
        for got_field, want_field in zip(got, want, strict=True):
            np.testing.assert_array_equal(got_field, want_field)
    assert resumed[1] == expected[1]


@pytest.mark.parametrize("steps, lengths, complete", [(0, [], []), (3, [3], [True]), (5, [3, 2], [True, False]),
                                                      (8, [3, 4, 1], [True, True, False]), (20, [3, 4, 2], [True, True, False])])
def test_recorder_cut_keeps_the_first_transitions(steps, lengths, complete):
    rec = gen.EpisodeRecorder()
    for length, ends in ((3, True), (4, True), (2, False)):  # two finished episodes, then a running one
        rec.start(np.zeros(2))
        for t in range(length):
            rec.step(np.ones(1), float(t), np.full(2, t + 1.0), ends and t == length - 1, False)
    rec.cut(steps)
    assert [len(ep.rewards) for ep in rec.episodes] == lengths and rec.complete == complete
    assert rec.steps == sum(lengths)
    for ep in rec.episodes:
        assert len(ep.observations) == len(ep.actions) + 1 and ep.truncations[-1] != ep.terminations[-1]


def test_rollouts_in_several_environments_record_each_share_as_its_own_episodes():
    policy = gen.TD3(11, 3, 1.0, (16, 16)).actor
    rec = gen.EpisodeRecorder()
    assert gen.rollouts("hopper", policy, 50, rec, seed=3, noise=0.1, progress=False, desc="", envs=4)
    assert rec.steps == 50 == sum(len(ep.rewards) for ep in rec.episodes)
    assert [ep.id for ep in rec.episodes] == list(range(len(rec.episodes)))
    assert rec.complete.count(False) == 4  # each environment's last episode is cut by its share (13, 13, 12, 12)
    starts = [ep.observations[0] for ep in rec.episodes]
    assert len({tuple(o) for o in starts}) == len(starts)  # every reset differs (seeds 3..6, then their RNGs)
    for ep in rec.episodes:
        assert len(ep.observations) == len(ep.actions) + 1 and (np.abs(ep.actions) <= 1).all()
        assert ep.terminations[-1] or ep.truncations[-1]
    again = gen.EpisodeRecorder()
    gen.rollouts("hopper", policy, 50, again, seed=3, noise=0.1, progress=False, desc="", envs=4)
    for a, b in zip(rec.episodes, again.episodes, strict=True):
        np.testing.assert_array_equal(a.observations, b.observations)


def test_resume_without_a_stopped_generation_is_one_line(root, capsys):
    assert gen.main(["--env", "hopper-medium-replay", "--resume", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no stopped generation of hopper-medium-replay" in err[0]
    assert str(root / ".generation" / "hopper" / "medium-replay.pt") in err[0] and "without --resume" in err[0]
    assert gen.main(["--env", "hopper-random", "--resume", "--no-progress"]) == 1
    assert "generated in one go" in capsys.readouterr().err


def test_a_killed_generation_resumes_from_its_last_periodic_checkpoint(root, tmp_path, monkeypatch):
    """A run that dies without a word (kill -9, power cut: here an exception raised inside a step, so
    nothing is saved at the crash) continues from the checkpoint written every CHECKPOINT_EVERY_S."""
    settings = dict(max_steps=400, **TINY)
    try:
        gen.generate_dataset("hopper-medium-replay", **settings)
    except PartialDatasetError as err:
        expected = stored(err.dataset_id)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "killed"))
    monkeypatch.setattr(gen, "CHECKPOINT_EVERY_S", 0.0)  # stands in for five minutes: a checkpoint every step
    original = gen.BehaviourRun._step

    def dies_at_step_170(run):
        if run.steps == 170:
            raise SystemExit("killed")
        original(run)

    monkeypatch.setattr(gen.BehaviourRun, "_step", dies_at_step_170)
    with pytest.raises(SystemExit):
        gen.generate_dataset("hopper-medium-replay", **settings)
    monkeypatch.setattr(gen.BehaviourRun, "_step", original)
    with pytest.raises(DatasetError, match="--resume"):  # a fresh start would lose it: refused
        gen.generate_dataset("hopper-medium-replay", **settings)
    with pytest.raises(PartialDatasetError) as err:
        gen.generate_dataset("hopper-medium-replay", resume=True, progress=False)
    resumed = stored(err.value.dataset_id)
    for got, want in zip(resumed[0], expected[0], strict=True):
        for got_field, want_field in zip(got, want, strict=True):
            np.testing.assert_array_equal(got_field, want_field)
    assert resumed[1] == expected[1]


@pytest.mark.parametrize("kind", ["medium", "medium-expert"])
def test_the_medium_stage_of_a_medium_replay_run_is_reused(kind, root, tmp_path, monkeypatch, capsys):
    """medium and medium-expert continue medium-replay's TD3 run from its medium level, and store the
    same dataset as a generation that trains its own run."""
    monkeypatch.setitem(gen.MEDIUM_SCORE, "hopper", -100.0)  # reached at the first evaluation
    settings = dict(max_steps=300, size=80, **TINY)
    expected = stored(gen.generate_dataset(f"hopper-{kind}", **settings))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "shared"))
    gen.generate_dataset("hopper-medium-replay", **settings)
    capsys.readouterr()
    trained, step = [], gen.BehaviourRun._step
    monkeypatch.setattr(gen.BehaviourRun, "_step", lambda run: (trained.append(run.steps), step(run))[1])
    reused = stored(gen.generate_dataset(f"hopper-{kind}", **settings))
    assert "continuing the medium-replay generation's TD3 run from the medium level (step 100" in capsys.readouterr().err
    # the medium stage was not trained again (its step-100 evaluation was read at step 200, where it ended)
    assert min(trained, default=200) >= 200
    for got, want in zip(reused[0], expected[0], strict=True):
        for got_field, want_field in zip(got, want, strict=True):
            np.testing.assert_array_equal(got_field, want_field)
    stage = reused[1].pop("medium_stage")
    assert stage["from"] == "medium-replay" and stage["step_cap"] == 300
    assert reused[1] == expected[1]


def test_a_medium_level_run_with_other_settings_is_not_reused(root, monkeypatch, capsys):
    monkeypatch.setitem(gen.MEDIUM_SCORE, "hopper", -100.0)
    gen.generate_dataset("hopper-medium-replay", max_steps=300, **TINY)
    info = metadata(root, gen.generate_dataset("hopper-medium", max_steps=300, size=40, **dict(TINY, seed=1)))["fastbdm"]
    assert "medium_stage" not in info and "has other settings" in capsys.readouterr().err
