"""End to end through the training command on a tiny halfcheetah-shaped npz dataset."""
import json
import multiprocessing
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest
import torch
from datasets import ACT, OBS, write_tiny_npz

from fastbdm import TD3SBC, TD3SBCConfig
from fastbdm import run_record
from fastbdm import train as train_cli
from fastbdm.checkpoint import load_checkpoint
from fastbdm.presets import ALGOS

FAST = ["--batch-size", "32", "--eval-episodes", "2", "--threads", "1", "--no-progress", "--device", "cpu",
        "--no-async-eval"]  # one test runs the evaluation worker process


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_npz(tmp_path_factory.mktemp("data") / "tiny.npz", rows=400)


def rows(run_dir):
    """metrics.jsonl rows without the wall-clock column."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        row.pop("updates_per_s")
        out.append(row)
    return out


def run(dataset, out, *extra):
    return train_cli.main(["--env", "halfcheetah-medium-replay", "--dataset", str(dataset), "--out", str(out),
                           *FAST, *extra])


def test_cli_trains_evaluates_and_writes_a_run(dataset, tmp_path):
    cmd = [sys.executable, "-m", "fastbdm.train", "--env", "halfcheetah-medium-replay", "--dataset", str(dataset),
           "--out", str(tmp_path), "--steps", "60", "--eval-every", "30", "--log-every", "10", *FAST]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "w_actor_bc=0.01" in lines[0] and "w_critic_bc=0.001" in lines[0] and "w_rel=0.1" in lines[0]
    assert lines[-1].startswith("final normalised score: ")
    run_dir = tmp_path / "halfcheetah-medium-replay" / "seed0"
    for name in ("config.json", "metrics.csv", "metrics.jsonl", "checkpoint.pt"):
        assert (run_dir / name).is_file(), name
    metrics = rows(run_dir)
    assert [r["step"] for r in metrics] == [10, 20, 30, 40, 50, 60]
    evals = [r for r in metrics if "eval_score" in r]
    assert [r["step"] for r in evals] == [30, 60]
    assert float(lines[-1].split()[3]) == pytest.approx(evals[-1]["eval_score"], abs=0.05)
    assert all(np.isfinite(r["critic_loss"]) and np.isfinite(r["sbc"]) for r in metrics)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["w_actor_bc"] == 0.01 and config["steps"] == 60
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"step", "critic_loss", "bdm_loss", "sbc", "bc", "q_mean", "eval_score", "updates_per_s"} <= set(header)
    state = load_checkpoint(run_dir / "checkpoint.pt", "cpu")
    assert state["step"] == 60
    agent = TD3SBC(OBS, ACT)
    agent.load_state_dict(state["agent"])


@pytest.mark.parametrize("algo", ALGOS)
def test_resume_reproduces_an_uninterrupted_run(dataset, tmp_path, capsys, algo):
    common = ["--algo", algo, "--eval-every", "20", "--log-every", "10", "--checkpoint-every", "20", "--seed", "3"]
    assert run(dataset, tmp_path / "whole", "--steps", "40", *common) == 0
    assert capsys.readouterr().out.startswith(f"preset halfcheetah-medium-replay, algo {algo}: ")
    assert run(dataset, tmp_path / "split", "--steps", "20", *common) == 0
    assert run(dataset, tmp_path / "split", "--steps", "40", "--resume", *common) == 0
    run_dir = tmp_path / "split" / "halfcheetah-medium-replay" / "seed3"
    whole = rows(tmp_path / "whole" / "halfcheetah-medium-replay" / "seed3")
    split = rows(run_dir)
    assert [r["step"] for r in split] == [10, 20, 30, 40]
    assert split == whole
    # the same columns for every algorithm; the terms it does not have are empty, not NaN
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == list(train_cli.COLUMNS)
    assert all(("sbc" in r and "bdm_loss" in r and "data_loss" in r) == (algo == "td3sbc") for r in split)
    assert all(np.isfinite(r["critic_loss"]) and np.isfinite(r["bc"]) for r in split)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["algo"] == config["config"]["algo"] == algo
    state = load_checkpoint(run_dir / "checkpoint.pt", "cpu")
    fresh = TD3SBC(OBS, ACT, config=TD3SBCConfig.for_algo(algo))
    assert state["algo"] == algo and set(state["optimizers"]) == set(fresh.optimizers)


def test_batch_size_default_per_algorithm_and_the_rebrac_note(dataset, tmp_path, capsys):
    common = ["--env", "halfcheetah-medium-replay", "--dataset", str(dataset), "--steps", "2", "--eval-every", "2",
              "--eval-episodes", "1", "--threads", "1", "--no-progress", "--device", "cpu", "--no-async-eval"]
    assert train_cli.main([*common, "--algo", "td3bc", "--out", str(tmp_path / "td3bc")]) == 0
    out = capsys.readouterr().out
    assert "algo td3bc: batch_size=256 (td3bc's default), alpha=2.5, lr=0.0003" in out
    assert "critic_layer_norm=False" in out and "note:" not in out
    config = json.loads((tmp_path / "td3bc" / "halfcheetah-medium-replay" / "seed0" / "config.json").read_text())
    assert config["batch_size"] == 256 and config["config"]["critic_hidden"] == [256, 256]
    assert train_cli.main([*common, "--w-rel", "0", "--batch-size", "8", "--seeds", "0", "1",
                           "--out", str(tmp_path / "w_rel0")]) == 0
    out = capsys.readouterr().out
    assert "algo td3sbc: batch_size=8 (--batch-size)" in out
    assert out.count("note: --algo td3sbc with w_rel 0 learns what --algo rebrac learns") == 1


def nan_bdm_loss_at_update_27(monkeypatch):
    original = TD3SBC._updates  # what update and update_pair both run

    def updates_with_nan(self, steps):
        all_metrics = original(self, steps)
        for number, metrics in enumerate(all_metrics, start=self.num_updates - len(all_metrics) + 1):
            if number == 27:
                metrics["bdm_loss"] = metrics["bdm_loss"] * float("nan")
        return all_metrics

    monkeypatch.setattr(TD3SBC, "_updates", updates_with_nan)


def test_divergence_guard_names_term_and_step_and_keeps_checkpoint(dataset, tmp_path, monkeypatch, capsys):
    nan_bdm_loss_at_update_27(monkeypatch)
    code = run(dataset, tmp_path, "--steps", "60", "--log-every", "10", "--checkpoint-every", "20",
               "--eval-every", "1000")
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert "bdm_loss" in err[0] and "update 27" in err[0] and "checkpoint" in err[0]
    state = load_checkpoint(tmp_path / "halfcheetah-medium-replay" / "seed0" / "checkpoint.pt", "cpu")
    assert state["step"] == 20


@pytest.mark.parametrize("argv,message", [
    (["--env", "halfcheetah-medium-replays"], "halfcheetah-medium-replay"),
    (["--steps", "0"], "--steps"),
    (["--device", "cuda"], "CUDA"),
    (["--backend", "torch", "--precision", "bf16"], "use backend 'triton'"),
    (["--algo", "rebrac", "--w-rel", "0.1"], "rebrac has no state-BC term"),
    (["--seeds", "0", "1", "0"], "--seeds 0 1 0: give each seed once"),
    (["--seeds-per-batch", "0"], "--seeds-per-batch must be a positive integer"),
    (["--seeds", "0", "1", "--no-seed-batch", "--seeds-per-batch", "2"], "pass one of the two"),
    (["--seeds", "0", "1", "--streams", "2"], "add --no-seed-batch or drop --streams 2"),
])
def test_bad_arguments_give_one_line_errors(dataset, tmp_path, capsys, argv, message):
    if argv[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        argv = ["--batch-size", "0"]
        message = "--batch-size"
    code = train_cli.main(["--dataset", str(dataset), "--out", str(tmp_path), "--no-progress", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]


def test_existing_run_needs_resume(dataset, tmp_path, capsys):
    assert run(dataset, tmp_path, "--steps", "4", "--eval-every", "4") == 0
    assert run(dataset, tmp_path, "--steps", "8", "--eval-every", "4") == 2
    assert "--resume" in capsys.readouterr().err
    assert run(dataset, tmp_path, "--steps", "8", "--eval-every", "4", "--resume", "--algo", "rebrac") == 2
    assert "trained with --algo td3sbc; pass --algo td3sbc" in capsys.readouterr().err


def test_several_seeds_run_one_after_another(dataset, tmp_path, capsys):
    assert run(dataset, tmp_path, "--steps", "4", "--eval-every", "4", "--seeds", "0", "1") == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("final normalised score: ") and "2 seeds" in out[-1]
    finals = [float(line.split("score ")[1].split()[0]) for line in out if line.startswith("seed ")]
    assert [line.split(":")[0] for line in out if line.startswith("seed ")] == ["seed 0", "seed 1"]
    # the last line: mean +- sample std over the seeds (of the unrounded scores: within the rounding of the
    # printed ones, 0.05 each), then each seed's
    mean, std = (float(x) for x in out[-1].split(": ")[1].split(" (")[0].split(" +- "))
    assert abs(mean - statistics.fmean(finals)) <= 0.1 and abs(std - statistics.stdev(finals)) <= 0.15
    assert f"seed 0 {finals[0]:.1f}, seed 1 {finals[1]:.1f}" in out[-1]
    metrics = [rows(tmp_path / "halfcheetah-medium-replay" / f"seed{k}") for k in (0, 1)]
    assert metrics[0][-1]["critic_loss"] != metrics[1][-1]["critic_loss"]


def test_background_evaluation_writes_the_same_run_as_inline(dataset, tmp_path, monkeypatch):
    """Evaluating CPU snapshots in a worker process while updates go on changes neither the evaluations
    nor the rows' order, and every checkpoint comes after the rows up to its step."""
    written_before_checkpoint = []
    save = run_record.save_checkpoint

    def save_after_rows(path, state):
        written_before_checkpoint.append((state["step"], rows(path.parent)[-1]["step"]))
        save(path, state)

    monkeypatch.setattr(run_record, "save_checkpoint", save_after_rows)
    common = ["--steps", "40", "--eval-every", "10", "--log-every", "5", "--checkpoint-every", "20", "--seed", "2"]
    assert run(dataset, tmp_path / "inline", "--no-async-eval", *common) == 0
    assert run(dataset, tmp_path / "background", "--async-eval", *common) == 0
    inline = rows(tmp_path / "inline" / "halfcheetah-medium-replay" / "seed2")
    background = rows(tmp_path / "background" / "halfcheetah-medium-replay" / "seed2")
    assert [r["step"] for r in background] == list(range(5, 45, 5))
    assert [r["step"] for r in background if "eval_score" in r] == [10, 20, 30, 40]
    assert background == inline
    assert written_before_checkpoint == [(20, 20), (40, 40)] * 2


