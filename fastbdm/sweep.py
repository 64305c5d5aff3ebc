"""`python -m fastbdm.sweep`: a grid of training runs (tasks x variants x seeds) on Ray.

    python -m fastbdm.sweep --env halfcheetah-medium-replay --seeds 0 1 2 --grid w_rel=0,0.1 \
        --steps 100000 --batch-size 256 --out sweeps/sbc

Each --grid KEY=V1,V2 names a training option (without dashes) and its values; every combination
of values is a variant, named by them ("w_rel=0,sampler=ddpm"; "default" without --grid). Every
other option goes to `fastbdm.train` unchanged. A trial is one training run in its own process,
writing the run directory `fastbdm.train` writes, at OUT/VARIANT/ENV/seedK.

Local by default: Ray on this machine, as many trials at once as --cpus-per-run / --gpus-per-run
fit. `--address auto|HOST:PORT` joins a Ray cluster (OUT must then be on a file system every node
sees). Re-running the same command skips finished runs and resumes interrupted ones from their
checkpoints; a trial whose process dies is retried by Ray and resumes the same way.
"""
import argparse
import ctypes
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from . import train as train_cli
from .checkpoint import has_checkpoint
from .graphs import first_line
from .report import read_run

# train options a grid may not set: the sweep itself decides them per trial
SWEEP_OWNED = {"env", "seed", "seeds", "out", "resume", "no_progress", "help", "wandb_group"}
LOG = "train.log"
# the variables a trial on another node needs from the driver's environment
FORWARDED_ENV = ("WANDB_MODE", "WANDB_API_KEY", "MINARI_DATASETS_PATH", "D4RL_DATASET_DIR", "HF_HUB_OFFLINE")
PR_SET_PDEATHSIG = 1


class SweepError(Exception):
    """Bad sweep input, found before anything starts; the message is one line for the user."""


class TrialCrashed(Exception):
    """The training process died (killed, out of memory): Ray retries the trial, which resumes."""


class TrialFailed(Exception):
    """The training command refused or stopped the run (exit 2, e.g. divergence): not retried."""


@dataclass(frozen=True)
class Trial:
    """One training run of the grid: fastbdm.train's arguments (--resume excluded) and where it writes."""

    variant: str
    env: str
    seed: int
    steps: int
    run_dir: Path
    argv: Tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.variant} {self.env} seed {self.seed}"


