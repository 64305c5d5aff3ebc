"""The training command with several seeds in one batched run (fastbdm.seed_runs): a seed trains alike in
a batch and alone, batched runs resume (also after SIGKILL, and one seed alone), the batch is capped by
--seeds-per-batch and by the device's memory.

Tolerance (ALIKE): a seed in a batch runs SeedBatch's vmapped update, alone TD3SBC.update, on the same
batches and noise (its own generator): the arithmetic differs in the matmuls' blocking, fp32 rounding of
~1e-7 (tests/test_seed_batch.py). Over 40 updates Adam amplifies it where a gradient element is near
zero (its sign decides a step of ~lr), and the training's chaos spreads that element's difference:
with the update streams of fastbdm.update_draws seed 1's critic_loss and q_mean moved by up to 2e-2
relative at update 40 (one critic weight off by 6e-4 after the first pair), the other terms by 1e-7 to
1e-3; over five update streams the median relative difference of all rows' terms was at most 2e-5.
So: every term within 10 %, the median within 1e-3. A seed that drew another seed's batches or noise,
or the global stream, differs at O(1) (seed 0 or 2 against seed 1: median 4e-2 to 8e-2, terms up to 20x).
Evaluation returns are left out: MuJoCo amplifies 1e-7 differences in actions chaotically (one episode's return
moved by 54 of 290 at update 20), so only the training terms are compared.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from datasets import write_tiny_npz

from fastbdm import TD3SBC, TD3SBCConfig
from fastbdm import seed_memory, seed_runs
from fastbdm import train as train_cli
from fastbdm.checkpoint import load_checkpoint

ENV = "halfcheetah-medium-replay"
FAST = ["--batch-size", "32", "--eval-episodes", "2", "--threads", "1", "--no-progress", "--device", "cpu",
        "--no-async-eval", "--log-every", "10"]
TRAINING_TERMS = ("critic_loss", "q_mean", "bdm_loss", "data_loss", "actor_loss", "bc", "sbc", "lambda")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_npz(tmp_path_factory.mktemp("data") / "tiny.npz", rows=400)


def run(dataset, out, *extra):
    return train_cli.main(["--env", ENV, "--dataset", str(dataset), "--out", str(out), *FAST, *extra])


def rows(out, seed):
    """seed's metrics.jsonl rows without the wall-clock column."""
    lines = (out / ENV / f"seed{seed}" / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "updates_per_s"} for line in lines]


def assert_alike(got, want):
    """The same rows, their training terms each within 10 % and their median relative difference within
    1e-3 (ALIKE, module docstring)."""
    assert [r["step"] for r in got] == [r["step"] for r in want]
    terms = [torch.tensor([[r[k] for k in TRAINING_TERMS] for r in rows], dtype=torch.float64) for rows in (got, want)]
    torch.testing.assert_close(*terms, rtol=0.1, atol=1e-6)
    relative = ((terms[0] - terms[1]).abs() / terms[1].abs().clamp(min=1e-6)).median()
    assert relative <= 1e-3, f"median relative difference of the training terms {relative:.1e}"


@pytest.fixture
def batch_sizes(monkeypatch):
    """The number of seeds of every run the command trains (seed_runs.build_learners' calls)."""
    sizes, build = [], seed_runs.build_learners

    def recording(records, *args):
        sizes.append(len(records))
        return build(records, *args)

    monkeypatch.setattr(seed_runs, "build_learners", recording)
    return sizes


def test_a_seed_trains_in_a_batch_as_it_does_alone(dataset, tmp_path, capsys, batch_sizes):
    assert run(dataset, tmp_path / "batch", "--steps", "40", "--eval-every", "1000", "--seeds", "0", "1", "2") == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert batch_sizes == [3]  # on the CPU all seeds in one batch by default
    assert out[-1].startswith("final normalised score: ") and "3 seeds: seed 0 " in out[-1]
    assert run(dataset, tmp_path / "alone", "--steps", "40", "--eval-every", "1000", "--seed", "1") == 0
    batched, alone = rows(tmp_path / "batch", 1), rows(tmp_path / "alone", 1)
    assert [r["step"] for r in alone] == [10, 20, 30, 40] and "eval_score" in alone[-1] and "eval_score" in batched[-1]
    assert_alike(batched, alone)
    with pytest.raises(AssertionError):  # the comparison tells seeds apart
        assert_alike(rows(tmp_path / "batch", 0), alone)
    configs = [json.loads((tmp_path / d / ENV / "seed1" / "config.json").read_text()) for d in ("batch", "alone")]
    assert configs[0] == configs[1] and configs[0]["seed"] == 1  # the run directory does not say how it trained
    state = load_checkpoint(tmp_path / "batch" / ENV / "seed1" / "checkpoint.pt", "cpu")
    single = load_checkpoint(tmp_path / "alone" / ENV / "seed1" / "checkpoint.pt", "cpu")
    assert state.keys() == single.keys() and state["agent"].keys() == single["agent"].keys()
    for name, opt in single["optimizers"].items():  # today's layout: per-parameter moments of one seed
        for index, moments in opt["state"].items():
            assert state["optimizers"][name]["state"][index]["exp_avg"].shape == moments["exp_avg"].shape
    # seed 1's update stream drew the same numbers in the batch as alone: it stands at the same state
    assert torch.equal(state["rng"]["updates"], single["rng"]["updates"])


