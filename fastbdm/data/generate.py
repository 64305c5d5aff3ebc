"""Local generation of the locomotion datasets with an online TD3 behaviour (the offline default).

Behaviours (D4RL's recipe with TD3 instead of SAC; all rollouts add N(0, 0.1^2) action noise):
  random         uniform actions;
  medium-replay  every transition of a TD3 run until its evaluation return first reaches the medium
                 level (normalised MEDIUM_SCORE: halfcheetah 40, hopper 45, walker2d 60);
  full-replay    every transition of a longer TD3 run (max_steps, default 1M);
  medium         rollouts of the TD3 policy at the medium level;
  expert         rollouts of the TD3 policy after max_steps (default 1M) training steps;
  medium-expert  medium rollouts followed by expert rollouts.
A run stops at its step cap or time budget even if the level is not reached (fastbdm.data.levels:
the medium level for the medium kinds, the step cap for the long runs). A dataset that reached it is
stored under the Minari root as fastbdm/<env>/<kind>-v0; one that did not, as the partial dataset
fastbdm/<env>/<kind>-partial-v0 (metadata key 'fastbdm' -> 'level' says how far it got), and
generate_dataset then raises PartialDatasetError (the CLI exits 1 with that one line).
Evaluations run in another process on actor snapshots (BehaviourRun); medium-replay keeps the
transitions up to the evaluation that first reached the level. Ctrl-C, SIGTERM, the time budget or
the step cap keep the run's state for --resume (fastbdm.data.resume), which continues it exactly.
Where the time goes (docs/RESULTS.md): ~83% TD3 updates, ~7% MuJoCo steps, ~4% action selection.
TD3 defaults: fp32 (bf16 autocast is ~10x slower on CPUs without AVX512-BF16), hidden 128-128 and
Adam lr 1e-3 (a 256-256 update costs ~2x as much CPU: ~58 vs ~110 updates/s of one AVX2 core).

CLI: python -m fastbdm.data.generate --env halfcheetah-medium-replay [--max-steps N] [--seed S] [--resume]
"""
import argparse
import copy
import json
import signal
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint import CheckpointError, has_checkpoint, load_latest, previous_path, save_checkpoint
from ..evaluation import BackgroundEvaluator
from ..presets import REFERENCE_RETURNS, normalized_score
from .errors import DatasetError, GenerationStopped, PartialDatasetError
from .levels import LONG_RUN_KINDS, MEDIUM_KINDS, MEDIUM_SCORE, level_of, medium_return, shortfall_message
from .names import DIMS, env_id, generated_minari_id, make_env, parse_name, partial_minari_id
from .recorder import EpisodeRecorder
from .resume import (StopSignals, checkpoint_path, env_state, generator_state, load_env_state, medium_level_path,
                     set_generator_state)
from .store import dataset_dir, ensure_absent, write_minari
from .td3 import TD3, ReplayBuffer

# D4RL's transition counts: rollout size per policy (medium-expert holds medium + expert).
D4RL_SIZE = 1_000_000
# Training-step caps when max_steps is not given.
MEDIUM_STEP_CAP = 300_000
LONG_RUN_STEPS = 1_000_000
# medium-replay's default training budget per task, seconds: halfcheetah's bounds the README's first
# command (10 minutes on a quiet core, 14 on a VM 1.4x slower: 18 leaves room); hopper and walker2d
# need longer runs (docs/RESULTS.md, "Local generation").
MEDIUM_REPLAY_BUDGET_S = {"halfcheetah": 18 * 60, "hopper": 35 * 60, "walker2d": 60 * 60}
# Training time between two generation checkpoints (a killed run loses at most this much).
CHECKPOINT_EVERY_S = 300.0
REPLAY_CAPACITY = 1_000_000
# Training time (with updates) after which a run prints its estimated time to the step cap (one line, stderr).
ETA_AFTER_S = 60.0
# Environments stepped together in the policy rollouts (one batched actor call for all of them).
ROLLOUT_ENVS = 16
BEHAVIOURS = {
    "random": "uniform random actions",
    "medium-replay": "TD3 replay buffer until the evaluation return first reaches the medium level",
    "full-replay": "TD3 replay buffer of a full run",
    "medium": "rollouts of the medium-level TD3 policy",
    "expert": "rollouts of the TD3 policy after the full run",
    "medium-expert": "rollouts of the medium-level TD3 policy, then of the expert one",
}