class FailingPolicy:
    """Stands in for a policy snapshot whose evaluation fails in the worker process."""

    def __call__(self, obs):
        raise FloatingPointError("simulation unstable\nMuJoCo warning ...")


def test_errors_keep_the_rows_before_them_and_worker_failures_are_one_line(dataset, tmp_path, monkeypatch, capsys):
    nan_bdm_loss_at_update_27(monkeypatch)
    args = ["--steps", "60", "--log-every", "10", "--eval-every", "10", "--checkpoint-every", "1000", "--async-eval"]
    assert run(dataset, tmp_path / "nan", *args) == 2
    assert "update 27" in capsys.readouterr().err
    assert [r["step"] for r in rows(tmp_path / "nan" / "halfcheetah-medium-replay" / "seed0")] == [10, 20]

    monkeypatch.undo()
    monkeypatch.setattr(TD3SBC, "cpu_policy", lambda self: FailingPolicy())
    assert run(dataset, tmp_path / "worker", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: the evaluation at update 10 failed in the worker process (simulation unstable); "
                   "--no-async-eval runs it inline"]


def test_background_evaluation_is_the_default_while_a_core_is_free(dataset, tmp_path):
    cores = len(os.sched_getaffinity(0))
    for threads in (1, cores):
        out = tmp_path / f"threads{threads}"
        assert train_cli.main(["--env", "halfcheetah-medium-replay", "--dataset", str(dataset), "--out", str(out),
                               "--steps", "2", "--eval-every", "2", "--batch-size", "8", "--eval-episodes", "1",
                               "--threads", str(threads), "--no-progress", "--device", "cpu"]) == 0
        config = json.loads((out / "halfcheetah-medium-replay" / "seed0" / "config.json").read_text())
        assert config["async_eval"] == (threads < cores)