def test_resume_of_a_batched_run_equals_an_uninterrupted_one_and_a_seed_resumes_alone(dataset, tmp_path):
    common = ["--eval-every", "20", "--checkpoint-every", "20", "--seeds", "0", "1"]
    assert run(dataset, tmp_path / "whole", "--steps", "40", *common) == 0
    assert run(dataset, tmp_path / "split", "--steps", "20", *common) == 0
    assert run(dataset, tmp_path / "split", "--steps", "40", "--resume", *common) == 0
    for seed in (0, 1):  # the same batched arithmetic: equal, not merely alike
        assert rows(tmp_path / "split", seed) == rows(tmp_path / "whole", seed)
    # seed 1 trained in the batch goes on alone, as the batch would have gone on
    assert run(dataset, tmp_path / "split", "--steps", "60", "--resume", "--seed", "1", "--eval-every", "20",
               "--checkpoint-every", "20") == 0
    assert run(dataset, tmp_path / "whole", "--steps", "60", "--resume", *common) == 0
    assert_alike(rows(tmp_path / "split", 1), rows(tmp_path / "whole", 1))
    assert load_checkpoint(tmp_path / "split" / ENV / "seed1" / "checkpoint.pt", "cpu")["step"] == 60


def test_a_killed_batched_run_resumes_every_seed(dataset, tmp_path):
    """SIGKILL once both seeds have a checkpoint (maybe while one is being written); --resume continues
    each seed from its checkpoint, seeds at different updates in different batches."""
    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "fastbdm.train", "--env", ENV, "--dataset", str(dataset), "--out", str(out), *FAST,
            "--steps", "100000", "--eval-every", "100000", "--checkpoint-every", "20", "--seeds", "0", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    checkpoints = [out / ENV / f"seed{seed}" / "checkpoint.pt" for seed in (0, 1)]
    deadline = time.monotonic() + 300
    while not all(path.exists() for path in checkpoints) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    steps = [load_checkpoint(path, "cpu")["step"] for path in checkpoints]
    target = max(steps) + 20
    resumed = ["--eval-every", "100000", "--checkpoint-every", "20", "--seeds", "0", "1", "--steps", str(target)]
    assert run(dataset, out, "--resume", *resumed) == 0
    assert run(dataset, tmp_path / "whole", *resumed) == 0
    for seed in (0, 1):
        assert_alike(rows(out, seed), rows(tmp_path / "whole", seed))
        assert load_checkpoint(out / ENV / f"seed{seed}" / "checkpoint.pt", "cpu")["step"] == target


@pytest.mark.parametrize("option, sizes", [(["--seeds-per-batch", "2", "--async-eval"], [2, 1]),  # + the worker
                                           (["--no-seed-batch"], [1, 1, 1])])
def test_seeds_per_batch_and_no_seed_batch(dataset, tmp_path, capsys, batch_sizes, option, sizes):
    assert run(dataset, tmp_path, "--steps", "20", "--eval-every", "20", "--seeds", "0", "1", "2", *option) == 0
    assert batch_sizes == sizes
    out = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in out if line.startswith("seed ")] == ["seed 0", "seed 1", "seed 2"]
    assert "3 seeds" in out[-1]
    for seed in (0, 1, 2):
        assert [r["step"] for r in rows(tmp_path, seed)] == [10, 20] and "eval_score" in rows(tmp_path, seed)[-1]


