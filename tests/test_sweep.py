"""fastbdm.sweep on a local Ray of 2 CPUs with a tiny dataset: the grid, skipping, a killed trial."""
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from datasets import write_tiny_npz

from fastbdm import report, sweep
from fastbdm import train as train_cli

ENV = "halfcheetah-medium-replay"
TINY = ["--batch-size", "16", "--eval-episodes", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_npz(tmp_path_factory.mktemp("data") / "tiny.npz", rows=300)


def metric_rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "updates_per_s"} for r in rows]


def one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


@pytest.mark.parametrize("grid,message", [
    ("wrel=0,0.1", "'wrel' is not a training option"),
    ("w_rel", "write KEY=V1,V2"),
    ("prediction=sample,x0", "invalid choice: 'x0'"),
    ("w_rel=0,abc", "invalid float value: 'abc'"),
    ("compat=maybe", "is a switch"),
    ("batch_size=0", "--batch-size must be a positive integer"),
    ("seed=1,2", "not a training option a grid can set"),
])
def test_bad_grid_input_is_one_line_before_anything_starts(dataset, tmp_path, capsys, grid, message):
    code = sweep.main(["--env", ENV, "--dataset", str(dataset), "--seeds", "0", "--grid", grid, "--steps", "4",
                       "--out", str(tmp_path / "out"), *TINY])
    assert code == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_missing_steps_and_sweep_owned_options_are_refused(dataset, tmp_path, capsys):
    assert sweep.main(["--env", ENV, "--out", str(tmp_path), "--dataset", str(dataset)]) == 2
    assert "--steps" in one_line_error(capsys)
    assert sweep.main(["--env", ENV, "--out", str(tmp_path), "--steps", "4", "--resume"]) == 2
    assert "--resume" in one_line_error(capsys)


def plan(dataset, out, *argv):
    args, passthrough = sweep.build_parser().parse_known_args(["--out", str(out), *argv])
    return sweep.plan(args, ["--dataset", str(dataset), "--steps", "4", *passthrough])


def test_plan_resolves_each_algorithms_batch_and_lets_the_grid_override_the_sweeps_defaults(dataset, tmp_path):
    trials = plan(dataset, tmp_path, "--env", ENV, "--grid", "algo=td3sbc,td3bc", "--grid", "threads=1,2",
                  "--grid", "async_eval=true,false")
    assert len(trials) == 8
    parser = train_cli.build_parser()
    for trial in trials:
        args = parser.parse_args(list(trial.argv))
        variant = dict(kv.split("=") for kv in trial.variant.split(","))
        assert args.threads == int(variant["threads"]) and args.async_eval == (variant["async_eval"] == "true")
        assert args.device == "cpu"  # no GPU reserved for it
        assert train_cli.resolve_batch_size(args) and args.batch_size == {"td3sbc": 1024, "td3bc": 256}[variant["algo"]]


@pytest.mark.parametrize("argv,message", [
    (["--seeds", "0", "0"], "would write the same run directory"),
    (["--grid", "w_rel=0", "--grid", "w-rel=0.1"], "already a grid key"),
    (["--grid", "w_rel=0,0"], "a value is repeated"),
    (["--seed", "3"], "the sweep sets this per run"),
    (["--resum"], "unrecognized arguments: --resum"),
])
def test_grids_that_would_collide_or_mislead_are_refused(dataset, tmp_path, argv, message):
    with pytest.raises(sweep.SweepError, match=message):
        plan(dataset, tmp_path, "--env", ENV, *argv)


def test_a_run_directory_made_with_other_settings_is_refused(dataset, tmp_path, capsys):
    argv = ["--env", ENV, "--dataset", str(dataset), "--seeds", "0", "--steps", "2", "--eval-every", "2",
            "--out", str(tmp_path), *TINY]
    run_dir = tmp_path / "default" / ENV / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"algo": "td3sbc", "batch_size": 64, "config": {}}))
    assert sweep.main(argv) == 2
    assert "holds a run made with other settings (batch_size, config." in one_line_error(capsys)


def test_a_dataset_that_cannot_be_used_stops_the_sweep_before_ray(tmp_path, capsys):
    assert sweep.main(["--env", ENV, "--dataset", str(tmp_path / "absent.npz"), "--steps", "2",
                       "--out", str(tmp_path / "out"), *TINY]) == 2
    assert "does not exist" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_variants_are_named_by_their_values_and_switches_map_to_flags():
    parser = train_cli.build_parser(sweep.RaisingParser)
    variants = sweep.grid_variants(["w-rel=0,0.1", "compat=true,false", "graphs=off"], parser)
    assert [name for name, _ in variants] == ["w_rel=0,compat=true,graphs=off", "w_rel=0,compat=false,graphs=off",
                                              "w_rel=0.1,compat=true,graphs=off", "w_rel=0.1,compat=false,graphs=off"]
    assert variants[0][1] == ["--w-rel", "0", "--compat", "--no-graphs"]
    assert variants[1][1] == ["--w-rel", "0", "--no-graphs"]