def test_main_refuses_to_run_inside_the_evaluation_worker_bootstrap(monkeypatch):
    """An unguarded user script re-imported by the spawned worker must not train a second time."""
    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(SystemExit, match="if __name__ == '__main__'"):
        train_cli.main(["--steps", "1"])


RESUME = ["--eval-every", "20", "--log-every", "10", "--checkpoint-every", "20", "--seed", "3"]


def test_resume_from_a_half_checkpoint_continues_from_the_previous_one(dataset, tmp_path, capsys):
    """A power cut left checkpoint.pt (update 40) cut to half its size and a torn last metrics line."""
    assert run(dataset, tmp_path / "direct", "--steps", "20", *RESUME) == 0
    assert run(dataset, tmp_path / "direct", "--steps", "60", "--resume", *RESUME) == 0
    assert run(dataset, tmp_path / "cut", "--steps", "40", *RESUME) == 0
    run_dir = tmp_path / "cut" / "halfcheetah-medium-replay" / "seed3"
    latest = run_dir / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:latest.stat().st_size // 2])
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 50, "updates_per')
    capsys.readouterr()
    assert run(dataset, tmp_path / "cut", "--steps", "60", "--resume", *RESUME) == 0
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 2 and "truncated" in notes[0] and "checkpoint.prev.pt at update 20" in notes[0]
    assert "metrics.jsonl line 5 was cut short" in notes[1]
    assert rows(run_dir) == rows(tmp_path / "direct" / "halfcheetah-medium-replay" / "seed3")
    assert [r["step"] for r in rows(run_dir)] == [10, 20, 30, 40, 50, 60]


