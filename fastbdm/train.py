"""`python -m fastbdm.train --env halfcheetah-medium-replay`: train TD3-SBC end to end.

Dataset (local, downloaded or generated), training, periodic MuJoCo evaluation with the D4RL
normalised score, metrics (CSV, JSONL, TensorBoard when installed), durable checkpoints, exact resume.
"""
import argparse
import contextlib
import csv
import dataclasses
import fcntl
import io
import json
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path

import torch

from .backends import BACKENDS, PRECISIONS, kernel_ops, resolve_backend, torch_matmul_precision
from .checkpoint import (CheckpointError, estimated_size, has_checkpoint, load_latest, rng_state, save_checkpoint,
                         set_rng_state, space_needed)
from .compat import CompatFlags
from .durable import DurableWriteError, megabytes, sync_file, write_durable, write_error
from .graphs import GraphCaptureError, GraphedPolicy, UpdateRunner, first_line
from .monitor import METRICS, UpdateMonitor
from .presets import ALGO_DEFAULTS, ALGOS, Preset, preset, split_name
from .replay import TransitionBuffer
from .schedule import PREDICTIONS
from .td3sbc import TD3SBC, TD3SBCConfig, one_adam_state
from .wandb_log import WandbError, WandbMirror

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
    p = parser_class(prog="python -m fastbdm.train", description="Train TD3-SBC (or a baseline, --algo) end to end: dataset, updates, MuJoCo evaluation with "
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
    p.add_argument("--algo", choices=ALGOS, default="td3sbc",
                   help="td3sbc; rebrac (TD3-SBC without state-BC: no denoisers, no chain); td3bc (TD3+BC with "
                        "its reference defaults: lr 3e-4, batch 256, 2 x 256 networks, alpha 2.5)")
    p.add_argument("--allow-partial-dataset", action="store_true",
                   help="train on a generated dataset that stopped short of the level its name promises (refused "
                        "otherwise); recorded in config.json and printed with every score")
    p.add_argument("--eval-env", default=None, metavar="ID",
                   help="gymnasium environment of the evaluations (default: the data's: v4 for D4RL hdf5 and npz "
                        "files, the recorded one for Minari and generated data, v5 there)")
    p.add_argument("--steps", type=int, default=1_000_000, help="number of updates (of the --algo chosen)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the run")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="several seeds, run one after another (instead of --seed)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when available")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="BDM kernels: auto = triton on CUDA, torch on CPU")
    p.add_argument("--precision", choices=PRECISIONS, default="tf32",
                   help="matmuls of the Triton MLP kernels: tf32 operands, tf32x3, exact fp32 (ieee), or bf16 "
                        "weights/activations/operands with fp32 accumulation (GPU only); torch's own matmuls of "
                        "the update on CUDA run in TF32 for tf32 and bf16, in exact fp32 for ieee and tf32x3, "
                        "set while training runs")
    p.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="capture the update in CUDA graphs (default: on with CUDA; ignored on CPU)")
    p.add_argument("--graph-pairs", type=int, default=1,
                   help="pairs of updates unrolled in one CUDA graph (one replay = 2x this many updates)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on the CPU")
    p.add_argument("--batch-size", type=int, default=None,
                   help="transitions per update (default: the algorithm's, 1024 for td3sbc and rebrac, 256 for td3bc)")
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
    p.add_argument("--w-rel", type=float, default=None,
                   help="relative state-BC weight w_rel, td3sbc only (default: the preset's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--wandb", default=None, metavar="PROJECT",
                   help="also log metrics and config to this Weights & Biases project (WANDB_MODE=offline: no network)")
    p.add_argument("--wandb-group", default=None, help="wandb group of the run (fastbdm.sweep sets its variant)")
    return p


def resolve_config(args) -> TD3SBCConfig:
    try:
        coeffs = preset(args.env, args.algo)
    except ValueError:
        raise TrainingError(unknown_env_message(args.env)) from None
    if args.algo != "td3sbc" and args.w_rel:
        raise TrainingError(f"--w-rel {args.w_rel}: {args.algo} has no state-BC term; "
                            "drop --w-rel or use --algo td3sbc")
    return TD3SBCConfig.for_algo(
        args.algo, w_actor_bc=coeffs.w_actor_bc if args.w_actor_bc is None else args.w_actor_bc,
        w_critic_bc=coeffs.w_critic_bc if args.w_critic_bc is None else args.w_critic_bc,
        w_rel=coeffs.w_rel if args.w_rel is None else args.w_rel,
        prediction=args.prediction, sampler=args.sampler, backend=args.backend, precision=args.precision,
        compat=CompatFlags.resolve(args.compat),
    )


