"""Policy evaluation in gymnasium vector environments with D4RL-normalised scores."""
from dataclasses import dataclass
from typing import Callable

import gymnasium as gym
import numpy as np
import torch

from .data.names import ENV_IDS, parse_name
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


def evaluate(policy: Callable[[torch.Tensor], torch.Tensor], env_name: str, episodes: int = 10,
             seed: int = 0) -> EvalResult:
    """Run `episodes` episodes at once, one per environment of a SyncVectorEnv (env i seeded seed + i).

    policy maps RAW observations (N, obs_dim) float32 -> actions (N, act_dim) (tensor or array; clipped
    to the action bounds); it is called under torch.no_grad(). Each environment contributes its first
    episode only: after that episode ends its rewards are ignored while the others finish.
    env_name: 'halfcheetah' or a dataset name such as 'halfcheetah-medium-replay'.
    """
    env = env_name if env_name in ENV_IDS else parse_name(env_name)[0]
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(ENV_IDS[env]) for _ in range(episodes)])
    low, high = envs.single_action_space.low, envs.single_action_space.high
    returns = np.zeros(episodes)
    finished = np.zeros(episodes, dtype=bool)
    try:
        obs, _ = envs.reset(seed=seed)
        while not finished.all():
            with torch.no_grad():
                actions = policy(torch.as_tensor(obs, dtype=torch.float32))
            actions = actions.detach().cpu().numpy() if torch.is_tensor(actions) else np.asarray(actions)
            obs, rewards, terminated, truncated, _ = envs.step(np.clip(actions, low, high))
            returns += np.where(finished, 0.0, rewards)
            finished |= terminated | truncated
    finally:
        envs.close()
    return EvalResult(returns=returns, scores=np.asarray(normalized_score(env, returns)))
