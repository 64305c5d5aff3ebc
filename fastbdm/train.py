"""`python -m fastbdm.train --env halfcheetah-medium-replay`: train TD3-SBC end to end.

Dataset (local, downloaded or generated), training, periodic MuJoCo evaluation with the D4RL
normalised score, metrics (CSV, JSONL, TensorBoard when installed), atomic checkpoints, exact resume.
"""
import argparse
import contextlib
import csv
import dataclasses
import json
import math
import multiprocessing
import os
import sys
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path

import torch

from .backends import BACKENDS, PRECISIONS, kernel_ops, resolve_backend
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .compat import CompatFlags
from .graphs import GraphCaptureError, GraphedPolicy, UpdateRunner, first_line
from .monitor import METRICS, UpdateMonitor
from .presets import preset, split_name
from .replay import TransitionBuffer
from .schedule import PREDICTIONS
from .td3sbc import TD3SBC, TD3SBCConfig
from .wandb_log import WandbMirror

EVAL_COLUMNS = ("eval_return", "eval_score")
COLUMNS = ("step", "updates_per_s", *METRICS, *EVAL_COLUMNS)
CHECKPOINT = "checkpoint.pt"


class TrainingError(Exception):
    """A run cannot go on; the message is one line for the user."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" once: not where the help already says its default, nor for a None default
    (whose help says what happens without the option)."""

    def _get_help_string(self, action):
        if "default" in (action.help or "") or action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser(parser_class=argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = parser_class(prog="python -m fastbdm.train", description="Train TD3-SBC end to end: dataset, updates, MuJoCo evaluation with "
                                            "the D4RL-normalised score, metrics and checkpoints. The algorithm: "
                                            "docs/ALGORITHM.md.",
                                formatter_class=HelpFormatter)
    p.add_argument("--env", default="halfcheetah-medium-replay",
                   help="dataset name ENV-KIND[-v2], ENV in halfcheetah/hopper/walker2d, KIND in random/medium/"
                        "medium-replay/medium-expert/expert/full-replay; sets the preset coefficients")
    p.add_argument("--dataset", default=None, help="explicit dataset: D4RL hdf5 file, Minari dataset dir or .npz (default: found by --env)")
    p.add_argument("--download", action="store_true", help="allow Minari's download where a remote id exists")
    p.add_argument("--generate-steps", type=int, default=None,
                   help="cap on environment steps when the dataset has to be generated locally (default: D4RL size)")
    p.add_argument("--steps", type=int, default=1_000_000, help="number of TD3-SBC updates")
    p.add_argument("--seed", type=int, default=0, help="random seed of the run")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="several seeds, run one after another (instead of --seed)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when available")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="BDM kernels: auto = triton on CUDA, torch on CPU")
    p.add_argument("--precision", choices=PRECISIONS, default="tf32",
                   help="matmuls of the Triton MLP kernels: tf32 operands, tf32x3, exact fp32 (ieee), or bf16 "
                        "weights/activations/operands with fp32 accumulation (GPU only)")
    p.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="capture the update in CUDA graphs (default: on with CUDA; ignored on CPU)")
    p.add_argument("--graph-pairs", type=int, default=1,
                   help="pairs of updates unrolled in one CUDA graph (one replay = 2x this many updates)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on the CPU")
    p.add_argument("--batch-size", type=int, default=1024, help="transitions per update")
    p.add_argument("--eval-every", type=int, default=5000, help="updates between evaluations")
    p.add_argument("--eval-episodes", type=int, default=10, help="episodes per evaluation")
    p.add_argument("--async-eval", action=argparse.BooleanOptionalAction, default=None,
                   help="evaluate a CPU snapshot of the policy in a worker process while training goes on "
                        "(default: on, except on the CPU when --threads takes every core)")
    p.add_argument("--log-every", type=int, default=1000, help="updates between metric rows")
    p.add_argument("--checkpoint-every", type=int, default=50_000, help="updates between checkpoints")
    p.add_argument("--out", default="runs", help="base directory; a run writes to OUT/ENV/seedSEED")
    p.add_argument("--resume", action="store_true", help="continue the run found in the run directory")
    p.add_argument("--compat", action="store_true", help="reproduce the research code's numerics: its seven departures from the paper, docs/ALGORITHM.md#departures-of-the-research-code")
    p.add_argument("--prediction", choices=PREDICTIONS, default="sample", help="denoiser output parameterisation")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim", help="reverse sampler (fixed mode)")
    p.add_argument("--w-actor-bc", type=float, default=None, help="actor BC weight w_a (default: the preset's)")
    p.add_argument("--w-critic-bc", type=float, default=None, help="critic BC weight w_c (default: the preset's)")
    p.add_argument("--w-rel", type=float, default=None, help="relative state-BC weight w_rel (default: the preset's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--wandb", default=None, metavar="PROJECT",
                   help="also log metrics and config to this Weights & Biases project (WANDB_MODE=offline: no network)")
    p.add_argument("--wandb-group", default=None, help="wandb group of the run (fastbdm.sweep sets its variant)")
    return p