def test_resume_from_a_format_1_checkpoint(dataset, tmp_path):
    """A checkpoint as fastbdm wrote it up to commit 6ed2166 (plain torch.save, numpy RNG state as a tuple)."""
    from test_checkpoint import format_1

    assert run(dataset, tmp_path / "whole", "--steps", "40", *RESUME) == 0
    assert run(dataset, tmp_path / "old", "--steps", "20", *RESUME) == 0
    path = tmp_path / "old" / "halfcheetah-medium-replay" / "seed3" / "checkpoint.pt"
    torch.save(format_1(load_checkpoint(path, "cpu")), path)
    assert run(dataset, tmp_path / "old", "--steps", "40", "--resume", *RESUME) == 0
    assert rows(tmp_path / "old" / "halfcheetah-medium-replay" / "seed3") == rows(
        tmp_path / "whole" / "halfcheetah-medium-replay" / "seed3")


def test_resume_refuses_a_checkpoint_that_would_create_a_file(dataset, tmp_path, capsys):
    from test_checkpoint import CreatesFile

    run_dir = tmp_path / "halfcheetah-medium-replay" / "seed0"
    run_dir.mkdir(parents=True)
    torch.save({"step": 1, "agent": CreatesFile(tmp_path / "created"), "rng": {}}, run_dir / "checkpoint.pt")
    assert run(dataset, tmp_path, "--steps", "4", "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused" in err[0] and "open" in err[0]
    assert not (tmp_path / "created").exists()


def test_a_failed_checkpoint_save_is_one_line_and_keeps_the_rows_and_previous_checkpoint(dataset, tmp_path,
                                                                                        monkeypatch, capsys):
    from test_checkpoint import fail_writes_to

    save = run_record.save_checkpoint

    def second_save_hits_a_full_disk(path, state):
        if state["step"] == 40:
            fail_writes_to("checkpoint.pt.tmp", monkeypatch)
        save(path, state)

    monkeypatch.setattr(run_record, "save_checkpoint", second_save_hits_a_full_disk)
    assert run(dataset, tmp_path, "--steps", "60", *RESUME) == 2
    err = capsys.readouterr().err.strip().splitlines()
    run_dir = tmp_path / "halfcheetah-medium-replay" / "seed3"
    assert len(err) == 1 and f"cannot write checkpoint.pt in {run_dir}: No space left on device" in err[0]
    assert "MB free there" in err[0] and "previous checkpoint and every metric row are kept" in err[0]
    assert not (run_dir / "checkpoint.pt.tmp").exists()
    assert load_checkpoint(run_dir / "checkpoint.pt", "cpu")["step"] == 20
    assert [r["step"] for r in rows(run_dir)] == [10, 20, 30, 40]


def test_a_disk_without_room_for_the_checkpoints_stops_the_run_at_start(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_record.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 10_000_000})())
    assert run(dataset, tmp_path, "--steps", "4") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has 10.0 MB free but the run's checkpoints need" in err[0]
    assert not (tmp_path / "halfcheetah-medium-replay" / "seed0" / "metrics.jsonl").exists()


