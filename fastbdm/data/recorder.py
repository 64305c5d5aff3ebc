"""Collects environment steps into Minari EpisodeBuffers (T+1 observations for T actions)."""
from typing import List

import numpy as np
from minari.data_collector import EpisodeBuffer


class EpisodeRecorder:
    """Call `start(obs)` after each reset and `step(...)` after each env step; `episodes` holds the
    finished episodes. `close()` ends a running episode as truncated (cut by the end of collection);
    `complete[i]` is False for such an episode."""

    def __init__(self):
        self.episodes: List[EpisodeBuffer] = []
        self.complete: List[bool] = []
        self.steps = 0
        self._obs = None

    def start(self, obs) -> None:
        self._obs, self._actions, self._rewards, self._terms, self._truncs = [np.asarray(obs)], [], [], [], []

    def step(self, action, reward: float, next_obs, terminated: bool, truncated: bool) -> None:
        self._obs.append(np.asarray(next_obs))
        self._actions.append(np.asarray(action, dtype=np.float32))
        self._rewards.append(float(reward))
        self._terms.append(bool(terminated))
        self._truncs.append(bool(truncated))
        self.steps += 1
        if terminated or truncated:
            self._finish()

    def close(self) -> None:
        if self._obs is not None and self._actions:
            self._truncs[-1] = True
            self._finish()
            self.complete[-1] = False
        self._obs = None

    def _finish(self) -> None:
        self.episodes.append(EpisodeBuffer(
            id=len(self.episodes), observations=np.stack(self._obs), actions=np.stack(self._actions),
            rewards=self._rewards, terminations=self._terms, truncations=self._truncs))
        self.complete.append(True)
        self._obs = None

    def returns(self) -> np.ndarray:
        """Undiscounted returns of the complete episodes (ended by the environment)."""
        return np.array([sum(ep.rewards) for ep, done in zip(self.episodes, self.complete) if done])