def resolve_config(args) -> TD3SBCConfig:
    try:
        coeffs = preset(args.env)
    except ValueError:
        raise TrainingError(unknown_env_message(args.env)) from None
    return TD3SBCConfig(
        w_actor_bc=coeffs.w_actor_bc if args.w_actor_bc is None else args.w_actor_bc,
        w_critic_bc=coeffs.w_critic_bc if args.w_critic_bc is None else args.w_critic_bc,
        w_rel=coeffs.w_rel if args.w_rel is None else args.w_rel,
        prediction=args.prediction, sampler=args.sampler, backend=args.backend, precision=args.precision,
        compat=CompatFlags.resolve(args.compat),
    )


def preset_line(args, config: TD3SBCConfig) -> str:
    """'preset ENV: w_actor_bc=.., w_critic_bc=.., w_rel=..' with the values the run uses; a value set on
    the command line is marked with the preset's, e.g. 'w_rel=0.0 (preset 0.1)'."""
    values = []
    for name, preset_value in dataclasses.asdict(preset(args.env)).items():
        used = getattr(config, name)
        values.append(f"{name}={used}" + ("" if used == preset_value else f" (preset {preset_value})"))
    return f"preset {args.env}: " + ", ".join(values)


def unknown_env_message(name: str) -> str:
    from .data import DatasetError, parse_name

    try:
        parse_name(name)
    except DatasetError as exc:
        return str(exc)
    return f"unknown task {name!r}"


def check_args(args) -> None:
    for name in ("steps", "batch_size", "eval_every", "eval_episodes", "log_every", "checkpoint_every", "threads",
                 "graph_pairs"):
        if getattr(args, name) < 1:
            raise TrainingError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise TrainingError("--wandb needs the wandb package: pip install -e '.[sweep]'") from None
    if args.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda: no CUDA device is visible; use --device cpu")