class RaisingParser(argparse.ArgumentParser):
    """An argument parser that raises SweepError instead of printing usage and exiting, and takes no
    abbreviations (so that `--seed 3` is not read as `--seeds 3`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message):
        raise SweepError(message)


def build_parser() -> argparse.ArgumentParser:
    p = RaisingParser(prog="python -m fastbdm.sweep", description=__doc__.split("\n\n")[0],
                      epilog="Any other option is a fastbdm.train option, given to every run.")
    p.add_argument("--env", nargs="+", required=True, help="tasks (dataset names) of the grid")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of every variant and task")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a training option without dashes and its values (repeatable)")
    p.add_argument("--out", required=True, type=Path, help="runs go to OUT/VARIANT/ENV/seedK")
    p.add_argument("--cpus-per-run", type=float, default=1.0,
                   help="CPUs Ray reserves per trial; its torch threads are this rounded down (at least 1)")
    p.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs per trial (fractions share a GPU)")
    p.add_argument("--address", default=None, help="Ray cluster to join: auto or HOST:PORT (default: local)")
    p.add_argument("--max-retries", type=int, default=3, help="retries of a trial whose process dies")
    return p


def grid_variants(grid: Sequence[str], parser: argparse.ArgumentParser) -> List[Tuple[str, List[str]]]:
    """[(variant name, its training arguments)] for every combination of the --grid values."""
    options = {a.dest: a for a in parser._actions if a.option_strings}
    axes, keys = [], set()
    for item in grid:
        key, sep, values = item.partition("=")
        dest = key.strip().replace("-", "_")
        if not sep or not values.strip():
            raise SweepError(f"--grid {item!r}: write KEY=V1,V2 (e.g. --grid w_rel=0,0.1)")
        if dest not in options or dest in SWEEP_OWNED:
            known = ", ".join(sorted(d for d in options if d not in SWEEP_OWNED))
            raise SweepError(f"--grid {item!r}: {key!r} is not a training option a grid can set; use one of {known}")
        if dest in keys:
            raise SweepError(f"--grid {item!r}: {dest} is already a grid key; give all its values in one --grid")
        keys.add(dest)
        values = [v.strip() for v in values.split(",")]
        if len(set(values)) < len(values):
            raise SweepError(f"--grid {item!r}: a value is repeated")
        axes.append([(dest, v, option_args(options[dest], v, item)) for v in values])
    variants = []
    for combination in itertools.product(*axes):
        name = ",".join(f"{k}={v}" for k, v, _ in combination) or "default"
        variants.append((name, [arg for _, _, args in combination for arg in args]))
    return variants


def option_args(action: argparse.Action, value: str, item: str) -> List[str]:
    """The command-line arguments that give `action` the value `value`."""
    flag = action.option_strings[0]
    if not value:
        raise SweepError(f"--grid {item!r}: an empty value")
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
        truth = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
        if value.lower() not in truth:
            raise SweepError(f"--grid {item!r}: {flag} is a switch; give its values as true,false")
        if isinstance(action, argparse.BooleanOptionalAction):
            return [flag if truth[value.lower()] else "--no-" + flag[2:]]
        return [flag] if truth[value.lower()] else []
    return [flag, value]


def plan(args, passthrough: List[str]) -> List[Trial]:
    """Every trial of the grid, each checked as fastbdm.train would check it (defaults first, so that a
    grid value or a passed option overrides them)."""
    parser = train_cli.build_parser(RaisingParser)
    given = {a.split("=")[0] for a in passthrough if a.startswith("--")}
    owned = {f"--{d.replace('_', '-')}" for d in SWEEP_OWNED}
    if owned & given:
        raise SweepError(f"{', '.join(sorted(owned & given))}: the sweep sets this per run; use --env/--seeds/--out")
    # a trial uses the CPUs (or GPUs) Ray gave it: its threads, evaluation inline, no unreserved GPU
    defaults = ["--no-progress", "--threads", str(max(1, int(args.cpus_per_run))), "--no-async-eval"]
    if args.gpus_per_run == 0:
        defaults += ["--device", "cpu"]
    passthrough = absolute_paths(passthrough)
    out = args.out.resolve()
    trials, seen = [], {}
    for variant, grid_args in grid_variants(args.grid, parser):
        group = ["--wandb-group", variant] if "--wandb" in given else []
        for env in args.env:
            for seed in args.seeds:
                argv = [*defaults, "--env", env, "--seed", str(seed), "--out", str(out / variant), *passthrough,
                        *grid_args, *group]
                try:
                    parsed = parser.parse_args(argv)
                    train_cli.resolve_batch_size(parsed)
                    train_cli.check_args(parsed)
                    config = train_cli.resolve_config(parsed)
                except (train_cli.TrainingError, SweepError) as exc:
                    raise SweepError(f"{variant} {env}: {exc}") from None
                trial = Trial(variant, env, seed, parsed.steps, out / variant / env / f"seed{seed}", tuple(argv))
                if trial.run_dir in seen:
                    raise SweepError(f"{trial} and {seen[trial.run_dir]} would write the same run directory; "
                                     "give each --env, --seeds and --grid value once")
                seen[trial.run_dir] = trial
                check_earlier_run(trial, {"batch_size": parsed.batch_size, "algo": parsed.algo,
                                          "config": json.loads(json.dumps(dataclasses.asdict(config), default=str))})
                trials.append(trial)
    return trials


def absolute_paths(argv: List[str]) -> List[str]:
    """`--dataset PATH` made absolute: a trial runs in another process, maybe on another node."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--dataset" and i + 1 < len(out):
            out[i + 1] = str(Path(out[i + 1]).expanduser().resolve())
        elif arg.startswith("--dataset="):
            out[i] = "--dataset=" + str(Path(arg.split("=", 1)[1]).expanduser().resolve())
    return out


def check_earlier_run(trial: Trial, planned: dict) -> None:
    """SweepError when the trial's directory holds a run made with other settings (it would be skipped
    or resumed as if it were this one)."""
    config = trial.run_dir / "config.json"
    if not config.exists():
        return
    earlier = json.loads(config.read_text())
    differs = [key for key, value in planned.items() if key != "config" and earlier.get(key) != value]
    differs += [f"config.{key}" for key, value in planned["config"].items() if earlier.get("config", {}).get(key) != value]
    if differs:
        raise SweepError(f"{trial.run_dir} holds a run made with other settings ({', '.join(differs)}); "
                         "use another --out, or the settings it was made with")


def finished_score(trial: Trial) -> Optional[float]:
    """The final normalised score of a run in the trial's directory that finished exactly its steps, else None."""
    run_dir = trial.run_dir
    if not (run_dir / "config.json").exists() or not (run_dir / "metrics.jsonl").exists():
        return None
    run = read_run(run_dir, run_dir.parents[1])
    return run.final_score if run.steps == trial.steps and run.evaluations and run.evaluations[-1][0] == trial.steps \
        else None