def preset_line(args, config: TD3SBCConfig) -> str:
    """'preset ENV, algo ALGO: w_actor_bc=.., w_critic_bc=.., w_rel=..' with the values the run uses; a value
    set on the command line is marked with the preset's, e.g. 'w_rel=0.0 (preset 0.1)'."""
    values = []
    for name, preset_value in dataclasses.asdict(preset(args.env, args.algo)).items():
        used = getattr(config, name)
        values.append(f"{name}={used}" + ("" if used == preset_value else f" (preset {preset_value})"))
    return f"preset {args.env}, algo {args.algo}: " + ", ".join(values)


def unknown_env_message(name: str) -> str:
    from .data import DatasetError, parse_name

    try:
        parse_name(name)
    except DatasetError as exc:
        return str(exc)
    return f"unknown task {name!r}"


def resolve_batch_size(args) -> str:
    """Sets args.batch_size to the algorithm's default when --batch-size was not given; says which applies."""
    if args.batch_size is not None:
        return f"batch_size={args.batch_size} (--batch-size)"
    args.batch_size = ALGO_DEFAULTS[args.algo].batch_size
    return f"batch_size={args.batch_size} ({args.algo}'s default)"


def algo_line(args, batch: str) -> str:
    """The algorithm's own defaults, printed like a preset."""
    weights = {f.name for f in dataclasses.fields(Preset)}  # on the preset line
    own = [f"{k}={v}" for k, v in ALGO_DEFAULTS[args.algo].model.items() if k not in weights]
    return f"algo {args.algo}: " + ", ".join([batch, *own])


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
    """metrics.csv and metrics.jsonl (one row per log step), TensorBoard events when available.

    keep_until (resume): the rows up to that update are kept, rewritten durably; a line that does not
    parse (cut short by a crash; rows up to a checkpoint are synced before it) is dropped with a note."""

    def __init__(self, run_dir: Path, keep_until: int = None):
        self.csv_path, self.jsonl_path = run_dir / "metrics.csv", run_dir / "metrics.jsonl"
        rows = []
        if keep_until is not None and self.jsonl_path.exists():
            rows = [r for r in self._read_rows() if r["step"] <= keep_until]
        csv_text = io.StringIO(newline="")
        writer = csv.DictWriter(csv_text, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        write_durable(self.csv_path, csv_text.getvalue().encode())
        write_durable(self.jsonl_path, "".join(json.dumps(row) + "\n" for row in rows).encode())
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            pass

    def _read_rows(self) -> list:
        rows = []
        for number, line in enumerate(self.jsonl_path.read_text().splitlines(), 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"note: {self.jsonl_path} line {number} was cut short by a crash and is dropped", file=sys.stderr)
        return rows

    def _append(self, row: dict) -> None:
        try:
            with self.csv_path.open("a", newline="") as f:
                csv.DictWriter(f, COLUMNS).writerow(row)
            with self.jsonl_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as exc:
            raise TrainingError(str(write_error(self.csv_path.parent, f"cannot append the row of update {row['step']}",
                                                len(json.dumps(row)), exc))) from None

    def sync(self) -> None:
        """Make the rows written so far durable (before a checkpoint that counts on them)."""
        sync_file(self.csv_path)
        sync_file(self.jsonl_path)

    def write(self, row: dict) -> None:
        self._append(row)
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "step":
                    self.tensorboard.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def resolve_eval_env(args, transitions) -> str:
    """The evaluation environment: --eval-env (checked against the data's sizes), else the data's."""
    if args.eval_env is None:
        return transitions.env_id
    from .data.names import check_env_matches

    check_env_matches(args.eval_env, transitions.obs_dim, transitions.act_dim)
    return args.eval_env


def dataset_note(transitions) -> str:
    """' (partial dataset: level 17.6 of 45)' after every score of a run on partial data, else ''."""
    from .data.levels import level_summary

    return f" (partial dataset: {level_summary(transitions.level)})" if transitions.partial else ""


def run_seed(args, seed: int, device: torch.device, transitions) -> float:
    """One training run; returns the final evaluation's mean normalised score. args.eval_env: the
    evaluation environment's gymnasium id (resolve_eval_env)."""
    from .evaluation import BackgroundEvaluator, Evaluator

    config = resolve_config(args)
    env_name, _ = split_name(args.env)
    run_dir = Path(args.out) / args.env / f"seed{seed}"
    ckpt_path = run_dir / CHECKPOINT
    if has_checkpoint(ckpt_path) and not args.resume:
        raise TrainingError(f"{run_dir} already holds a run; pass --resume to continue it or --out to start elsewhere")
    if args.resume and not has_checkpoint(ckpt_path):
        raise TrainingError(f"--resume: no checkpoint in {run_dir}; run without --resume to start it")
    run_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    buffer = TransitionBuffer(transitions, device)
    agent = TD3SBC(transitions.obs_dim, transitions.act_dim, 1.0, config, device)
    agent.obs_mean.copy_(buffer.obs_mean)
    agent.obs_std.copy_(buffer.obs_std)
    monitor = UpdateMonitor(device)
    check_free_space(ckpt_path, estimated_size(agent, agent.optimizers.values()))
    start = 0
    if args.resume:
        try:
            state, note = load_latest(ckpt_path, device)
        except CheckpointError as exc:
            raise TrainingError(f"{exc}; start a new run or point --out at another run") from None
        if note:
            print(f"note: {note}", file=sys.stderr, flush=True)
        trained = state.get("algo", "td3sbc")
        if trained != args.algo:
            raise TrainingError(f"--resume: {run_dir} was trained with --algo {trained}; pass --algo {trained}")
        agent.load_state_dict(state["agent"])
        for name, opt in agent.optimizers.items():
            opt.load_state_dict(one_adam_state(state["optimizers"])[name])
        agent.num_updates = start = state["step"]
        monitor.load_state_dict(state["monitor"])
        set_rng_state(state["rng"])
    write_durable(run_dir / "config.json", json.dumps({
        "env": args.env, "seed": seed, "dataset": transitions.provenance(), "transitions": len(transitions),
        "allow_partial_dataset": args.allow_partial_dataset, "eval_env": args.eval_env, "algo": args.algo,
        "steps": args.steps, "batch_size": args.batch_size, "device": str(device),
        "graphs": bool(args.graphs), "async_eval": bool(args.async_eval), "config": dataclasses.asdict(config),
    }, indent=2, default=str).encode())
    runner = UpdateRunner(agent, buffer, monitor, args.batch_size, graphs=bool(args.graphs),
                          pairs_per_graph=args.graph_pairs)

    def checkpoint(step: int) -> None:
        log.sync()  # the rows up to `step` are on disk before the checkpoint that counts on them
        try:
            save_checkpoint(ckpt_path, {
                "step": step, "agent": agent.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in agent.optimizers.items()},
                "monitor": monitor.state_dict(), "rng": rng_state(), "env": args.env, "seed": seed,
                "algo": args.algo,
            })
        except DurableWriteError as exc:
            kept = "the previous checkpoint and every metric row are" if has_checkpoint(ckpt_path) else "every metric row is"
            raise TrainingError(f"{exc}; {kept} kept") from None

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
            background = BackgroundEvaluator(args.eval_env, args.eval_episodes, env_name)
            cleanup.callback(background.close)
        else:
            evaluator = Evaluator(args.eval_env, args.eval_episodes, env_name)
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
            runner.run(n, None if progress is None else progress.update)  # the bar moves with every update
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
                progress.set_postfix(upd_s=f"{row['updates_per_s']:.1f}",
                                     score="-" if last_score is None else f"{last_score:.1f}")
            t_log = time.perf_counter()
    return score