def test_a_batch_the_device_cannot_hold_is_refused_in_one_line(dataset, tmp_path, capsys, monkeypatch):
    """Free memory for 2 seeds (and the dataset): 3 seeds are refused naming --seeds-per-batch 2, which runs."""
    per_seed = seed_memory.seed_memory(TD3SBC(17, 6, config=TD3SBCConfig()), 32).total
    dataset_size = seed_memory.FLOAT * 396 * (2 * 17 + 2 * 6 + 3)  # 396 transitions, fp32 (see test_seed_memory)
    free = (dataset_size + 2.5 * per_seed) / seed_memory.HEADROOM
    monkeypatch.setattr(seed_memory, "free_memory", lambda device: int(free))
    assert run(dataset, tmp_path, "--steps", "10", "--eval-every", "10", "--seeds", "0", "1", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 3 seeds per batch need ")
    assert "pass --seeds-per-batch 2" in err[0]
    assert not (tmp_path / ENV / "seed0" / "metrics.jsonl").exists()
    assert run(dataset, tmp_path, "--steps", "10", "--eval-every", "10", "--seeds", "0", "1", "2",
               "--seeds-per-batch", "2") == 0
    monkeypatch.setattr(seed_memory, "free_memory", lambda device: dataset_size)
    assert run(dataset, tmp_path / "none", "--steps", "10", "--seed", "0") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seeds-per-batch 1 does not fit either: pass a smaller --batch-size" in err[0]


def test_divergence_in_a_batch_names_the_seed_and_keeps_every_checkpoint(dataset, tmp_path, monkeypatch, capsys):
    from fastbdm.seed_batch import SeedBatch

    original = SeedBatch.update

    def seed_1_nan_at_update_27(self, batch, noise, outputs=None):  # update_pair passes its frozen outputs
        metrics = original(self, batch, noise, outputs)
        if self.num_updates == 27:
            metrics["bdm_loss"] = metrics["bdm_loss"] * torch.tensor([1.0, float("nan")])
        return metrics

    monkeypatch.setattr(SeedBatch, "update", seed_1_nan_at_update_27)
    assert run(dataset, tmp_path, "--steps", "60", "--checkpoint-every", "20", "--eval-every", "1000",
               "--seeds", "0", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverged: seed 1's bdm_loss became NaN/inf at update 27" in err[0], err
    for seed in (0, 1):
        assert load_checkpoint(tmp_path / ENV / f"seed{seed}" / "checkpoint.pt", "cpu")["step"] == 20
        assert [r["step"] for r in rows(tmp_path, seed)] == [10, 20]


def test_the_progress_bar_score_over_seeds():
    assert seed_runs.score_postfix([12.34]) == "12.3"
    assert seed_runs.score_postfix([10.0, 20.0, 60.0]) == "30.0 (10.0..60.0)"


def test_wandb_logs_each_seed_of_a_batch_to_its_own_run(dataset, tmp_path, monkeypatch):
    """Two seeds' wandb runs are open at once in a batch (reinit "create_new"): each gets its seed's rows."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged, real_init = {}, wandb.init

    def spying_init(*args, **kwargs):
        run = real_init(*args, **kwargs)
        rows_of_run, real_log = logged.setdefault(kwargs["config"]["seed"], []), run.log
        run.log = lambda data, step=None: (rows_of_run.append((step, data)), real_log(data, step=step))[1]
        return run

    monkeypatch.setattr(wandb, "init", spying_init)
    assert run(dataset, tmp_path, "--steps", "20", "--eval-every", "20", "--seeds", "0", "1",
               "--wandb", "fastbdm-test") == 0
    for seed in (0, 1):
        expected = rows(tmp_path, seed)
        assert [step for step, _ in logged[seed]] == [r["step"] for r in expected] == [10, 20]
        assert [data["critic_loss"] for _, data in logged[seed]] == [r["critic_loss"] for r in expected]


def test_a_seed_trained_with_two_streams_learns_as_with_one_and_its_config_says_so(dataset, tmp_path):
    """--streams 2 (fastbdm.branches): on the CPU the side work runs inline, the same ops in the same order, so
    the rows are the same to the bit; config.json records the setting."""
    for streams in ("1", "2"):
        assert run(dataset, tmp_path / streams, "--steps", "20", "--eval-every", "1000", "--seed", "0",
                   "--streams", streams) == 0
    assert rows(tmp_path / "1", 0) == rows(tmp_path / "2", 0)
    configs = [json.loads((tmp_path / s / ENV / "seed0" / "config.json").read_text()) for s in ("1", "2")]
    assert [c["streams"] for c in configs] == [1, 2]