def test_grid_runs_every_trial_then_skips_them_and_reports(dataset, tmp_path, capsys):
    argv = ["--env", ENV, "--dataset", str(dataset), "--seeds", "0", "1", "--grid", "w_rel=0,0.1", "--steps", "4",
            "--eval-every", "2", "--log-every", "2", "--checkpoint-every", "2", "--out", str(tmp_path), *TINY]
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    finals = {}
    for variant in ("w_rel=0", "w_rel=0.1"):
        for seed in (0, 1):
            run_dir = tmp_path / variant / ENV / f"seed{seed}"
            config = json.loads((run_dir / "config.json").read_text())
            assert config["config"]["w_rel"] == float(variant.split("=")[1]) and config["seed"] == seed
            rows = metric_rows(run_dir)
            assert [r["step"] for r in rows] == [2, 4]
            finals[(variant, seed)] = rows[-1]["eval_score"]
            assert f"{variant} {ENV} seed {seed}: score {rows[-1]['eval_score']:.1f}," in out
    assert sweep.main(argv) == 0  # everything finished: nothing runs again
    assert capsys.readouterr().out.count("(skipped)") == 4
    assert report.main([str(tmp_path)]) == 0
    table = capsys.readouterr().out
    for variant in ("w_rel=0", "w_rel=0.1"):
        scores = [finals[(variant, 0)], finals[(variant, 1)]]
        assert f"| {ENV} | {variant} | 2 | {np.mean(scores):.1f} ± {np.std(scores, ddof=1):.1f} |" in table


def trainer_pids(marker: str):
    """Processes running fastbdm.train whose command line contains `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if "fastbdm.train" in cmdline and marker in cmdline:
            pids.append(int(entry.name))
    return pids


def test_a_killed_trial_is_retried_and_resumes_to_the_same_metrics(dataset, tmp_path):
    run_args = ["--dataset", str(dataset), "--steps", "120", "--eval-every", "60", "--log-every", "10",
                "--checkpoint-every", "20", *TINY]
    out = tmp_path / "sweep"
    run_dir = out / "default" / ENV / "seed0"
    killed = []

    def kill_after_first_checkpoint():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            if (run_dir / "checkpoint.pt").exists():
                for pid in trainer_pids(str(out)):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    assert sweep.main(["--env", ENV, "--seeds", "0", "--out", str(out), *run_args]) == 0
    killer.join(timeout=1)
    assert killed, "the trainer was never seen running"
    log = (run_dir / "train.log").read_text()
    assert log.count("preset ") == 2  # killed once, run again (with --resume)
    rows = metric_rows(run_dir)
    assert [r["step"] for r in rows] == list(range(10, 121, 10))  # nothing lost, nothing twice

    direct = tmp_path / "direct"
    assert train_cli.main(["--env", ENV, "--seed", "0", "--out", str(direct), *run_args, "--no-progress",
                           "--threads", "1", "--no-async-eval"]) == 0
    assert rows == metric_rows(direct / ENV / "seed0")


def test_wandb_logs_the_metric_rows_grouped_by_variant(dataset, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged = []
    real_init = wandb.init

    def spying_init(*args, **kwargs):
        run = real_init(*args, **kwargs)
        real_log = run.log
        run.log = lambda data, step=None: (logged.append((step, data)), real_log(data, step=step))[1]
        return run

    monkeypatch.setattr(wandb, "init", spying_init)
    assert train_cli.main(["--env", ENV, "--seed", "0", "--out", str(tmp_path), "--dataset", str(dataset),
                           "--steps", "4", "--eval-every", "2", "--log-every", "2", "--checkpoint-every", "4",
                           "--wandb", "fastbdm-test", "--wandb-group", "w_rel=0", "--no-progress",
                           "--no-async-eval", *TINY]) == 0
    run_dir = tmp_path / ENV / "seed0"
    rows = metric_rows(run_dir)
    assert [s for s, _ in logged] == [r["step"] for r in rows] == [2, 4]
    for (_, data), row in zip(logged, rows):
        assert data["eval_score"] == row["eval_score"] and data["critic_loss"] == row["critic_loss"]
    records = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(records) == 1
    deadline = time.monotonic() + 60  # wandb's service process may write the file after finish() returns
    while b"eval_score" not in records[0].read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    content = records[0].read_bytes()
    assert b"w_rel=0" in content and b"eval_score" in content and b"fastbdm-test" in content