class BehaviourRun:
    """One online TD3 run on a gymnasium v5 environment; transitions can be recorded as they happen.

    Evaluations run in `evaluator` (a BackgroundEvaluator: another process) on a snapshot of the actor
    taken every eval_every steps after the warm-up; a result is read eval_every steps later (waited
    for if not ready) or when the run stops, so the run is the same whatever the evaluator's speed.
    """

    def __init__(self, env: str, seed: int, hidden: Sequence[int], lr: float, batch_size: int, warmup: int,
                 eval_every: int, evaluator: BackgroundEvaluator, noise: float, progress: bool):
        self.env_name, self.seed = env, seed
        self.env = make_env(env)
        self.env.action_space.seed(seed)
        obs_dim, act_dim = DIMS[env]
        self.max_action = float(self.env.action_space.high[0])
        self.agent = TD3(obs_dim, act_dim, self.max_action, hidden, lr=lr)
        self.replay = ReplayBuffer(obs_dim, act_dim, REPLAY_CAPACITY)
        self.rng = np.random.default_rng(seed)
        self.batch_size, self.warmup, self.noise, self.progress = batch_size, warmup, noise, progress
        self.eval_every, self.evaluator = eval_every, evaluator
        self.steps, self.history = 0, []  # history: (step, mean evaluation return)
        self.pending = None  # (step, actor snapshot, Future of its EvalResult): the evaluation in flight
        self.medium = None  # (step, actor snapshot): the first evaluation that reached the target
        self.obs, _ = self.env.reset(seed=seed)
        self.recorder: Optional[EpisodeRecorder] = None

    def record_into(self, recorder: Optional[EpisodeRecorder], start: bool = True) -> None:
        """Record every following transition into `recorder` (None: stop recording); start=False when
        the recorder already holds the running episode (a resumed run)."""
        if self.recorder is not None:
            self.recorder.close()
        self.recorder = recorder
        if recorder is not None and start:
            recorder.start(self.obs)

    def _submit_evaluation(self) -> None:
        policy = copy.deepcopy(self.agent.actor)
        self.pending = (self.steps, policy, self.evaluator.submit(policy, seed=10_000 + self.steps))

    def _read_evaluation(self, target_return: Optional[float], bar) -> bool:
        """Wait for the evaluation in flight (if any) and record it; whether it reached `target_return`."""
        if self.pending is None:
            return False
        step, policy, future = self.pending
        self.pending = None
        ret = future.result().mean_return
        self.history.append((step, ret))
        bar.set_postfix(eval_step=step, eval_return=f"{ret:.0f}", score=f"{normalized_score(self.env_name, ret):.1f}")
        if target_return is not None and ret >= target_return:
            self.medium = (step, policy)
            return True
        return False

    def train(self, max_steps: int, target_return: float = None, deadline: float = None,
              stop: Optional[StopSignals] = None, desc: str = "", checkpoint=None) -> str:
        """Step (and update) until an evaluation reaches `target_return` ('reached'; self.medium holds its
        step and policy), `max_steps` total steps ('step cap'), time.monotonic() passes `deadline`
        ('time budget') or `stop` is requested ('interrupted': the evaluation in flight stays pending).
        After ETA_AFTER_S of steps with updates (the warm-up's much faster random steps left out) it prints
        an ETA line; `checkpoint()` (if given) is called every CHECKPOINT_EVERY_S between two steps."""
        bar = tqdm(total=max_steps, initial=self.steps, desc=desc, unit="step", disable=not self.progress,
                   dynamic_ncols=True, smoothing=0.05)
        since = None  # (time, step) of the first step with an update, the ETA rate's origin; False once printed
        saved_at = time.monotonic()
        try:
            while True:
                if stop is not None and stop.requested:
                    return "interrupted"
                if self.steps >= max_steps or (deadline is not None and time.monotonic() > deadline):
                    reason = "step cap" if self.steps >= max_steps else "time budget"
                    return "reached" if self._read_evaluation(target_return, bar) else reason
                self._step()
                bar.update(1)
                if since is None and self.steps >= self.warmup:
                    since = (time.monotonic(), self.steps)
                elif since and time.monotonic() - since[0] >= ETA_AFTER_S:
                    print(eta_line(desc, self.steps - since[1], time.monotonic() - since[0], max_steps - self.steps,
                                   deadline), file=sys.stderr, flush=True)
                    since = False
                if self.steps % self.eval_every == 0 and self.steps >= self.warmup:
                    if self._read_evaluation(target_return, bar):
                        return "reached"
                    self._submit_evaluation()
                if checkpoint is not None and time.monotonic() - saved_at >= CHECKPOINT_EVERY_S:
                    checkpoint()
                    saved_at = time.monotonic()
        finally:
            bar.close()

    def _step(self) -> None:
        if self.steps < self.warmup:
            action = self.env.action_space.sample()
        else:
            noise = self.rng.normal(0.0, self.noise * self.max_action, self.env.action_space.shape)
            action = self.agent.act(self.obs) + noise
            action = np.clip(action, -self.max_action, self.max_action).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = self.env.step(action)
        self.replay.add(self.obs, action, reward, next_obs, terminated)
        if self.recorder is not None:
            self.recorder.step(action, reward, next_obs, terminated, truncated)
        self.steps += 1
        self.obs = next_obs
        if terminated or truncated:
            self.obs, _ = self.env.reset()
            if self.recorder is not None:
                self.recorder.start(self.obs)
        if self.steps >= self.warmup:
            self.agent.update(*self.replay.sample(self.batch_size))

    def state_dict(self) -> dict:
        """Everything the run continues from: agent, replay, environment, RNGs, evaluations (the one in
        flight and the medium policy as actor weights)."""
        snapshot = lambda entry: None if entry is None else {"step": entry[0], "actor": entry[1].state_dict()}
        return {"steps": self.steps, "obs": torch.from_numpy(np.asarray(self.obs)), "agent": self.agent.state_dict(),
                "replay": self.replay.state_dict(), "env": env_state(self.env), "rng": generator_state(self.rng),
                "torch_rng": torch.get_rng_state(), "history": [[s, float(r)] for s, r in self.history],
                "pending": snapshot(self.pending), "medium": snapshot(self.medium)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from state_dict(); the evaluation that was in flight is submitted again."""
        self.steps, self.obs = state["steps"], state["obs"].numpy()
        self.agent.load_state_dict(state["agent"])
        self.replay.load_state_dict(state["replay"])
        load_env_state(self.env, state["env"])
        set_generator_state(self.rng, state["rng"])
        torch.set_rng_state(state["torch_rng"])
        self.history = [(s, r) for s, r in state["history"]]
        if state["medium"] is not None:
            self.medium = (state["medium"]["step"], self._actor_with(state["medium"]["actor"]))
        if state["pending"] is not None:
            step, policy = state["pending"]["step"], self._actor_with(state["pending"]["actor"])
            self.pending = (step, policy, self.evaluator.submit(policy, seed=10_000 + step))

    def _actor_with(self, weights: dict) -> torch.nn.Module:
        actor = copy.deepcopy(self.agent.actor)
        actor.load_state_dict(weights)
        return actor


def eta_line(desc: str, steps: int, seconds: float, steps_left: int, deadline: Optional[float]) -> str:
    """'DESC: 6,100 steps in 60 s (102 steps/s); the 293,900 steps to the cap take about 0.8 h more ...'."""
    rate = steps / max(seconds, 1e-9)
    line = (f"{desc}: {steps:,} steps in {seconds:.0f} s ({rate:.0f} steps/s); the {steps_left:,} steps left to the "
            f"cap take about {steps_left / rate / 3600:.1f} h more at this rate")
    if deadline is not None:
        line += f" (the time budget ends this run in {(deadline - time.monotonic()) / 60:.0f} min)"
    return line


def rollouts(env_name: str, actor, steps: int, recorder: EpisodeRecorder, seed: int, noise: float,
             progress: bool, desc: str, stop: Optional[StopSignals] = None, envs: int = 1) -> bool:
    """Record `steps` transitions of `actor` + N(0, noise^2) (actor None: uniform random actions) into
    `recorder`; False, and nothing recorded, when `stop` was requested first.

    `envs` environments (environment i seeded seed + i) step together, the actor called once for all
    of them; each runs its own episodes, which are appended environment by environment at the end, and
    each stops after its share of `steps` (its last episode cut as truncated)."""
    made = [make_env(env_name) for _ in range(envs)]
    streams = [EpisodeRecorder() for _ in range(envs)]
    shares = np.full(envs, steps // envs) + (np.arange(envs) < steps % envs)
    rng = np.random.default_rng(seed)
    high = float(made[0].action_space.high[0])
    obs = []
    for i, (env, stream) in enumerate(zip(made, streams)):
        env.action_space.seed(seed + i)
        obs.append(env.reset(seed=seed + i)[0])
        stream.start(obs[i])
    try:
        for t in tqdm(range(int(shares.max())), desc=desc, unit="step", unit_scale=envs, disable=not progress,
                      dynamic_ncols=True):
            if stop is not None and stop.requested:
                return False
            active = np.flatnonzero(shares > t)
            if actor is None:
                actions = [made[i].action_space.sample() for i in active]
            else:
                with torch.no_grad():
                    mean = actor(torch.as_tensor(np.stack([obs[i] for i in active]), dtype=torch.float32)).numpy()
                actions = np.clip(mean + rng.normal(0.0, noise * high, mean.shape), -high, high).astype(np.float32)
            for i, action in zip(active, actions):
                obs[i], reward, terminated, truncated, _ = made[i].step(action)
                streams[i].step(action, reward, obs[i], terminated, truncated)
                if terminated or truncated:
                    obs[i], _ = made[i].reset()
                    streams[i].start(obs[i])
        for stream in streams:
            stream.close()
            recorder.extend(stream)
        return True
    finally:
        for env in made:
            env.close()


# The stages of each TD3 kind: 'medium' trains until the medium level (recording the replay kinds),
# 'full' trains on to the step cap, the rollout stages record rollouts of the medium or final policy.
STAGES = {"medium-replay": ("medium",), "full-replay": ("full",), "medium": ("medium", "medium rollouts"),
          "expert": ("medium", "full", "expert rollouts"),
          "medium-expert": ("medium", "medium rollouts", "full", "expert rollouts")}
# The generation settings a resumed generation takes from its checkpoint.
RESUMED_SETTINGS = ("seed", "size", "warmup", "hidden", "lr", "batch_size", "eval_every", "eval_episodes", "noise")
# The settings that make two TD3 runs the same run up to the medium level.
MEDIUM_LEVEL_SETTINGS = ("seed", "warmup", "hidden", "lr", "batch_size", "eval_every", "eval_episodes", "noise")


def generate_dataset(name: str, seed: int = 0, max_steps: int = None, size: int = None,
                     time_budget_s: float = None, warmup: int = 10_000, hidden: Sequence[int] = (128, 128),
                     lr: float = 1e-3, batch_size: int = 256, eval_every: int = 5_000, eval_episodes: int = 5,
                     noise: float = 0.1, progress: bool = True, resume: bool = False, restart: bool = False) -> str:
    """Generate dataset `name` (see module docstring) into the local Minari root; returns its id.
    A generation short of its level is stored as the partial dataset and raises PartialDatasetError.

    max_steps: TD3 training steps (cap while seeking the medium level: MEDIUM_STEP_CAP; full-replay
    and expert run length: LONG_RUN_STEPS); size: rollout transitions per policy (default D4RL_SIZE);
    time_budget_s: wall-clock limit on training (medium-replay: MEDIUM_REPLAY_BUDGET_S of the task; none
    otherwise).
    The other arguments are TD3's (hidden widths, Adam lr, batch, uniform warm-up steps, exploration
    noise) and its evaluation (every eval_every steps, eval_episodes deterministic episodes).
    Runs on one torch thread (restored afterwards), evaluations in one more process.

    A TD3 kind stopped by Ctrl-C or SIGTERM (GenerationStopped), its time budget or its step cap keeps
    its state in resume.checkpoint_path(env, kind); resume=True continues from there with the
    checkpoint's settings (RESUMED_SETTINGS) and this call's max_steps (if given) and time_budget_s
    (for this session), giving the same dataset as an uninterrupted run. A fresh start over such a
    checkpoint is refused unless restart=True (which deletes it).

    The medium stage is one TD3 run for every kind that starts with it (D4RL's medium and medium-replay
    data come from one run too): a run that reaches the medium level keeps its state at that point in
    resume.medium_level_path(env), and a later medium, expert or medium-expert generation with the
    same settings continues from it instead of training again (the same dataset as training again;
    the metadata's 'medium_stage' says where it came from). medium-replay cannot: its data are the
    run's recording. Generate medium-replay first.
    """
    env, kind = parse_name(name)
    dataset_id = generated_minari_id(env, kind)
    ensure_absent(dataset_id)
    start, threads = time.monotonic(), torch.get_num_threads()
    saved = _start_or_resume(name, env, kind, resume, restart)
    if saved is not None:
        settings = saved["info"]["settings"]
        seed, size, warmup, hidden, lr, batch_size, eval_every, eval_episodes, noise = (
            settings[key] for key in RESUMED_SETTINGS)
        max_steps = settings["max_steps"] if max_steps is None else max_steps
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    if time_budget_s is None and kind == "medium-replay":
        time_budget_s = MEDIUM_REPLAY_BUDGET_S[env]
    size = D4RL_SIZE if size is None else size
    info = {"name": f"{env}-{kind}", "behaviour": BEHAVIOURS[kind], "env_id": env_id(env), "seed": seed,
            "medium_score": MEDIUM_SCORE[env], "medium_return": medium_return(env),
            "reference_returns": list(REFERENCE_RETURNS[env]), "time_budget_s": time_budget_s,
            "td3": {"hidden": list(hidden), "lr": lr, "batch_size": batch_size, "warmup": warmup,
                    "exploration_noise": noise, "updates_per_step": 1, "precision": "fp32"}}
    recorder = EpisodeRecorder()
    try:
        if kind == "random":
            rollouts(env, None, size, recorder, seed, noise, progress, f"{env}-random")
        else:
            settings = dict(seed=seed, size=size, warmup=warmup, hidden=list(hidden), lr=lr, batch_size=batch_size,
                            eval_every=eval_every, eval_episodes=eval_episodes, noise=noise, max_steps=max_steps)
            evaluator = BackgroundEvaluator(env_id(env), eval_episodes)
            try:
                run = BehaviourRun(env, seed, hidden, lr, batch_size, warmup, eval_every=eval_every,
                                   evaluator=evaluator, noise=noise, progress=progress)
                deadline = None if time_budget_s is None else start + time_budget_s
                info.update(_td3_behaviour(name, kind, run, recorder, max_steps, size, deadline, settings, saved, start))
            finally:
                evaluator.close()
    finally:
        torch.set_num_threads(threads)
    if not recorder.episodes:
        raise DatasetError(f"generation of {name} recorded no transitions; raise --size or --max-steps.")
    returns = recorder.returns()  # complete episodes only
    stats = (dict(episode_return_mean=float(returns.mean()), episode_return_min=float(returns.min()),
                  episode_return_max=float(returns.max())) if len(returns) else {})
    earlier = 0.0 if saved is None else saved["wall_time_s"]
    info.update(transitions=recorder.steps, episodes=len(recorder.episodes), complete_episodes=len(returns),
                **stats, wall_time_s=round(earlier + time.monotonic() - start, 1))
    info["level"] = level = level_of(info)
    partial = level is not None and level["partial"]
    stored_id = partial_minari_id(env, kind) if partial else dataset_id
    description = (f"fastbdm {env}-{kind}{' (PARTIAL: short of its level)' if partial else ''}: "
                   f"{info['behaviour']} ({env_id(env)}, seed {seed}).")
    write_minari(stored_id, recorder.episodes, env_id(env), REFERENCE_RETURNS[env], description, info,
                 replace=partial)
    if partial:
        raise PartialDatasetError(shortfall_message(info["name"], level, stored_id), stored_id)
    for path in (checkpoint_path(env, kind), previous_path(checkpoint_path(env, kind))):
        path.unlink(missing_ok=True)
    return dataset_id


def _start_or_resume(name: str, env: str, kind: str, resume: bool, restart: bool) -> Optional[dict]:
    """The checkpoint to resume from (resume=True), else None after checking that none is in the way."""
    path = checkpoint_path(env, kind)
    if kind == "random" and resume:
        raise DatasetError(f"--resume: {name} is generated in one go (no TD3 run to continue); run it without --resume.")
    if resume:
        try:
            state, note = load_latest(path, "cpu")
        except FileNotFoundError:
            raise DatasetError(f"--resume: no stopped generation of {name} at {path}; run it without --resume.") from None
        except CheckpointError as err:
            raise DatasetError(f"--resume: {err}; delete {path.parent} and run it without --resume.") from None
        if note:
            print(f"note: {note}", file=sys.stderr)
        return state
    if has_checkpoint(path) and not restart:
        raise DatasetError(f"a stopped generation of {name} is kept at {path}; continue it with --resume, or start "
                           "over with --restart (which deletes it).")
    for stale in (path, previous_path(path)):
        stale.unlink(missing_ok=True)
    return None


def _td3_behaviour(name: str, kind: str, run: BehaviourRun, recorder: EpisodeRecorder, max_steps: Optional[int],
                   size: int, deadline: Optional[float], settings: dict, saved: Optional[dict], start: float) -> dict:
    """Run the STAGES of `kind` (from the saved one when resuming), recording what `kind` needs into
    `recorder`; returns the run's metadata. A stage stopped by a signal saves a checkpoint and raises
    GenerationStopped; one stopped by its time budget or step cap saves one and goes on (partial data)."""
    env, seed, noise, progress = run.env_name, run.seed, run.noise, run.progress
    cap = max_steps or (LONG_RUN_STEPS if kind in LONG_RUN_KINDS else MEDIUM_STEP_CAP)
    stages, info, first = STAGES[kind], {}, 0
    if saved is not None:
        run.load_state_dict(saved["run"])
        recorder.load_state_dict(saved["recorder"])
        info, first = saved["info"]["run"], saved["stage"]
        print(f"resuming {name} at stage '{stages[first]}', TD3 step {run.steps:,}", file=sys.stderr)
    elif stages[0] == "medium" and kind != "medium-replay":
        medium_level = _reusable_medium_level(env, settings)
        if medium_level is not None:
            run.load_state_dict(medium_level["run"])
            info, first = dict(medium_level["info"]), 1
            info["medium_stage"] = {"from": medium_level["kind"], "wall_time_s": round(medium_level["wall_time_s"], 1),
                                    "step_cap": medium_level["step_cap"]}
            print(f"{name}: continuing the {medium_level['kind']} generation's TD3 run from the medium level "
                  f"(step {run.medium[0]:,}, {medium_level['wall_time_s'] / 60:.1f} min of training there)",
                  file=sys.stderr)

    def save(stage: int) -> Path:
        path = checkpoint_path(env, kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        earlier = 0.0 if saved is None else saved["wall_time_s"]
        save_checkpoint(path, {"step": run.steps, "stage": stage, "run": run.state_dict(),
                               "recorder": recorder.state_dict(), "info": {"settings": settings, "run": info},
                               "wall_time_s": earlier + time.monotonic() - start})
        return path

    with StopSignals() as stop:
        for index in range(first, len(stages)):
            stage = stages[index]
            if stage in ("medium", "full"):
                if kind in ("medium-replay", "full-replay"):
                    run.record_into(recorder, start=not (saved is not None and index == first))
                reason = run.train(cap, medium_return(env) if stage == "medium" else None, deadline, stop,
                                   f"{env}-{kind} TD3" if stage == "medium" else f"{env} TD3 to expert",
                                   checkpoint=lambda: save(index))
                if reason == "interrupted":
                    raise GenerationStopped(name, stop.signal, run.steps, save(index))
                if reason == "time budget" or (reason == "step cap" and stage == "medium" and kind in MEDIUM_KINDS):
                    save(index)  # resumable with a larger --time-budget or --max-steps
                if stage == "medium":
                    reached_at = run.medium[0] if run.medium else run.steps
                    info.update(medium_stop=reason, medium_reached=reason == "reached", medium_steps=reached_at,
                                medium_eval_return=run.history[-1][1] if run.history else None)
                    if kind == "medium-replay" and run.medium:
                        run.record_into(None)
                        recorder.cut(reached_at)
                info["stop"] = reason
                if stage == "medium" and reason == "reached":
                    _keep_medium_level(run, kind, settings, info, start, saved, cap)
            else:
                policy = run.medium[1] if stage == "medium rollouts" and run.medium else run.agent.actor
                rollout_seed = seed + 1 if stage == "medium rollouts" else seed + 2
                if not rollouts(env, policy, size, recorder, rollout_seed, noise, progress, f"{env} {stage}", stop,
                                ROLLOUT_ENVS):
                    raise GenerationStopped(name, stop.signal, run.steps, save(index))
    run.record_into(None)
    final = run.history[-1][1] if run.history else None
    ends_at_medium = kind in ("medium-replay", "medium") and run.medium is not None
    if ends_at_medium and "medium_stage" in info:  # the cap of the run that reached the level
        cap = info["medium_stage"]["step_cap"]
    info.update(steps=run.medium[0] if ends_at_medium else run.steps, step_cap=cap, final_eval_return=final,
                final_eval_score=None if final is None else float(normalized_score(env, final)),
                eval_history=[[s, float(r)] for s, r in run.history])
    return info


def _keep_medium_level(run: BehaviourRun, kind: str, settings: dict, info: dict, start: float,
                       saved: Optional[dict], step_cap: int) -> None:
    """Keep the state of a run that has just reached the medium level (for _reusable_medium_level)."""
    path = medium_level_path(run.env_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    earlier = 0.0 if saved is None else saved["wall_time_s"]
    save_checkpoint(path, {"step": run.steps, "kind": kind, "step_cap": step_cap, "run": run.state_dict(),
                           "settings": {key: settings[key] for key in MEDIUM_LEVEL_SETTINGS}, "info": dict(info),
                           "wall_time_s": earlier + time.monotonic() - start})


def _reusable_medium_level(env: str, settings: dict) -> Optional[dict]:
    """The kept medium-level state of an earlier run of `env` with these settings, else None."""
    path = medium_level_path(env)
    if not has_checkpoint(path):
        return None
    try:
        state, note = load_latest(path, "cpu")
    except CheckpointError as err:
        print(f"note: not reusing the medium-level run at {path} ({err}); training again", file=sys.stderr)
        return None
    wanted = {key: settings[key] for key in MEDIUM_LEVEL_SETTINGS}
    if state["settings"] != wanted:
        print(f"note: the medium-level run at {path} has other settings ({state['settings']}); training again",
              file=sys.stderr)
        return None
    return state


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastbdm.data.generate",
        description="Generate a locomotion dataset locally (online TD3 behaviour).",
        epilog="Time: random takes minutes; medium-replay and medium train TD3 until the medium level "
               "(docs/RESULTS.md has each task's steps and minutes; halfcheetah: 100k steps, about 10 min on one "
               "quiet core; hopper: 215k steps, about 20; walker2d: 345k steps, about 30); medium-replay stops at its task's time budget by default "
               "(halfcheetah 18 min, to bound the README's first command; hopper 35 min; walker2d 60 min). "
               "medium, expert and medium-expert continue an earlier medium-replay generation's TD3 run from its "
               "medium level when one is kept (same seed and settings), so generate medium-replay first; "
               "the medium rollouts add ~4 min per 1M steps; full-replay, "
               "expert and medium-expert train TD3 for 1,000,000 steps, which takes HOURS on a CPU (1.5-3 h at the "
               "100-170 steps/s of one core) plus 1M-step rollouts; an ETA is printed after the first minute of training. "
               "A run that stops short of its level is kept as the partial dataset fastbdm/ENV/KIND-partial-v0 and "
               "exits 1 with one line saying what would get there. Ctrl-C or SIGTERM stops a TD3 run after its "
               "current step and keeps its state (as do the time budget and the step cap, and every 5 minutes of "
               "training, so that a killed run loses minutes) in MINARI_ROOT/.generation/ENV/KIND.pt; --resume "
               "continues it exactly where it stopped.")
    parser.add_argument("--env", required=True, help="dataset name, e.g. halfcheetah-medium-replay")
    parser.add_argument("--max-steps", type=int, default=None, help="TD3 training steps (cap)")
    parser.add_argument("--size", type=int, default=None, help="rollout transitions per policy")
    parser.add_argument("--time-budget", type=float, default=None, help="training wall-clock limit, seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--resume", action="store_true",
                        help="continue the generation stopped by Ctrl-C, SIGTERM, its time budget or its step cap "
                             "(its other settings come from its checkpoint; --max-steps and --time-budget may change)")
    parser.add_argument("--restart", action="store_true", help="start over, deleting a stopped generation's checkpoint")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up on kill, too
    try:
        dataset_id = generate_dataset(args.env, seed=args.seed, max_steps=args.max_steps, size=args.size,
                                      time_budget_s=args.time_budget, progress=not args.no_progress,
                                      resume=args.resume, restart=args.restart)
    except GenerationStopped as stopped:
        print(stopped, file=sys.stderr)
        return stopped.exit_code
    except DatasetError as err:  # a partial dataset included: one line with the level reached and wanted
        print(f"error: {err}", file=sys.stderr)
        return 1
    path = dataset_dir(dataset_id)
    print(f"wrote {path} in {time.monotonic() - start:.0f} s")
    for key, value in json.loads((path / "data" / "metadata.json").read_text())["fastbdm"].items():
        print(f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
