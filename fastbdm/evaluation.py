"""Policy evaluation in gymnasium vector environments with D4RL-normalised scores."""
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable

import gymnasium as gym
import numpy as np
import torch

from .data.names import make_env, task_of
from .presets import normalized_score


@dataclass
class EvalResult:
    """returns: (episodes,) raw undiscounted returns; scores: the same D4RL-normalised (0 random, 100 expert)."""

    returns: np.ndarray
    scores: np.ndarray

    @property
    def mean_return(self) -> float:
        return float(self.returns.mean())

    @property
    def mean_score(self) -> float:
        return float(self.scores.mean())


class Evaluator:
    """Evaluation episodes in one SyncVectorEnv, made once and reused (the MuJoCo models compile once).

    evaluator(policy, seed) runs `episodes` episodes at once, environment i seeded seed + i; a reset
    with a seed restores every environment fully, so reuse gives the same returns as fresh environments.
    policy maps RAW observations (N, obs_dim) float32 -> actions (N, act_dim) (tensor or array; clipped
    to the action bounds); it is called under torch.no_grad(). Each environment contributes its first
    episode only: after that episode ends its rewards are ignored while the others finish.
    env_id: the gymnasium environment, e.g. 'Hopper-v4' (D4RL's data) or 'Hopper-v5' (Minari's and
    generated data); one of our names ('hopper', 'hopper-medium') means its v5 environment.
    task: whose D4RL reference returns normalise the scores (default: the environment's task).
    """

    def __init__(self, env_id: str, episodes: int = 10, task: str = None):
        self.episodes = episodes
        self.envs = gym.vector.SyncVectorEnv([lambda: make_env(env_id) for _ in range(episodes)])
        self.env_id = self.envs.envs[0].spec.id
        self.task = task or task_of(self.env_id)

    def __call__(self, policy: Callable[[torch.Tensor], torch.Tensor], seed: int = 0) -> EvalResult:
        low, high = self.envs.single_action_space.low, self.envs.single_action_space.high
        returns = np.zeros(self.episodes)
        finished = np.zeros(self.episodes, dtype=bool)
        obs, _ = self.envs.reset(seed=seed)
        while not finished.all():
            with torch.no_grad():
                actions = policy(torch.as_tensor(obs, dtype=torch.float32))
            actions = actions.detach().cpu().numpy() if torch.is_tensor(actions) else np.asarray(actions)
            obs, rewards, terminated, truncated, _ = self.envs.step(np.clip(actions, low, high))
            returns += np.where(finished, 0.0, rewards)
            finished |= terminated | truncated
        return EvalResult(returns=returns, scores=np.asarray(normalized_score(self.task, returns)))

    def close(self) -> None:
        self.envs.close()


def evaluate(policy: Callable[[torch.Tensor], torch.Tensor], env_id: str, episodes: int = 10,
             seed: int = 0, task: str = None) -> EvalResult:
    """One evaluation in fresh environments (see Evaluator)."""
    evaluator = Evaluator(env_id, episodes, task)
    try:
        return evaluator(policy, seed)
    finally:
        evaluator.close()


class BackgroundEvaluator:
    """Evaluations in one worker process, in submission order, while training goes on.

    submit(policy, seed) returns a Future of the EvalResult at once; the policy must be a picklable CPU
    snapshot that training does not change (TD3SBC.cpu_policy). A process rather than a thread: the
    environments' Python work would contend with the update loop for the GIL. The worker (spawned, so
    safe beside CUDA) keeps its own Evaluator, runs torch on one thread, ignores Ctrl-C, which the
    trainer handles, and exits when the trainer is gone (killed without closing it).
    """

    def __init__(self, env_id: str, episodes: int, task: str = None):
        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_start_worker, initargs=(env_id, episodes, task))

    def submit(self, policy: Callable[[torch.Tensor], torch.Tensor], seed: int) -> Future:
        return self.pool.submit(_evaluate_in_worker, policy, seed)

    def close(self) -> None:
        """Cancels the evaluations not started and waits for the running one."""
        self.pool.shutdown(wait=True, cancel_futures=True)


_worker_evaluator = None  # the worker process's Evaluator


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _start_worker(env_id: str, episodes: int, task: str) -> None:
    global _worker_evaluator
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    torch.set_num_threads(1)
    _worker_evaluator = Evaluator(env_id, episodes, task)


def _evaluate_in_worker(policy: Callable[[torch.Tensor], torch.Tensor], seed: int) -> EvalResult:
    return _worker_evaluator(policy, seed)
