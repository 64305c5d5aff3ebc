"""`python -m fastbdm.report DIR [DIR ...]`: the results of training runs as a table and a figure.

Reads every run directory under the given directories (the layouts `fastbdm.train` writes,
OUT/ENV/seedK, and `fastbdm.sweep` writes, DIR/VARIANT/ENV/seedK) and reports, per task and variant,
the final D4RL-normalised score over seeds: mean +- sample std, and the interquartile mean (IQM)
with a 95% percentile bootstrap confidence interval (scipy.stats.bootstrap). The per-variant
aggregate over several tasks resamples seeds within each task (a stratified bootstrap, as rliable
does). Writes report.md, report.csv and curves.png (one panel per task: the mean score per variant
against updates, with the 95% bootstrap band of the mean).
"""
import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000
ALL_TASKS = "all tasks"


class ReportError(Exception):
    """Nothing to report, or unreadable input; the message is one line for the user."""


@dataclass
class Run:
    """One training run: its task, variant, seed and evaluations [(update, normalised score)]."""

    path: Path
    task: str
    variant: str
    seed: int
    steps: int
    evaluations: List[Tuple[int, float]]

    @property
    def finished(self) -> bool:
        return bool(self.evaluations) and self.evaluations[-1][0] >= self.steps

    @property
    def final_score(self) -> float:
        return self.evaluations[-1][1]


def read_run(run_dir: Path, root: Path) -> Run:
    """The run in `run_dir` (config.json and metrics.jsonl); its variant is the path between `root`
    and ENV/seedK, or the name of `root` for a run written by fastbdm.train directly."""
    config = json.loads((run_dir / "config.json").read_text())
    evaluations = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a row torn by a crash: the run resumes before it
            continue
        if row.get("eval_score") is not None:
            evaluations.append((int(row["step"]), float(row["eval_score"])))
    parts = run_dir.relative_to(root).parts[:-2]
    variant = "/".join(parts) if parts else (root.resolve().name or str(root))
    return Run(run_dir, config["env"].removesuffix("-v2"), variant, int(config["seed"]), int(config["steps"]),
               sorted(evaluations))


def find_runs(roots: Sequence[Path]) -> List[Run]:
    """Every run under the roots, each once; ReportError when two runs claim the same task, variant and
    seed (e.g. two sweeps with the same variant names: report them one at a time, or rename one)."""
    runs, seen = [], {}
    for root in roots:
        if not root.is_dir():
            raise ReportError(f"{root} is not a directory; pass the --out directory of fastbdm.train or fastbdm.sweep")
        for config in sorted(root.rglob("config.json")):
            path = config.parent.resolve()
            if (config.parent / "metrics.jsonl").exists() and path not in {r.path.resolve() for r in runs}:
                run = read_run(config.parent, root)
                key = (run.task, run.variant, run.seed)
                if key in seen:
                    raise ReportError(f"{seen[key]} and {run.path} are both {run.task} {run.variant} seed {run.seed}; "
                                      "report them separately")
                seen[key] = run.path
                runs.append(run)
    if not runs:
        raise ReportError(f"no run directories (config.json with metrics.jsonl) under {', '.join(map(str, roots))}")
    return runs