class MetricsLog:
    """metrics.csv and metrics.jsonl (one row per log step), TensorBoard events when available."""

    def __init__(self, run_dir: Path, keep_until: int = None):
        self.csv_path, self.jsonl_path = run_dir / "metrics.csv", run_dir / "metrics.jsonl"
        rows = []
        if keep_until is not None and self.jsonl_path.exists():
            rows = [r for r in map(json.loads, self.jsonl_path.read_text().splitlines()) if r["step"] <= keep_until]
        with self.csv_path.open("w", newline="") as f:
            csv.DictWriter(f, COLUMNS).writeheader()
        self.jsonl_path.write_text("")
        for row in rows:
            self._append(row)
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            pass

    def _append(self, row: dict) -> None:
        with self.csv_path.open("a", newline="") as f:
            csv.DictWriter(f, COLUMNS).writerow(row)
        with self.jsonl_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def write(self, row: dict) -> None:
        self._append(row)
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "step":
                    self.tensorboard.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def run_seed(args, seed: int, device: torch.device, transitions) -> float:
    """One training run; returns the final evaluation's mean normalised score."""
    from .evaluation import BackgroundEvaluator, Evaluator

    config = resolve_config(args)
    env_name, _ = split_name(args.env)
    run_dir = Path(args.out) / args.env / f"seed{seed}"
    ckpt_path = run_dir / CHECKPOINT
    if ckpt_path.exists() and not args.resume:
        raise TrainingError(f"{run_dir} already holds a run; pass --resume to continue it or --out to start elsewhere")
    if args.resume and not ckpt_path.exists():
        raise TrainingError(f"--resume: no checkpoint in {run_dir}; run without --resume to start it")
    run_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    buffer = TransitionBuffer(transitions, device)
    agent = TD3SBC(transitions.obs_dim, transitions.act_dim, 1.0, config, device)
    agent.obs_mean.copy_(buffer.obs_mean)
    agent.obs_std.copy_(buffer.obs_std)
    monitor = UpdateMonitor(device)
    start = 0
    if args.resume:
        try:
            state = load_checkpoint(ckpt_path, device)
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
        agent.load_state_dict(state["agent"])
        for name, opt in agent.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        agent.num_updates = start = state["step"]
        monitor.load_state_dict(state["monitor"])
        set_rng_state(state["rng"])
    (run_dir / "config.json").write_text(json.dumps({
        "env": args.env, "seed": seed, "dataset": transitions.source, "transitions": len(transitions),
        "steps": args.steps, "batch_size": args.batch_size, "device": str(device),
        "graphs": bool(args.graphs), "async_eval": bool(args.async_eval), "config": dataclasses.asdict(config),
    }, indent=2, default=str))
    runner = UpdateRunner(agent, buffer, monitor, args.batch_size, graphs=bool(args.graphs),
                          pairs_per_graph=args.graph_pairs)

    def checkpoint(step: int) -> None:
        save_checkpoint(ckpt_path, {
            "step": step, "agent": agent.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in agent.optimizers.items()},
            "monitor": monitor.state_dict(), "rng": rng_state(), "env": args.env, "seed": seed,
        })

    def policy(obs):
        return agent.act(obs.to(device)).cpu()

    pending = deque()  # (row, Future of its evaluation or None): rows are written in step order
    score, last_score, step = math.nan, None, start

    def write_rows(wait: bool = False, abandon: bool = False) -> None:
        """Writes the waiting rows in step order: those whose evaluations have finished, or every one
        after its evaluation (wait), or every one now with what has finished (abandon: the run ends)."""
        nonlocal score, last_score
        while pending and (wait or abandon or pending[0][1] is None or pending[0][1].done()):
            row, evaluation = pending.popleft()
            if evaluation is not None and (not abandon or finished(evaluation)):
                try:
                    result = evaluation.result()
                except Exception as exc:
                    raise TrainingError(f"the evaluation at update {row['step']} failed in the worker process "
                                        f"({first_line(exc)}); --no-async-eval runs it inline") from exc
                row["eval_return"], row["eval_score"] = result.mean_return, result.mean_score
                score = last_score = result.mean_score
            log.write(row)

    with contextlib.ExitStack() as cleanup:
        log = MetricsLog(run_dir, keep_until=start if args.resume else None)
        if args.wandb:
            log = WandbMirror(log, args.wandb, run_dir, json.loads((run_dir / "config.json").read_text()),
                              args.wandb_group)
        cleanup.callback(log.close)
        if args.async_eval:
            background = BackgroundEvaluator(env_name, args.eval_episodes)
            cleanup.callback(background.close)
        else:
            evaluator = Evaluator(env_name, args.eval_episodes)
            cleanup.callback(evaluator.close)
            if args.graphs:
                policy = GraphedPolicy(agent, args.eval_episodes)
        cleanup.callback(write_rows, abandon=True)  # runs first: an error keeps the rows before it

        def submit_evaluation(step: int) -> Future:
            seed_of_step = seed * 1_000_003 + step
            if args.async_eval:
                return background.submit(agent.cpu_policy(), seed_of_step)
            done = Future()
            done.set_result(evaluator(policy, seed_of_step))
            return done

        progress = None
        if not args.no_progress:
            from tqdm import tqdm

            progress = cleanup.enter_context(tqdm(total=args.steps, initial=start, desc=f"{args.env} seed {seed}",
                                                  unit="upd", dynamic_ncols=True))
        t_log = time.perf_counter()
        while step < args.steps:
            boundaries = [args.steps, *(math.ceil((step + 1) / k) * k for k in
                                        (args.log_every, args.eval_every, args.checkpoint_every))]
            n = min(boundaries) - step
            runner.run(n)
            step += n
            row = {"step": step, **monitor.read()}
            bad = monitor.nonfinite()
            if bad:
                term, at = bad[0]
                kept = f"the last good checkpoint is {ckpt_path}" if ckpt_path.exists() else "no checkpoint was written yet"
                raise TrainingError(f"diverged: {term} became NaN/inf at update {at}; {kept} (try a smaller lr "
                                    "or BC weights)")
            now = time.perf_counter()
            row["updates_per_s"] = n / (now - t_log)
            evaluates = step % args.eval_every == 0 or step == args.steps
            pending.append((row, submit_evaluation(step) if evaluates else None))
            checkpoints = step % args.checkpoint_every == 0 or step == args.steps
            write_rows(wait=checkpoints)  # a checkpoint comes after every row up to its step
            if checkpoints:
                checkpoint(step)
            if progress is not None:
                progress.update(n)
                progress.set_postfix(upd_s=f"{row['updates_per_s']:.1f}",
                                     score="-" if last_score is None else f"{last_score:.1f}")
            t_log = time.perf_counter()
    return score