def die_with_parent() -> None:
    """In the trainer's process: the kernel kills it when the Ray worker that started it dies, so that a
    retried trial never finds the previous attempt still writing its run directory."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_trial(trial: Trial, cwd: Optional[str]) -> Tuple[Trial, float, float]:
    """One training run in its own process (resumed when it has a checkpoint); (trial, score, minutes)."""
    start = time.monotonic()
    argv = list(trial.argv) + (["--resume"] if has_checkpoint(trial.run_dir / train_cli.CHECKPOINT) else [])
    trial.run_dir.mkdir(parents=True, exist_ok=True)
    with (trial.run_dir / LOG).open("a") as log:
        code = subprocess.call([sys.executable, "-m", "fastbdm.train", *argv], stdout=log, stderr=subprocess.STDOUT,
                               cwd=cwd if cwd and os.path.isdir(cwd) else None, preexec_fn=die_with_parent)
    if code == 2:
        lines = (trial.run_dir / LOG).read_text().strip().splitlines()
        raise TrialFailed(f"{trial}: {lines[-1] if lines else 'exit 2'}")
    if code != 0:
        raise TrialCrashed(f"{trial}: the training process ended with {code}; retrying from its checkpoint")
    score = finished_score(trial)
    if score is None:
        raise TrialCrashed(f"{trial}: the run ended without its final evaluation; retrying")
    return trial, score, (time.monotonic() - start) / 60


def sweep(args, trials: List[Trial]) -> int:
    """Runs the unfinished trials on Ray; one line per finished run and an overall bar. Exit code."""
    import ray
    from tqdm import tqdm

    todo = [t for t in trials if finished_score(t) is None]
    bar = tqdm(total=len(trials), initial=len(trials) - len(todo), desc="sweep", unit="run", dynamic_ncols=True)
    for t in trials:
        if t not in todo:
            bar.write(f"{t}: finished before, score {finished_score(t):.1f} (skipped)")
    if not todo:
        bar.close()
        return 0
    env_vars = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    try:
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 runtime_env={"env_vars": env_vars} if env_vars else None)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        bar.close()
        print(f"error: Ray at {args.address or 'this machine'} cannot be started or reached ({first_line(exc)})",
              file=sys.stderr)
        return 2
    remote = ray.remote(run_trial).options(num_cpus=args.cpus_per_run, num_gpus=args.gpus_per_run,
                                           max_retries=args.max_retries, retry_exceptions=[TrialCrashed])
    pending = {remote.remote(t, os.getcwd()): t for t in todo}
    failures = 0
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            trial = pending.pop(done[0])
            try:
                _, score, minutes = ray.get(done[0])
                bar.write(f"{trial}: score {score:.1f}, {minutes:.1f} min")
            except Exception as exc:  # a RayTaskError wraps TrialFailed or the last TrialCrashed
                failures += 1
                bar.write(f"{trial}: failed ({first_line(getattr(exc, 'cause', None) or exc)})")
            bar.update(1)
    finally:
        bar.close()
        ray.shutdown()
    return 1 if failures else 0


def check_datasets(trials: List[Trial]) -> None:
    """Each task's dataset is found (or generated, as the training command would) once, here, before any
    trial starts: so that no two trials generate it at once, and a dataset that cannot be used stops the
    sweep with one line."""
    from .data import DatasetError, load_transitions

    parser = train_cli.build_parser(RaisingParser)
    checked = set()
    for trial in trials:
        args = parser.parse_args(list(trial.argv))
        key = (args.env, args.dataset, args.allow_partial_dataset)
        if key in checked:
            continue
        checked.add(key)
        try:
            generate_kwargs = None if args.generate_steps is None else {"max_steps": args.generate_steps}
            load_transitions(args.env, dataset_path=args.dataset, download=args.download, generate_kwargs=generate_kwargs,
                             allow_partial=args.allow_partial_dataset)
        except DatasetError as exc:
            raise SweepError(f"{args.env}: {exc}") from None


def main(argv=None) -> int:
    try:
        import ray  # noqa: F401
    except ImportError:
        print("error: the sweep needs Ray: pip install -e '.[sweep]'", file=sys.stderr)
        return 2
    try:
        args, passthrough = build_parser().parse_known_args(argv)
        if args.cpus_per_run <= 0 or args.gpus_per_run < 0 or args.max_retries < 0:
            raise SweepError("--cpus-per-run must be > 0, --gpus-per-run and --max-retries >= 0")
        if not any(a == "--steps" or a.startswith("--steps=") for a in passthrough):
            raise SweepError("--steps N is required: the length of every run of the grid")
        trials = plan(args, passthrough)
        check_datasets(trials)
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return sweep(args, trials)


if __name__ == "__main__":
    sys.exit(main())