def check_free_space(ckpt_path: Path, size: int) -> None:
    """TrainingError unless the run directory has room for the run's checkpoints of `size` bytes."""
    needed, free = space_needed(ckpt_path, size), shutil.disk_usage(ckpt_path.parent).free
    if free < needed:
        raise TrainingError(f"{ckpt_path.parent} has {megabytes(free)} free but the run's checkpoints need "
                            f"{megabytes(needed)} there ({megabytes(size)} each: the latest, the previous and one "
                            "being written); free some space or pass --out elsewhere")


@contextlib.contextmanager
def run_dir_lock(run_dir: Path):
    """Holds RUN_DIR/.lock while a run writes there; a second process on the same run directory (a
    retried sweep trial, a command started twice) gets a TrainingError instead of interleaved writes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingError(f"{run_dir} is in use by another training process; wait for it to end "
                                "or stop it") from None
        yield


def load_agent(run_dir, device) -> tuple:
    """(agent, config.json as a dict) of a run directory that the training or sweep command wrote: the
    TD3SBC of the run's config at its checkpoint, on `device`. A missing or unreadable piece is a TrainingError."""
    from .data.names import DIMS, parse_name

    run_dir = Path(run_dir)
    ckpt_path, config_path = run_dir / CHECKPOINT, run_dir / "config.json"
    for path in (config_path, ckpt_path):
        if not (has_checkpoint(path) if path == ckpt_path else path.is_file()):
            raise TrainingError(f"no {path.name} in {run_dir}: pass a run directory that the training or sweep "
                                "command wrote, e.g. runs/halfcheetah-medium-replay/seed0")
    run = json.loads(config_path.read_text())
    try:
        env, _ = parse_name(run["env"])
    except ValueError:
        raise TrainingError(f"{config_path}: {unknown_env_message(run['env'])}") from None
    try:
        state, note = load_latest(ckpt_path, device)
    except CheckpointError as exc:
        raise TrainingError(str(exc)) from None
    if note:
        print(f"note: {note}", file=sys.stderr, flush=True)
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
    from .data.errors import GenerationStopped

    try:
        batch = resolve_batch_size(args)
        check_args(args)
        config = resolve_config(args)
        device = pick_device(args.device)
        backend = kernel_backend(args, device)
        if args.graphs is None:
            args.graphs = device.type == "cuda"
        args.graphs = args.graphs and device.type == "cuda"
        if args.async_eval is None:  # the evaluation process needs a core the update loop leaves free
            args.async_eval = device.type == "cuda" or args.threads < len(os.sched_getaffinity(0))
        torch.set_num_threads(args.threads)
        generate_kwargs = None if args.generate_steps is None else {"max_steps": args.generate_steps}
        transitions = load_transitions(args.env, dataset_path=args.dataset, device="cpu", download=args.download,
                                       generate_kwargs=generate_kwargs, progress=not args.no_progress,
                                       allow_partial=args.allow_partial_dataset)
        args.eval_env = resolve_eval_env(args, transitions)
        print(preset_line(args, config) + f" | device {device}, backend "
              f"{backend} ({args.precision}), graphs {'on' if args.graphs else 'off'}, evaluation "
              f"{'in the background' if args.async_eval else 'inline'} | eval env {args.eval_env}", flush=True)
        print(algo_line(args, batch), flush=True)
        if config.algo == "td3sbc" and config.w_rel == 0:
            print("note: --algo td3sbc with w_rel 0 learns what --algo rebrac learns, at a fraction of the cost "
                  "(rebrac trains no denoisers and runs no reverse chain)", flush=True)
        note = dataset_note(transitions)
        print(f"dataset: {len(transitions)} transitions from {transitions.source} ({transitions.source_kind})"
              + note, flush=True)
        scores = []
        with torch_matmul_precision(args.precision):
            for seed in args.seeds or [args.seed]:
                with run_dir_lock(Path(args.out) / args.env / f"seed{seed}"):
                    scores.append(run_seed(args, seed, device, transitions))
                print(f"seed {seed}: final normalised score {scores[-1]:.1f}{note}", flush=True)
    except (TrainingError, DatasetError, GraphCaptureError, DurableWriteError, WandbError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except GenerationStopped as stopped:  # the dataset's generation, stopped with its state kept
        print(stopped, file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is kept; continue with --resume", file=sys.stderr)
        return 130
    print(final_score_line(args.seeds or [args.seed], scores, args.eval_episodes) + note)
    return 0


def final_score_line(seeds, scores, episodes: int) -> str:
    """The run's last line: the final normalised score; over several seeds their mean +- sample std
    and each seed's."""
    if len(scores) == 1:
        return f"final normalised score: {scores[0]:.1f} (mean over {episodes} episodes)"
    each = ", ".join(f"seed {seed} {score:.1f}" for seed, score in zip(seeds, scores))
    return (f"final normalised score: {statistics.fmean(scores):.1f} +- {statistics.stdev(scores):.1f} (mean +- "
            f"sample std over {len(scores)} seeds: {each}; each the mean over {episodes} episodes)")


if __name__ == "__main__":
    sys.exit(main())