def load_agent(run_dir, device) -> tuple:
    """(agent, config.json as a dict) of a run directory that the training or sweep command wrote: the
    TD3SBC of the run's config at its checkpoint, on `device`. A missing or unreadable piece is a TrainingError."""
    from .data.names import DIMS, parse_name

    run_dir = Path(run_dir)
    ckpt_path, config_path = run_dir / CHECKPOINT, run_dir / "config.json"
    for path in (config_path, ckpt_path):
        if not path.is_file():
            raise TrainingError(f"no {path.name} in {run_dir}: pass a run directory that the training or sweep "
                                "command wrote, e.g. runs/halfcheetah-medium-replay/seed0")
    run = json.loads(config_path.read_text())
    try:
        env, _ = parse_name(run["env"])
    except ValueError:
        raise TrainingError(f"{config_path}: {unknown_env_message(run['env'])}") from None
    try:
        state = load_checkpoint(ckpt_path, device)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    agent = TD3SBC(*DIMS[env], 1.0, TD3SBCConfig.from_dict(run["config"]), device)
    agent.load_state_dict(state["agent"])
    agent.num_updates = state["step"]
    return agent, run


def finished(evaluation: Future) -> bool:
    """Whether an evaluation ended with a result (not pending, cancelled or failed)."""
    return evaluation.done() and not evaluation.cancelled() and evaluation.exception() is None



def kernel_backend(args, device) -> str:
    """The backend that runs on `device`; a backend or precision it cannot run as a TrainingError."""
    try:
        backend = resolve_backend(args.backend, device)
        kernel_ops(backend, args.precision)
    except ValueError as exc:
        raise TrainingError(f"--backend {args.backend} --precision {args.precision} on {device}: {exc}") from None
    return backend


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def main(argv=None) -> int:
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise SystemExit("fastbdm.train.main was called while the evaluation worker process imported your script: "
                         "put the call under `if __name__ == '__main__':` (or pass --no-async-eval)")
    args = build_parser().parse_args(argv)
    from .data import DatasetError, load_transitions

    try:
        check_args(args)
        resolve_config(args)
        device = pick_device(args.device)
        backend = kernel_backend(args, device)
        if args.graphs is None:
            args.graphs = device.type == "cuda"
        args.graphs = args.graphs and device.type == "cuda"
        if args.async_eval is None:  # the evaluation process needs a core the update loop leaves free
            args.async_eval = device.type == "cuda" or args.threads < len(os.sched_getaffinity(0))
        torch.set_num_threads(args.threads)
        print(preset_line(args, resolve_config(args)) + f" | device {device}, backend "
              f"{backend} ({args.precision}), graphs {'on' if args.graphs else 'off'}, evaluation "
              f"{'in the background' if args.async_eval else 'inline'}", flush=True)
        generate_kwargs = None if args.generate_steps is None else {"max_steps": args.generate_steps}
        transitions = load_transitions(args.env, dataset_path=args.dataset, device="cpu", download=args.download,
                                       generate_kwargs=generate_kwargs, progress=not args.no_progress)
        print(f"dataset: {len(transitions)} transitions from {transitions.source}", flush=True)
        scores = []
        for seed in args.seeds or [args.seed]:
            scores.append(run_seed(args, seed, device, transitions))
            print(f"seed {seed}: final normalised score {scores[-1]:.1f}", flush=True)
    except (TrainingError, DatasetError, GraphCaptureError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is kept; continue with --resume", file=sys.stderr)
        return 130
    mean = sum(scores) / len(scores)
    print(f"final normalised score: {mean:.1f} (mean over {args.eval_episodes} episodes"
          + (f" and {len(scores)} seeds)" if len(scores) > 1 else ")"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