def test_metric_rows_are_on_disk_before_the_checkpoint_that_counts_on_them(dataset, tmp_path, monkeypatch):
    synced = []
    fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    assert run(dataset, tmp_path, "--steps", "4", "--eval-every", "4") == 0
    checkpoint = synced.index("checkpoint.pt.tmp")
    assert {"metrics.csv", "metrics.jsonl"} <= set(synced[checkpoint - 2:checkpoint])
@pytest.mark.parametrize("precision, before, during", [("tf32", False, True), ("bf16", False, True),
                                                       ("ieee", True, False), ("tf32x3", True, False)])
def test_precision_sets_torch_matmuls_while_training_and_restores_them(dataset, tmp_path, monkeypatch, precision,
                                                                       before, during):
    """--precision decides whether torch's matmuls of the update run in TF32 on CUDA (the flag no CPU
    matmul reads, so it is observable here): set inside the trainer, the previous value back after,
    also when the run fails."""
    seen = []

    def train_batch(args, records, device, transitions, config, run):
        seen.append(torch.backends.cuda.matmul.allow_tf32)
        if len(seen) == 2:
            raise train_cli.TrainingError("stop")
        return [0.0] * len(records)

    monkeypatch.setattr(train_cli, "train_batch", train_batch)
    # the CPU refuses bf16 and tf32x3 (Triton on CUDA only): skip that check to see what the trainer sets
    monkeypatch.setattr(train_cli, "kernel_backend", lambda args, device: "triton")
    outside = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = before
    try:
        assert run(dataset, tmp_path, "--precision", precision, "--seeds", "0", "1", "--no-seed-batch") == 2
        assert seen == [during, during]
        assert torch.backends.cuda.matmul.allow_tf32 is before
    finally:
        torch.backends.cuda.matmul.allow_tf32 = outside


def test_importing_fastbdm_changes_no_torch_setting():
    """The matmul precision is the trainer's business: importing the package (and its trainer, ops and
    kernels) leaves torch's global numerics settings as they were."""
    code = ("import torch\n"
            "def settings():\n"
            "    return (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision(),\n"
            "            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,\n"
            "            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction)\n"
            "before = settings()\n"
            "import fastbdm, fastbdm.train, fastbdm.ops, fastbdm.backends\n"
            "assert settings() == before, (before, settings())\n")
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
def test_config_records_the_datasets_provenance_and_evaluation_environment(dataset, tmp_path, capsys):
    """An npz file with D4RL's keys is evaluated in gymnasium's v4 environment (D4RL's models)."""
    assert run(dataset, tmp_path, "--steps", "2", "--eval-every", "2") == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("preset halfcheetah-medium-replay, algo td3sbc: ") and first.endswith(" | eval env HalfCheetah-v4")
    config = json.loads((tmp_path / "halfcheetah-medium-replay" / "seed0" / "config.json").read_text())
    assert config["eval_env"] == "HalfCheetah-v4" and config["allow_partial_dataset"] is False
    assert config["dataset"] == {"source": str(dataset), "source_kind": "npz", "transitions": 396,
                                 "env_id": "HalfCheetah-v4"}


