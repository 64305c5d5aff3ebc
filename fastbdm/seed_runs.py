"""Training S seeds in one process: one update engine for all of them, S SeedRecords (run directories).

S > 1: fastbdm.seed_batch.SeedBatch, the seeds' learners stacked and updated in one vmapped update
(graphs.SeedBatchRunner). S = 1: TD3SBC.update (graphs.UpdateRunner), the same update as one seed of a
batch without the vmap (which costs a single seed 1.7x on the CPU, docs/PERFORMANCE.md). Either way seed
k's agent is built after torch.manual_seed(k) and its batches and update noise come from its own
generator (update_generator), so seed k trains alike alone and in any batch of seeds, up to the float
rounding of batched against single matmuls. The evaluation runs every seed's policy together in
S x episodes environments, seed k's episodes seeded as when it trains alone.
"""
import contextlib
import math
import sys
import time
from collections import deque
from concurrent.futures import Future
from typing import List, Sequence

import numpy as np
import torch

from .backends import resolve_backend
from .branches import Branches
from .checkpoint import estimated_size, set_rng_state
from .graphs import GraphedPolicy, SeedBatchRunner, UpdateRunner, first_line
from .monitor import UpdateMonitor
from .presets import split_name
from .replay import TransitionBuffer
from .run_record import MetricsLog, SeedRecord, TrainingError, check_free_space, finished
from .seed_batch import SeedBatch
from .td3sbc import TD3SBC, one_adam_state
from .wandb_log import WandbMirror

UPDATE_STREAM = 1  # the SeedSequence key of a seed's update stream, beside the seed itself
EVAL_SEED_STRIDE = 1_000_003  # seed k's evaluation at update u seeds its episodes from k x this + u


def update_generator(seed: int, device: torch.device) -> torch.Generator:
    """Seed `seed`'s stream of batch indices and update noise on `device`, seeded through numpy's
    SeedSequence (seed, UPDATE_STREAM): apart from the stream torch.manual_seed(seed) gives the initial
    parameters."""
    key = int(np.random.SeedSequence([seed, UPDATE_STREAM]).generate_state(1)[0])
    return torch.Generator(device).manual_seed(key)


class OneSeed:
    """One seed's TD3SBC with the interface of a SeedBatch that train_batch uses (S = 1)."""

    def __init__(self, agent: TD3SBC, generator: torch.Generator):
        self.agent, self.generators, self.obs_mean = agent, [generator], agent.obs_mean

    @property
    def num_updates(self) -> int:
        return self.agent.num_updates

    @num_updates.setter
    def num_updates(self, value: int) -> None:
        self.agent.num_updates = value

    def agent_state(self, seed: int) -> dict:
        return self.agent.state_dict()

    def optimizer_state(self, seed: int) -> dict:
        return {name: opt.state_dict() for name, opt in self.agent.optimizers.items()}

    def load(self, agent_states: Sequence[dict], optimizer_states: Sequence[dict]) -> None:
        self.agent.load_state_dict(agent_states[0])
        for name, opt in self.agent.optimizers.items():
            opt.load_state_dict(optimizer_states[0][name])

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return self.agent.act(obs)

    def cpu_policy(self):
        return self.agent.cpu_policy()


def build_learners(records: Sequence[SeedRecord], config, transitions, buffer, device):
    """(learners, template agent): OneSeed or a SeedBatch of the records' seeds, built as each seed alone."""
    agents = []
    for record in records:
        torch.manual_seed(record.seed)
        agent = TD3SBC(transitions.obs_dim, transitions.act_dim, 1.0, config, device)
        agent.obs_mean.copy_(buffer.obs_mean)
        agent.obs_std.copy_(buffer.obs_std)
        agents.append(agent)
    generators = [update_generator(record.seed, device) for record in records]
    if len(records) == 1:
        return OneSeed(agents[0], generators[0]), agents[0]
    return SeedBatch(agents, generators), agents[0]


def make_runner(learners, buffer, monitors: List[UpdateMonitor], args) -> UpdateRunner:
    """The runner of the learners' updates (eager, or CUDA graphs with args.graphs)."""
    if isinstance(learners, OneSeed):
        learners.agent.branches = Branches(args.streams)
        return UpdateRunner(learners.agent, buffer, monitors[0], args.batch_size, graphs=bool(args.graphs),
                            pairs_per_graph=args.graph_pairs, generator=learners.generators[0])
    return SeedBatchRunner(learners, buffer, monitors, args.batch_size, graphs=bool(args.graphs),
                           pairs_per_graph=args.graph_pairs)


