"""fastbdm.report: the table's numbers recomputed here from the metrics files, the figure, reference rows."""
import csv
import json

import numpy as np
import pytest
from scipy.stats import bootstrap, trim_mean

from fastbdm import report

TASKS = ("halfcheetah-medium-replay", "hopper-medium-replay")
VARIANTS = {"w_rel=0": 0.0, "w_rel=0.1": 5.0}
SEEDS = 4
STEPS = 300


def write_run(run_dir, env, seed, scores, steps=STEPS):
    """A run directory as fastbdm.train writes it: evaluations every 100 updates, metric rows every 50,
    written up to the last score (a run of `steps` updates stopped there when that is fewer)."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"env": env, "seed": seed, "steps": steps}))
    rows = []
    for step in range(50, min(steps, 100 * len(scores)) + 1, 50):
        row = {"step": step, "critic_loss": 1.0}
        if step % 100 == 0:
            row.update(eval_return=0.0, eval_score=scores[step // 100 - 1])
        rows.append(row)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def sweep_dir(tmp_path):
    """DIR/VARIANT/ENV/seedK with random score curves; returns (dir, {(task, variant): final scores})."""
    rng = np.random.default_rng(1)
    finals = {}
    for variant, offset in VARIANTS.items():
        for task in TASKS:
            for seed in range(SEEDS):
                scores = [float(offset + 10 * k + rng.normal(0, 3)) for k in range(1, 4)]
                write_run(tmp_path / "sweep" / variant / task / f"seed{seed}", task, seed, scores)
                finals.setdefault((task, variant), []).append(scores[-1])
    return tmp_path / "sweep", finals


def read_csv(path):
    with path.open() as f:
        return {(r["task"], r["variant"]): r for r in csv.DictReader(f)}


def test_table_numbers_are_the_statistics_of_the_final_scores(sweep_dir, capsys):
    root, finals = sweep_dir
    assert report.main([str(root)]) == 0
    rows = read_csv(root / "report.csv")
    for key, scores in finals.items():
        row = rows[key]
        assert int(row["runs"]) == SEEDS and int(row["updates"]) == STEPS
        assert float(row["mean"]) == pytest.approx(np.mean(scores))
        assert float(row["std"]) == pytest.approx(np.std(scores, ddof=1))
        assert float(row["iqm"]) == pytest.approx(trim_mean(scores, 0.25))
        assert min(scores) <= float(row["iqm_low"]) <= float(row["iqm"]) <= float(row["iqm_high"]) <= max(scores)
    for variant in VARIANTS:  # aggregate over tasks: the IQM of all 8 final scores, seeds resampled per task
        per_task = [finals[(task, variant)] for task in TASKS]
        row = rows[(report.ALL_TASKS, variant)]
        assert float(row["iqm"]) == pytest.approx(trim_mean(per_task[0] + per_task[1], 0.25))
        assert int(row["runs"]) == 2 * SEEDS
        stratified = bootstrap(tuple(map(np.array, per_task)), lambda *s, axis: trim_mean(np.concatenate(s, axis), 0.25, axis),
                               n_resamples=report.RESAMPLES, method="percentile", rng=np.random.default_rng(0))
        pooled = bootstrap((np.array(per_task[0] + per_task[1]),), lambda s, axis: trim_mean(s, 0.25, axis),
                           n_resamples=report.RESAMPLES, method="percentile", rng=np.random.default_rng(0))
        assert float(row["iqm_low"]) == pytest.approx(stratified.confidence_interval.low)
        assert float(row["iqm_high"]) == pytest.approx(stratified.confidence_interval.high)
        assert float(row["iqm_low"]) != pytest.approx(pooled.confidence_interval.low)
    printed = capsys.readouterr().out
    assert printed.strip() == (root / "report.md").read_text().strip()
    assert "Rows with fewer than 5 runs" in printed  # the all-tasks rows have 8, the per-task rows 4
    mean, std = np.mean(finals[(TASKS[0], "w_rel=0.1")]), np.std(finals[(TASKS[0], "w_rel=0.1")], ddof=1)
    assert f"| {TASKS[0]} | w_rel=0.1 | {SEEDS} | {mean:.1f} ± {std:.1f} |" in printed


def test_figure_has_one_panel_per_task(sweep_dir, tmp_path):
    root, _ = sweep_dir
    runs = report.find_runs([root])
    assert report.draw_curves(runs, tmp_path / "one.png") == len(TASKS)
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "one.png")
    assert image.shape[1] == pytest.approx(5 * len(TASKS) * 120, abs=2)  # 5 inches per panel at 120 dpi
    assert report.main([str(root)]) == 0 and (root / "curves.png").stat().st_size > 10_000


def test_curve_band_brackets_the_mean(sweep_dir):
    root, _ = sweep_dir
    group = [r for r in report.find_runs([root]) if r.task == TASKS[0] and r.variant == "w_rel=0"]
    x, mean, low, high = report.curve(group)
    assert list(x) == [100, 200, 300]
    np.testing.assert_allclose(mean, np.mean([[s for _, s in r.evaluations] for r in group], 0))
    assert (low <= mean).all() and (mean <= high).all() and (low < high).all()


def test_baseline_rows_are_marked_as_references(sweep_dir, tmp_path, capsys):
    root, _ = sweep_dir
    baseline = tmp_path / "published.csv"
    baseline.write_text("task,variant,mean,std,seeds,source\nhalfcheetah-medium-replay,ReBRAC,51.2,,4,CORL\n")
    assert report.main([str(root), "--baseline", str(baseline)]) == 0
    assert "| halfcheetah-medium-replay | ReBRAC (reference) | 4 | 51.2 | - | - | CORL |" in capsys.readouterr().out
    assert read_csv(root / "report.csv")[("halfcheetah-medium-replay", "ReBRAC")]["source"] == "CORL"


def test_unfinished_runs_and_a_plain_training_layout(tmp_path, capsys):
    """fastbdm.train's OUT/ENV/seedK: the variant is OUT's name; a run short of its steps is left out."""
    write_run(tmp_path / "runs" / TASKS[0] / "seed0", TASKS[0], 0, [1.0, 2.0, 3.0])
    write_run(tmp_path / "runs" / TASKS[0] / "seed1", TASKS[0], 1, [1.0, 2.0, 3.0], steps=600)
    assert report.main([str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert f"| {TASKS[0]} | runs | 1 | 3.0 | 3.0 [-, -] | 300 |" in out
    assert "1 unfinished run(s) are left out" in out and "seed1" in out


@pytest.mark.parametrize("make,message", [
    (lambda p: None, "is not a directory"),
    (lambda p: (p / "empty").mkdir(), "no run directories"),
])
def test_nothing_to_report_is_one_line(tmp_path, capsys, make, message):
    make(tmp_path)
    assert report.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]


def test_a_sweep_in_progress_is_reported(sweep_dir, tmp_path, capsys):
    """A variant whose runs have no evaluation yet, and a seed just started beside finished ones."""
    root, finals = sweep_dir
    started = root / "w_rel=0.2" / TASKS[0] / "seed0"
    write_run(started, TASKS[0], 0, [])
    write_run(root / "w_rel=0" / TASKS[0] / "seed9", TASKS[0], 9, [1.0])
    assert report.main([str(root)]) == 0
    runs = [r for r in report.find_runs([root]) if r.task == TASKS[0] and r.variant == "w_rel=0"]
    assert len(runs) == SEEDS + 1
    out = capsys.readouterr().out
    assert "2 unfinished run(s) are left out" in out
    assert f"| {TASKS[0]} | w_rel=0 | {SEEDS} |" in out


def test_the_same_run_twice_is_refused_and_one_directory_counts_once(sweep_dir, tmp_path, capsys):
    root, _ = sweep_dir
    assert len(report.find_runs([root, root / "w_rel=0"])) == len(report.find_runs([root]))
    other = tmp_path / "other" / "w_rel=0" / TASKS[0] / "seed0"
    write_run(other, TASKS[0], 0, [1.0, 2.0, 3.0])
    assert report.main([str(root), str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed 0" in err[0] and "report them separately" in err[0]


def test_bad_baseline_file_is_one_line(sweep_dir, tmp_path, capsys):
    root, _ = sweep_dir
    bad = tmp_path / "bad.csv"
    bad.write_text("name,score\nx,1\n")
    assert report.main([str(root), "--baseline", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "task, variant, mean" in err[0]