def iqm(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean of the samples pooled along `axis` (scipy's 25% trimmed mean)."""
    from scipy.stats import trim_mean

    return trim_mean(np.concatenate(samples, axis=axis), 0.25, axis=axis)


def bootstrap_ci(samples: Sequence[np.ndarray], statistic, axis: int = -1) -> Tuple[np.ndarray, np.ndarray]:
    """95% percentile bootstrap interval of statistic(*samples) along `axis`, each sample resampled
    within itself (several samples: a stratified bootstrap); seeded, so a report is reproducible."""
    from scipy.stats import bootstrap

    interval = bootstrap(tuple(samples), statistic, n_resamples=RESAMPLES, confidence_level=CONFIDENCE,
                         method="percentile", vectorized=True, axis=axis, rng=np.random.default_rng(0)).confidence_interval
    return interval.low, interval.high


def summary_rows(runs: List[Run]) -> List[dict]:
    """One row per (task, variant) over its finished runs' final scores, then one per variant over
    all tasks when there are several tasks."""
    groups: Dict[Tuple[str, str], List[Run]] = {}
    for run in runs:
        if run.finished:
            groups.setdefault((run.task, run.variant), []).append(run)
    rows = []
    for (task, variant), group in sorted(groups.items()):
        if len({r.steps for r in group}) > 1:
            raise ReportError(f"{task} {variant}: finished runs of different lengths "
                              f"({', '.join(str(s) for s in sorted({r.steps for r in group}))} updates); "
                              "report them separately")
        scores = np.array([r.final_score for r in sorted(group, key=lambda r: r.seed)])
        rows.append(score_row(task, variant, [scores], group[0].steps))
    tasks = sorted({task for task, _ in groups})
    if len(tasks) > 1:
        for variant in sorted({v for _, v in groups}):
            per_task = [np.array([r.final_score for r in groups[(t, variant)]]) for t in tasks if (t, variant) in groups]
            if len(per_task) == len(tasks):
                rows.append(score_row(ALL_TASKS, variant, per_task, None))
    return rows


def score_row(task: str, variant: str, samples: List[np.ndarray], steps) -> dict:
    """Statistics of the final scores; `runs` counts runs (seeds, times tasks in an all-tasks row). The
    interval is NaN where a task has a single run."""
    scores = np.concatenate(samples)
    low, high = bootstrap_ci(samples, iqm) if min(len(s) for s in samples) > 1 else (math.nan, math.nan)
    return {"task": task, "variant": variant, "runs": len(scores), "updates": steps,
            "mean": float(scores.mean()), "std": float(scores.std(ddof=1)) if len(scores) > 1 else math.nan,
            "iqm": float(iqm(*samples)), "iqm_low": float(low), "iqm_high": float(high), "reference": False,
            "source": "this report"}


def read_baseline(path: Path) -> List[dict]:
    """Reference rows from a CSV with columns task, variant, mean and optional std, seeds, source."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        out = []
        for row in rows:
            number = lambda key: float(row[key]) if row.get(key) not in (None, "") else math.nan  # noqa: E731
            out.append({"task": row["task"].removesuffix("-v2"), "variant": row["variant"], "mean": number("mean"),
                        "std": number("std"), "runs": int(row["seeds"]) if row.get("seeds") else None,
                        "updates": None, "iqm": math.nan, "iqm_low": math.nan, "iqm_high": math.nan,
                        "reference": True, "source": row.get("source") or "reference"})
        return out
    except (OSError, KeyError, ValueError) as exc:
        raise ReportError(f"--baseline {path}: cannot read it ({type(exc).__name__}: {exc}); it needs the "
                          "columns task, variant, mean (optional: std, seeds, source)") from None


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown_table(rows: List[dict]) -> str:
    lines = ["| task | variant | runs | score mean ± std | IQM [95% CI] | updates | source |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        reference = r["reference"]
        variant = f"{r['variant']} (reference)" if reference else r["variant"]
        interval = "-" if reference else f"{fmt(r['iqm'])} [{fmt(r['iqm_low'])}, {fmt(r['iqm_high'])}]"
        spread = f" ± {fmt(r['std'])}" if not math.isnan(r["std"]) else ""
        lines.append(f"| {r['task']} | {variant} | {r['runs'] if r['runs'] is not None else '-'} | "
                     f"{fmt(r['mean'])}{spread} | {interval} | {r['updates'] or '-'} | {r['source']} |")
    if any(not r["reference"] and r["runs"] < 5 for r in rows):
        lines.append("\nRows with fewer than 5 runs: below 4 runs the IQM trims nothing (it is the mean), and a "
                     "bootstrap over so few runs covers less than its nominal 95%; read those intervals as rough.")
    return "\n".join(lines)


def write_csv(rows: List[dict], path: Path) -> None:
    columns = ["task", "variant", "runs", "updates", "mean", "std", "iqm", "iqm_low", "iqm_high", "reference", "source"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def curve(runs: List[Run]) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(updates, mean score, band low, band high) at the evaluations every run of the group has; the band
    is the 95% bootstrap interval of the mean over runs (the mean itself for one run)."""
    common = sorted(set.intersection(*(set(dict(r.evaluations)) for r in runs)))
    scores = np.array([[dict(r.evaluations)[s] for s in common] for r in runs])  # (runs, points)
    mean = scores.mean(0)
    if len(runs) < 2:
        return np.array(common), mean, mean, mean
    low, high = bootstrap_ci([scores], np.mean, axis=0)
    return np.array(common), mean, np.where(np.isnan(low), mean, low), np.where(np.isnan(high), mean, high)


def draw_curves(runs: List[Run], path: Path) -> int:
    """curves.png: one panel per task; returns the number of panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r.task for r in runs if r.evaluations})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for variant in sorted({r.variant for r in runs if r.task == task}):
            group = [r for r in runs if r.task == task and r.variant == variant and r.evaluations]
            finished = [r for r in group if r.finished]
            group = finished or group  # a run just started does not cut the finished runs' curve short
            if not group:
                continue
            x, mean, low, high = curve(group)
            line, = ax.plot(x, mean, label=f"{variant} ({len(group)} runs)")
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(task)
        ax.set_xlabel("updates")
        ax.set_ylabel("D4RL-normalised score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return len(tasks)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastbdm.report", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, help="run directories (fastbdm.train's --out or fastbdm.sweep's --out)")
    p.add_argument("--baseline", type=Path, default=None,
                   help="CSV of reference rows (columns task, variant, mean; optional std, seeds, source)")
    p.add_argument("--out", type=Path, default=None, help="where report.md, report.csv, curves.png go (default: the first DIR)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import matplotlib  # noqa: F401
        import scipy  # noqa: F401
    except ImportError as exc:
        print(f"error: the report needs {exc.name}: pip install -e '.[sweep]'", file=sys.stderr)
        return 2
    try:
        runs = find_runs(args.dirs)
        rows = summary_rows(runs)
        if args.baseline is not None:
            rows += read_baseline(args.baseline)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or args.dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    unfinished = [r for r in runs if not r.finished]
    table = markdown_table(rows)
    note = (f"\n\n{len(unfinished)} unfinished run(s) are left out of the table (their curves are drawn): "
            + ", ".join(str(r.path) for r in unfinished)) if unfinished else ""
    print(table + note)
    (out / "report.md").write_text(table + note + "\n")
    write_csv(rows, out / "report.csv")
    draw_curves(runs, out / "curves.png")
    print(f"wrote {out / 'report.md'}, {out / 'report.csv'}, {out / 'curves.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