def seeds_label(seeds: Sequence[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else "seeds " + ",".join(map(str, seeds))


def score_postfix(scores: Sequence[float]) -> str:
    """The progress bar's score: one seed's, or the mean over seeds with their min and max."""
    if len(scores) == 1:
        return f"{scores[0]:.1f}"
    return f"{sum(scores) / len(scores):.1f} ({min(scores):.1f}..{max(scores):.1f})"


def train_batch(args, records: List[SeedRecord], device: torch.device, transitions, config, run: dict) -> List[float]:
    """Trains the records' seeds (all at the same update count) to args.steps in one run; returns each
    seed's final evaluation's mean normalised score. run: the settings every config.json records."""
    from .evaluation import BackgroundEvaluator, Evaluator

    seeds, count, episodes = [r.seed for r in records], len(records), args.eval_episodes
    env_name, _ = split_name(args.env)
    buffer = TransitionBuffer(transitions, device)
    learners, template = build_learners(records, config, transitions, buffer, device)
    fused = resolve_backend(config.backend, device) == "triton"  # one record launch (kernels/record_metrics.py)
    monitors = [UpdateMonitor(device, fused=fused) for _ in records]
    for record in records:
        check_free_space(record.ckpt_path, estimated_size(template, template.optimizers.values()))
    start = records[0].start
    if start:
        learners.load([r.state["agent"] for r in records], [one_adam_state(r.state["optimizers"]) for r in records])
        learners.num_updates = start
        for record, monitor, generator in zip(records, monitors, learners.generators):
            monitor.load_state_dict(record.state["monitor"])
            if record.generator_state() is None:
                print(f"note: {record.ckpt_path} predates per-seed update streams: its resumed updates draw from "
                      "a fresh stream", file=sys.stderr, flush=True)
            else:
                generator.set_state(record.generator_state())
        if count == 1:
            set_rng_state(records[0].state["rng"])
    for record in records:
        record.write_config(run)
    runner = make_runner(learners, buffer, monitors, args)
    policy = learners.act

    pending = deque()  # (each seed's row, Future of the evaluation or None): rows are written in step order
    scores, last_scores, step = [math.nan] * count, None, start

    def write_rows(wait: bool = False, abandon: bool = False) -> None:
        """Writes the waiting rows in step order: those whose evaluations have finished, or every one
        after its evaluation (wait), or every one now with what has finished (abandon: the run ends)."""
        nonlocal scores, last_scores
        while pending and (wait or abandon or pending[0][1] is None or pending[0][1].done()):
            rows, evaluation = pending.popleft()
            if evaluation is not None and (not abandon or finished(evaluation)):
                try:
                    result = evaluation.result()
                except Exception as exc:
                    raise TrainingError(f"the evaluation at update {rows[0]['step']} failed in the worker process "
                                        f"({first_line(exc)}); --no-async-eval runs it inline") from exc
                returns, seed_scores = result.returns.reshape(count, episodes), result.scores.reshape(count, episodes)
                for row, seed_returns, seed_score in zip(rows, returns, seed_scores):
                    row["eval_return"], row["eval_score"] = float(seed_returns.mean()), float(seed_score.mean())
                scores = last_scores = [row["eval_score"] for row in rows]
            for log, row in zip(logs, rows):
                log.write(row)

    with contextlib.ExitStack() as cleanup:
        logs = []
        for record in records:
            log = MetricsLog(record.run_dir, keep_until=start if args.resume else None)
            if args.wandb:
                log = WandbMirror(log, args.wandb, record.run_dir, {**run, "seed": record.seed}, args.wandb_group)
            cleanup.callback(log.close)
            logs.append(log)
        if args.async_eval:
            background = BackgroundEvaluator(args.eval_env, count * episodes, env_name)
            cleanup.callback(background.close)
        else:
            evaluator = Evaluator(args.eval_env, count * episodes, env_name)
            cleanup.callback(evaluator.close)
            if args.graphs:
                policy = GraphedPolicy(learners, count * episodes)
        cleanup.callback(write_rows, abandon=True)  # runs first: an error keeps the rows before it

        def submit_evaluation(step: int) -> Future:
            """Every seed's policy in its own `episodes` environments, seeded as when the seed trains alone."""
            env_seeds = [seed * EVAL_SEED_STRIDE + step + i for seed in seeds for i in range(episodes)]
            if args.async_eval:
                return background.submit(learners.cpu_policy(), env_seeds)
            done = Future()
            done.set_result(evaluator(lambda obs: policy(obs.to(device)).cpu(), env_seeds))
            return done

        progress = None
        if not args.no_progress:
            from tqdm import tqdm

            progress = cleanup.enter_context(tqdm(total=args.steps, initial=start, unit="upd", dynamic_ncols=True,
                                                  desc=f"{args.env} {seeds_label(seeds)}"))
        t_log = time.perf_counter()
        while step < args.steps:
            boundaries = [args.steps, *(math.ceil((step + 1) / k) * k for k in
                                        (args.log_every, args.eval_every, args.checkpoint_every))]
            n = min(boundaries) - step
            runner.run(n, None if progress is None else progress.update)  # the bar moves with every update
            step += n
            now = time.perf_counter()
            rows = [{"step": step, **monitor.read(), "updates_per_s": n / (now - t_log)} for monitor in monitors]
            check_finite(records, monitors)
            evaluates = step % args.eval_every == 0 or step == args.steps
            pending.append((rows, submit_evaluation(step) if evaluates else None))
            checkpoints = step % args.checkpoint_every == 0 or step == args.steps
            write_rows(wait=checkpoints)  # a checkpoint comes after every row up to its step
            if checkpoints:
                for k, (record, log) in enumerate(zip(records, logs)):
                    record.save(log, step, learners.agent_state(k), learners.optimizer_state(k),
                                monitors[k].state_dict(), learners.generators[k])
            if progress is not None:
                progress.set_postfix(upd_s=f"{rows[0]['updates_per_s']:.1f}",
                                     score="-" if last_scores is None else score_postfix(last_scores))
            t_log = time.perf_counter()
    return scores


def check_finite(records: Sequence[SeedRecord], monitors: Sequence[UpdateMonitor]) -> None:
    """TrainingError naming the first term (and, in a batch, the seed) that became NaN/inf."""
    for record, monitor in zip(records, monitors):
        bad = monitor.nonfinite()
        if bad:
            term, at = bad[0]
            whose = f"seed {record.seed}'s " if len(records) > 1 else ""
            kept = (f"the last good checkpoint is {record.ckpt_path}" if record.ckpt_path.exists()
                    else "no checkpoint was written yet")
            raise TrainingError(f"diverged: {whose}{term} became NaN/inf at update {at}; {kept} (try a smaller lr "
                                "or BC weights)")
