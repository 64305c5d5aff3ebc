"""`python -m fastbdm.train --env halfcheetah-medium-replay`: train TD3-SBC end to end.

Dataset (local, downloaded or generated), training, periodic MuJoCo evaluation with the D4RL
normalised score, metrics (CSV, JSONL, TensorBoard when installed), durable checkpoints, exact resume.
Several seeds (--seeds) train together in batched runs (fastbdm.seed_runs), each in its own run
directory (fastbdm.run_record), as many per batch as the device holds (fastbdm.seed_memory).
"""
import argparse
import contextlib
import dataclasses
import fcntl
import itertools
import json
import multiprocessing
import os
import statistics
import sys
from pathlib import Path

import torch

from .backends import BACKENDS, PRECISIONS, kernel_ops, resolve_backend, torch_matmul_precision
from .branches import STREAMS
from .checkpoint import CheckpointError, has_checkpoint, load_latest
from .compat import CompatFlags
from .durable import DurableWriteError
from .graphs import GraphCaptureError
from .presets import ALGO_DEFAULTS, ALGOS, Preset, preset
from .run_record import CHECKPOINT, COLUMNS, SeedRecord, TrainingError  # noqa: F401 (COLUMNS: the metrics' columns)
from .schedule import PREDICTIONS
from .seed_memory import dataset_bytes, seed_memory, seeds_per_batch
from .seed_runs import train_batch
from .td3sbc import TD3SBC, TD3SBCConfig
from .wandb_log import WandbError


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
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="several seeds (instead of --seed), trained together: one batched update of all seeds, up "
                        "to --seeds-per-batch at a time; each seed writes and resumes its own run directory and "
                        "trains as it does alone")
    p.add_argument("--seeds-per-batch", type=int, default=None, metavar="K",
                   help="at most K seeds in one batched run, the rest in further batches (default: on CUDA as "
                        "many as the free device memory holds, on the CPU all); a batch the device cannot hold "
                        "is refused before it starts")
    p.add_argument("--no-seed-batch", action="store_true",
                   help="train the seeds one after another, each alone (as --seed does)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when available")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="BDM kernels: auto = triton on CUDA, torch on CPU")
    p.add_argument("--precision", choices=PRECISIONS, default="tf32",
                   help="matmuls of the Triton MLP kernels: tf32 operands, tf32x3, exact fp32 (ieee), or bf16 "
                        "weights/activations/operands with fp32 accumulation (GPU only); torch's own matmuls of "
                        "the update on CUDA run in TF32 for tf32 and bf16, in exact fp32 for ieee and tf32x3, "
                        "set while training runs")
    p.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="capture the update in CUDA graphs (default: on with CUDA; ignored on CPU)")
    p.add_argument("--streams", type=int, choices=STREAMS, default=1,
                   help="2: each update's independent work (the critic beside the BDM denoisers, Q1 beside the "
                        "SBC term) on two CUDA streams, parallel branches of its CUDA graph, the learning unchanged; "
                        "one seed at a time (default 1 until a GPU has measured it: docs/PERFORMANCE.md)")
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
                 "graph_pairs", "seeds_per_batch"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise TrainingError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.no_seed_batch and args.seeds_per_batch is not None:
        raise TrainingError(f"--no-seed-batch trains one seed at a time and --seeds-per-batch {args.seeds_per_batch} "
                            "batches them: pass one of the two")
    if args.seeds and len(set(args.seeds)) < len(args.seeds):
        raise TrainingError(f"--seeds {' '.join(map(str, args.seeds))}: give each seed once")
    if args.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise TrainingError("--wandb needs the wandb package: pip install -e '.[sweep]'") from None
    if args.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda: no CUDA device is visible; use --device cpu")


def resolve_eval_env(args, transitions) -> str:
    """The evaluation environment: --eval-env (checked against the data's sizes), else the data's."""
    if args.eval_env is None:
        return transitions.env_id
    from .data.names import check_env_matches

    check_env_matches(args.eval_env, transitions.obs_dim, transitions.act_dim)
    return args.eval_env


def dataset_line(transitions) -> str:
    """'dataset: N transitions from SOURCE (KIND)' and the partial-dataset note; KIND once (a generated
    dataset's source already ends with '(generated)')."""
    kind = f"({transitions.source_kind})"
    source = transitions.source if transitions.source.endswith(kind) else f"{transitions.source} {kind}"
    return f"dataset: {len(transitions)} transitions from {source}{dataset_note(transitions)}"


def dataset_note(transitions) -> str:
    """' (partial dataset: level 17.6 of 45)' after every score of a run on partial data, else ''."""
    from .data.levels import level_summary

    return f" (partial dataset: {level_summary(transitions.level)})" if transitions.partial else ""


def plan_batches(args, records, config: TD3SBCConfig, transitions, device: torch.device) -> list:
    """The batched runs, in seed order: seeds at the same update count (resumed seeds whose batch was
    killed between their checkpoints may differ) in batches of at most the seeds per batch
    (fastbdm.seed_memory; 1 with --no-seed-batch). TrainingError when the device cannot hold a batch."""
    per_seed = seed_memory(TD3SBC(transitions.obs_dim, transitions.act_dim, 1.0, config, "cpu"), args.batch_size)
    try:
        per_batch = seeds_per_batch(len(records), 1 if args.no_seed_batch else args.seeds_per_batch, per_seed,
                                    dataset_bytes(transitions), device)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    batches = []
    for _, group in itertools.groupby(sorted(records, key=lambda r: r.start), key=lambda r: r.start):
        group = list(group)
        batches += [group[i:i + per_batch] for i in range(0, len(group), per_batch)]
    if args.streams == 2 and max(map(len, batches)) > 1:
        raise TrainingError(f"--streams 2 runs one seed's update on two streams, and these seeds train in batches "
                            f"of up to {max(map(len, batches))}: add --no-seed-batch or drop --streams 2")
    return batches


def run_settings(args, transitions, device: torch.device, config: TD3SBCConfig) -> dict:
    """What every seed's config.json records (the seed is filled in per seed)."""
    return {"env": args.env, "seed": None, "dataset": transitions.provenance(), "transitions": len(transitions),
            "allow_partial_dataset": args.allow_partial_dataset, "eval_env": args.eval_env, "algo": args.algo,
            "steps": args.steps, "batch_size": args.batch_size, "device": str(device), "graphs": bool(args.graphs),
            "streams": args.streams, "async_eval": bool(args.async_eval), "config": dataclasses.asdict(config)}


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
        note = dataset_note(transitions)  # with every score line
        print(dataset_line(transitions), flush=True)
        seeds, scores = args.seeds or [args.seed], {}
        with contextlib.ExitStack() as locks, torch_matmul_precision(args.precision):
            for seed in seeds:
                locks.enter_context(run_dir_lock(Path(args.out) / args.env / f"seed{seed}"))
            records = [SeedRecord(args, seed, device) for seed in seeds]
            run = run_settings(args, transitions, device, config)
            for group in plan_batches(args, records, config, transitions, device):
                for record, score in zip(group, train_batch(args, group, device, transitions, config, run)):
                    scores[record.seed] = score
                    print(f"seed {record.seed}: final normalised score {score:.1f}{note}", flush=True)
    except (TrainingError, DatasetError, GraphCaptureError, DurableWriteError, WandbError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except GenerationStopped as stopped:  # the dataset's generation, stopped with its state kept
        print(stopped, file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is kept; continue with --resume", file=sys.stderr)
        return 130
    print(final_score_line(seeds, [scores[seed] for seed in seeds], args.eval_episodes) + note)
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
