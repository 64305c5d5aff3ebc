"""End to end through the training command on a tiny halfcheetah-shaped npz dataset."""
import json
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastbdm import TD3SBC
from fastbdm import train as train_cli

OBS, ACT = 17, 6
FAST = ["--batch-size", "32", "--eval-episodes", "2", "--threads", "1", "--no-progress", "--device", "cpu",
        "--no-async-eval"]  # one test runs the evaluation worker process


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    rows, episode = 400, 100
    obs = rng.normal(size=(rows + 1, OBS)).astype(np.float32)
    timeouts = np.zeros(rows, bool)
    timeouts[episode - 1::episode] = True
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, observations=obs[:-1], next_observations=obs[1:],
             actions=rng.uniform(-1, 1, (rows, ACT)).astype(np.float32),
             rewards=rng.normal(size=rows).astype(np.float32), terminals=np.zeros(rows, bool), timeouts=timeouts)
    return path


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
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert state["step"] == 60
    agent = TD3SBC(OBS, ACT)
    agent.load_state_dict(state["agent"])


def test_resume_reproduces_an_uninterrupted_run(dataset, tmp_path):
    common = ["--eval-every", "20", "--log-every", "10", "--checkpoint-every", "20", "--seed", "3"]
    assert run(dataset, tmp_path / "whole", "--steps", "40", *common) == 0
    assert run(dataset, tmp_path / "split", "--steps", "20", *common) == 0
    assert run(dataset, tmp_path / "split", "--steps", "40", "--resume", *common) == 0
    whole = rows(tmp_path / "whole" / "halfcheetah-medium-replay" / "seed3")
    split = rows(tmp_path / "split" / "halfcheetah-medium-replay" / "seed3")
    assert [r["step"] for r in split] == [10, 20, 30, 40]
    assert split == whole


def nan_bdm_loss_at_update_27(monkeypatch):
    original = TD3SBC.update

    def update_with_nan(self, batch):
        metrics = original(self, batch)
        if self.num_updates == 27:
            metrics["bdm_loss"] = metrics["bdm_loss"] * float("nan")
        return metrics

    monkeypatch.setattr(TD3SBC, "update", update_with_nan)


def test_divergence_guard_names_term_and_step_and_keeps_checkpoint(dataset, tmp_path, monkeypatch, capsys):
    nan_bdm_loss_at_update_27(monkeypatch)
    code = run(dataset, tmp_path, "--steps", "60", "--log-every", "10", "--checkpoint-every", "20",
               "--eval-every", "1000")
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert "bdm_loss" in err[0] and "update 27" in err[0] and "checkpoint" in err[0]
    state = torch.load(tmp_path / "halfcheetah-medium-replay" / "seed0" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 20


@pytest.mark.parametrize("argv,message", [
    (["--env", "halfcheetah-medium-replays"], "halfcheetah-medium-replay"),
    (["--steps", "0"], "--steps"),
    (["--device", "cuda"], "CUDA"),
    (["--backend", "torch", "--precision", "bf16"], "use backend 'triton'"),
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


def test_several_seeds_run_one_after_another(dataset, tmp_path, capsys):
    assert run(dataset, tmp_path, "--steps", "4", "--eval-every", "4", "--seeds", "0", "1") == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("final normalised score: ") and "2 seeds" in out[-1]
    assert [line.split(":")[0] for line in out if line.startswith("seed ")] == ["seed 0", "seed 1"]
    metrics = [rows(tmp_path / "halfcheetah-medium-replay" / f"seed{k}") for k in (0, 1)]
    assert metrics[0][-1]["critic_loss"] != metrics[1][-1]["critic_loss"]


def test_background_evaluation_writes_the_same_run_as_inline(dataset, tmp_path, monkeypatch):
    """Evaluating CPU snapshots in a worker process while updates go on changes neither the evaluations
    nor the rows' order, and every checkpoint comes after the rows up to its step."""
    written_before_checkpoint = []
    save = train_cli.save_checkpoint

    def save_after_rows(path, state):
        written_before_checkpoint.append((state["step"], rows(path.parent)[-1]["step"]))
        save(path, state)

    monkeypatch.setattr(train_cli, "save_checkpoint", save_after_rows)
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


def test_config_records_the_datasets_provenance_and_evaluation_environment(dataset, tmp_path, capsys):
    """An npz file with D4RL's keys is evaluated in gymnasium's v4 environment (D4RL's models)."""
    assert run(dataset, tmp_path, "--steps", "2", "--eval-every", "2") == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("preset halfcheetah-medium-replay: ") and first.endswith(" | eval env HalfCheetah-v4")
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