def test_eval_env_override_and_its_size_check(dataset, tmp_path, capsys):
    assert run(dataset, tmp_path / "v5", "--steps", "2", "--eval-every", "2", "--eval-env", "HalfCheetah-v5") == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(" | eval env HalfCheetah-v5")
    config = json.loads((tmp_path / "v5" / "halfcheetah-medium-replay" / "seed0" / "config.json").read_text())
    assert config["eval_env"] == "HalfCheetah-v5" and config["dataset"]["env_id"] == "HalfCheetah-v4"
    for env, message in (("Hopper-v4", "observations (11,) and actions (3,), but the data have (17,) and (6,)"),
                         ("HalfCheeta-v4", "no such gymnasium environment; did you mean HalfCheetah-v4")):
        assert run(dataset, tmp_path / env, "--steps", "2", "--eval-env", env) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--eval-env {env}" in err[0] and message in err[0], err


def test_a_generation_short_of_its_level_is_refused_unless_allowed(tmp_path, monkeypatch, capsys):
    """The training command generates hopper-medium-replay (tiny TD3, step cap 120: far below the medium
    level), refuses to train on it with one line, then trains on it with --allow-partial-dataset."""
    from fastbdm.data import generate as gen

    for var, sub in (("HOME", "home"), ("D4RL_DATASET_DIR", "d4rl"), ("MINARI_DATASETS_PATH", "minari")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    original = gen.generate_dataset
    tiny_td3 = dict(warmup=50, hidden=(16, 16), batch_size=16, eval_every=100, eval_episodes=1)
    monkeypatch.setattr(gen, "generate_dataset", lambda name, **kw: original(name, **{**kw, **tiny_td3}))
    argv = ["--env", "hopper-medium-replay", "--out", str(tmp_path / "runs"), "--generate-steps", "120",
            "--steps", "2", "--eval-every", "2", *FAST]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "short of the medium level" in err[0] and "normalised 45" in err[0], err
    assert "--max-steps" in err[0] and "--time-budget" in err[0] and "--allow-partial-dataset" in err[0]
    assert not (tmp_path / "runs" / "hopper-medium-replay").exists()

    assert train_cli.main([*argv, "--allow-partial-dataset"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    score_lines = [line for line in out if line.startswith(("seed 0: final", "final normalised score"))]
    assert len(score_lines) == 2 and all("(partial dataset: level " in line and " of 45)" in line
                                         for line in score_lines)
    config = json.loads((tmp_path / "runs" / "hopper-medium-replay" / "seed0" / "config.json").read_text())
    assert config["allow_partial_dataset"] is True and config["eval_env"] == "Hopper-v5"
    provenance = config["dataset"]
    assert provenance["source"] == "minari:fastbdm/hopper/medium-replay-partial-v0"
    assert provenance["source_kind"] == "generated" and provenance["transitions"] == 119  # one timeout row dropped
    assert provenance["level"]["partial"] is True and provenance["level"]["steps"] == 120
    assert provenance["level"]["wanted_score"] == 45.0


def test_a_run_directory_in_use_by_another_process_is_refused(dataset, tmp_path, capsys):
    import fcntl

    run_dir = tmp_path / "halfcheetah-medium-replay" / "seed0"
    run_dir.mkdir(parents=True)
    with (run_dir / ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the first training process holds it
        assert run(dataset, tmp_path, "--steps", "4") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "in use by another training process" in err[0]
    assert not (run_dir / "metrics.jsonl").exists()
    assert run(dataset, tmp_path, "--steps", "4") == 0  # released: the run goes ahead
