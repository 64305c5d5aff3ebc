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
TD3 defaults: fp32 (bf16 autocast is ~10x slower on CPUs without AVX512-BF16), hidden 128-128 and
Adam lr 1e-3 (a 256-256 update costs ~2x as much CPU: ~58 vs ~110 updates/s of one AVX2 core).

CLI: python -m fastbdm.data.generate --env halfcheetah-medium-replay [--max-steps N] [--seed S]
"""
import argparse
import copy
import json
import signal
import sys
import time
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..evaluation import evaluate
from ..presets import REFERENCE_RETURNS, normalized_score
from .errors import DatasetError, PartialDatasetError
from .levels import MEDIUM_SCORE, level_of, medium_return, shortfall_message
from .names import DIMS, env_id, generated_minari_id, make_env, parse_name, partial_minari_id
from .recorder import EpisodeRecorder
from .store import dataset_dir, ensure_absent, write_minari
from .td3 import TD3, ReplayBuffer

# D4RL's transition counts: rollout size per policy (medium-expert holds medium + expert).
D4RL_SIZE = 1_000_000
# Training-step caps when max_steps is not given.
MEDIUM_STEP_CAP = 300_000
LONG_RUN_STEPS = 1_000_000
# medium-replay must finish within 15 minutes: 14 minutes of training, the rest for writing.
MEDIUM_REPLAY_BUDGET_S = 14 * 60
REPLAY_CAPACITY = 1_000_000
# Training time after which a run prints its estimated time to the step cap (one line, stderr).
ETA_AFTER_S = 60.0
BEHAVIOURS = {
    "random": "uniform random actions",
    "medium-replay": "TD3 replay buffer until the evaluation return first reaches the medium level",
    "full-replay": "TD3 replay buffer of a full run",
    "medium": "rollouts of the medium-level TD3 policy",
    "expert": "rollouts of the TD3 policy after the full run",
    "medium-expert": "rollouts of the medium-level TD3 policy, then of the expert one",
}


class BehaviourRun:
    """One online TD3 run on a gymnasium v5 environment; transitions can be recorded as they happen."""

    def __init__(self, env: str, seed: int, hidden: Sequence[int], lr: float, batch_size: int, warmup: int,
                 eval_every: int, eval_episodes: int, noise: float, progress: bool):
        self.env_name, self.seed = env, seed
        self.env = make_env(env)
        self.env.action_space.seed(seed)
        obs_dim, act_dim = DIMS[env]
        self.max_action = float(self.env.action_space.high[0])
        self.agent = TD3(obs_dim, act_dim, self.max_action, hidden, lr=lr)
        self.replay = ReplayBuffer(obs_dim, act_dim, REPLAY_CAPACITY)
        self.rng = np.random.default_rng(seed)
        self.batch_size, self.warmup, self.noise, self.progress = batch_size, warmup, noise, progress
        self.eval_every, self.eval_episodes = eval_every, eval_episodes
        self.steps, self.history = 0, []  # history: (step, mean evaluation return)
        self.obs, _ = self.env.reset(seed=seed)
        self.recorder: Optional[EpisodeRecorder] = None

    def record_into(self, recorder: Optional[EpisodeRecorder]) -> None:
        """Record every following transition into `recorder` (None: stop recording)."""
        if self.recorder is not None:
            self.recorder.close()
        self.recorder = recorder
        if recorder is not None:
            recorder.start(self.obs)

    def evaluate(self) -> float:
        result = evaluate(self.agent.actor, env_id(self.env_name), self.eval_episodes, seed=10_000 + self.steps)
        self.history.append((self.steps, result.mean_return))
        return result.mean_return

    def train(self, max_steps: int, target_return: float = None, deadline: float = None, desc: str = "") -> str:
        """Step (and update) until `target_return` is reached at an evaluation ('reached'), `max_steps`
        total steps ('step cap') or time.monotonic() passes `deadline` ('time budget')."""
        bar = tqdm(total=max_steps, initial=self.steps, desc=desc, unit="step", disable=not self.progress,
                   dynamic_ncols=True, smoothing=0.05)
        started, first_step, eta_due = time.monotonic(), self.steps, True
        try:
            while self.steps < max_steps:
                if deadline is not None and time.monotonic() > deadline:
                    return "time budget"
                self._step()
                bar.update(1)
                if eta_due and time.monotonic() - started >= ETA_AFTER_S:
                    eta_due = False
                    print(eta_line(desc, self.steps - first_step, time.monotonic() - started, max_steps - self.steps,
                                   deadline), file=sys.stderr, flush=True)
                if self.steps % self.eval_every == 0 and self.steps >= self.warmup:
                    ret = self.evaluate()
                    left = {} if deadline is None else {"budget_left": f"{(deadline - time.monotonic()) / 60:.1f}min"}
                    score = normalized_score(self.env_name, ret)
                    bar.set_postfix(eval_return=f"{ret:.0f}", score=f"{score:.1f}", **left)
                    if target_return is not None and ret >= target_return:
                        return "reached"
            return "step cap"
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


def eta_line(desc: str, steps: int, seconds: float, steps_left: int, deadline: Optional[float]) -> str:
    """'DESC: 6,100 steps in 60 s (102 steps/s); the 293,900 steps to the cap take about 0.8 h more ...'."""
    rate = steps / max(seconds, 1e-9)
    line = (f"{desc}: {steps:,} steps in {seconds:.0f} s ({rate:.0f} steps/s); the {steps_left:,} steps left to the "
            f"cap take about {steps_left / rate / 3600:.1f} h more at this rate")
    if deadline is not None:
        line += f" (the time budget ends this run in {(deadline - time.monotonic()) / 60:.0f} min)"
    return line


def rollouts(env_name: str, actor, steps: int, recorder: EpisodeRecorder, seed: int, noise: float,
             progress: bool, desc: str) -> None:
    """Record `steps` transitions of `actor` + N(0, noise^2) (actor None: uniform random actions)."""
    env = make_env(env_name)
    env.action_space.seed(seed)
    rng = np.random.default_rng(seed)
    high = float(env.action_space.high[0])
    obs, _ = env.reset(seed=seed)
    recorder.start(obs)
    for _ in tqdm(range(steps), desc=desc, unit="step", disable=not progress, dynamic_ncols=True):
        if actor is None:
            action = env.action_space.sample()
        else:
            with torch.no_grad():
                mean = actor(torch.as_tensor(obs, dtype=torch.float32)[None])[0].numpy()
            action = np.clip(mean + rng.normal(0.0, noise * high, mean.shape), -high, high).astype(np.float32)
        obs, reward, terminated, truncated, _ = env.step(action)
        recorder.step(action, reward, obs, terminated, truncated)
        if terminated or truncated:
            obs, _ = env.reset()
            recorder.start(obs)
    recorder.close()
    env.close()


def generate_dataset(name: str, seed: int = 0, max_steps: int = None, size: int = None,
                     time_budget_s: float = None, warmup: int = 10_000, hidden: Sequence[int] = (128, 128),
                     lr: float = 1e-3, batch_size: int = 256, eval_every: int = 5_000, eval_episodes: int = 5,
                     noise: float = 0.1, progress: bool = True) -> str:
    """Generate dataset `name` (see module docstring) into the local Minari root; returns its id.
    A generation short of its level is stored as the partial dataset and raises PartialDatasetError.

    max_steps: TD3 training steps (cap while seeking the medium level: MEDIUM_STEP_CAP; full-replay
    and expert run length: LONG_RUN_STEPS); size: rollout transitions per policy (default D4RL_SIZE);
    time_budget_s: wall-clock limit on training (default 14 min for medium-replay, none otherwise).
    The other arguments are TD3's (hidden widths, Adam lr, batch, uniform warm-up steps, exploration
    noise) and its evaluation (every eval_every steps, eval_episodes deterministic episodes).
    Runs on one torch thread (restored afterwards).
    """
    env, kind = parse_name(name)
    dataset_id = generated_minari_id(env, kind)
    ensure_absent(dataset_id)
    start, threads = time.monotonic(), torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    if time_budget_s is None and kind == "medium-replay":
        time_budget_s = MEDIUM_REPLAY_BUDGET_S
    info = {"name": f"{env}-{kind}", "behaviour": BEHAVIOURS[kind], "env_id": env_id(env), "seed": seed,
            "medium_score": MEDIUM_SCORE[env], "medium_return": medium_return(env),
            "reference_returns": list(REFERENCE_RETURNS[env]), "time_budget_s": time_budget_s,
            "td3": {"hidden": list(hidden), "lr": lr, "batch_size": batch_size, "warmup": warmup,
                    "exploration_noise": noise, "updates_per_step": 1, "precision": "fp32"}}
    recorder = EpisodeRecorder()
    size = D4RL_SIZE if size is None else size
    try:
        if kind == "random":
            rollouts(env, None, size, recorder, seed, noise, progress, f"{env}-random")
        else:
            run = BehaviourRun(env, seed, hidden, lr, batch_size, warmup, eval_every=eval_every,
                               eval_episodes=eval_episodes, noise=noise, progress=progress)
            deadline = None if time_budget_s is None else start + time_budget_s
            info.update(_td3_behaviour(kind, run, recorder, max_steps, size, deadline))
    finally:
        torch.set_num_threads(threads)
    if not recorder.episodes:
        raise DatasetError(f"generation of {name} recorded no transitions; raise --size or --max-steps.")
    returns = recorder.returns()  # complete episodes only
    stats = (dict(episode_return_mean=float(returns.mean()), episode_return_min=float(returns.min()),
                  episode_return_max=float(returns.max())) if len(returns) else {})
    info.update(transitions=recorder.steps, episodes=len(recorder.episodes), complete_episodes=len(returns),
                **stats, wall_time_s=round(time.monotonic() - start, 1))
    info["level"] = level = level_of(info)
    partial = level is not None and level["partial"]
    stored_id = partial_minari_id(env, kind) if partial else dataset_id
    description = (f"fastbdm {env}-{kind}{' (PARTIAL: short of its level)' if partial else ''}: "
                   f"{info['behaviour']} ({env_id(env)}, seed {seed}).")
    write_minari(stored_id, recorder.episodes, env_id(env), REFERENCE_RETURNS[env], description, info,
                 replace=partial)
    if partial:
        raise PartialDatasetError(shortfall_message(info["name"], level, stored_id), stored_id)
    return dataset_id


def _td3_behaviour(kind: str, run: BehaviourRun, recorder: EpisodeRecorder, max_steps: Optional[int],
                   size: int, deadline: Optional[float]) -> dict:
    """Train `run` and record what `kind` needs into `recorder`; returns the run's metadata."""
    env, seed, noise, progress = run.env_name, run.seed, run.noise, run.progress
    long_run = kind in ("full-replay", "expert", "medium-expert")
    cap = max_steps or (LONG_RUN_STEPS if long_run else MEDIUM_STEP_CAP)
    if kind in ("medium-replay", "full-replay"):
        run.record_into(recorder)
    target = None if kind == "full-replay" else medium_return(env)
    stop = run.train(cap, target, deadline, f"{env}-{kind} TD3")
    info = dict(medium_stop=stop, medium_reached=stop == "reached", medium_steps=run.steps,
                medium_eval_return=run.history[-1][1] if run.history else None)
    if kind in ("medium", "medium-expert"):
        medium_actor = copy.deepcopy(run.agent.actor)
        rollouts(env, medium_actor, size, recorder, seed + 1, noise, progress, f"{env} medium rollouts")
    if kind in ("expert", "medium-expert"):
        stop = run.train(cap, None, deadline, f"{env} TD3 to expert")
        rollouts(env, run.agent.actor, size, recorder, seed + 2, noise, progress, f"{env} expert rollouts")
    run.record_into(None)
    final = run.history[-1][1] if run.history else None
    info.update(stop=stop, steps=run.steps, step_cap=cap, final_eval_return=final,
                final_eval_score=None if final is None else float(normalized_score(env, final)),
                eval_history=[[s, float(r)] for s, r in run.history])
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastbdm.data.generate",
        description="Generate a locomotion dataset locally (online TD3 behaviour).",
        epilog="Time: random takes minutes; medium-replay and medium train TD3 until the medium level (halfcheetah: "
               "about 10 min on one core; hopper and walker2d: longer, not measured yet - a 14-minute hopper run "
               "reached normalised 18 of 45; medium-replay stops at a 14-minute budget by default); full-replay, "
               "expert and medium-expert train TD3 for 1,000,000 steps, which takes HOURS on a CPU (1.5-3 h at the "
               "100-170 steps/s of one core) plus 1M-step rollouts; an ETA is printed after the first minute of training. "
               "A run that stops short of its level is kept as the partial dataset fastbdm/ENV/KIND-partial-v0 and "
               "exits 1 with one line saying what would get there.")
    parser.add_argument("--env", required=True, help="dataset name, e.g. halfcheetah-medium-replay")
    parser.add_argument("--max-steps", type=int, default=None, help="TD3 training steps (cap)")
    parser.add_argument("--size", type=int, default=None, help="rollout transitions per policy")
    parser.add_argument("--time-budget", type=float, default=None, help="training wall-clock limit, seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up on kill, too
    try:
        dataset_id = generate_dataset(args.env, seed=args.seed, max_steps=args.max_steps, size=args.size,
                                      time_budget_s=args.time_budget, progress=not args.no_progress)
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
