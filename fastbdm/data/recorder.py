"""Collects environment steps into Minari EpisodeBuffers (T+1 observations for T actions)."""
from typing import List

import dataclasses

import numpy as np
import torch
from minari.data_collector import EpisodeBuffer

EPISODE_FIELDS = ("observations", "actions", "rewards", "terminations", "truncations")


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

    def extend(self, other: "EpisodeRecorder") -> None:
        """Append the finished episodes of `other` (renumbered after ours)."""
        for episode, complete in zip(other.episodes, other.complete):
            self.episodes.append(dataclasses.replace(episode, id=len(self.episodes)))
            self.complete.append(complete)
        self.steps += sum(len(episode.rewards) for episode in other.episodes)

    def cut(self, steps: int) -> None:
        """Keep the first `steps` recorded transitions only; the episode running at the cut ends there as
        truncated (complete False). The recorder must be closed or restarted with start() afterwards."""
        self.close()
        kept = 0
        for i, episode in enumerate(self.episodes):
            keep = steps - kept
            if keep < len(episode.rewards):
                if keep > 0:
                    self.episodes[i] = EpisodeBuffer(
                        id=i, observations=episode.observations[:keep + 1], actions=episode.actions[:keep],
                        rewards=episode.rewards[:keep], terminations=episode.terminations[:keep],
                        truncations=episode.truncations[:keep - 1] + [True])
                    self.complete[i] = False
                del self.episodes[i + (keep > 0):], self.complete[i + (keep > 0):]
                break
            kept += len(episode.rewards)
        self.steps = min(self.steps, steps)

    def state_dict(self) -> dict:
        """The finished episodes and the running one as tensors and plain values (for torch.load weights_only)."""
        episodes = [{key: torch.as_tensor(np.asarray(getattr(ep, key))) for key in EPISODE_FIELDS} for ep in self.episodes]
        running = None if self._obs is None else {
            "observations": [torch.as_tensor(o) for o in self._obs], "actions": [torch.as_tensor(a) for a in self._actions],
            "rewards": list(self._rewards), "terminations": list(self._terms), "truncations": list(self._truncs)}
        return {"episodes": episodes, "complete": list(self.complete), "steps": self.steps, "running": running}

    def load_state_dict(self, state: dict) -> None:
        self.episodes = [EpisodeBuffer(id=i, observations=ep["observations"].numpy(), actions=ep["actions"].numpy(),
                                       rewards=ep["rewards"].tolist(), terminations=ep["terminations"].tolist(),
                                       truncations=ep["truncations"].tolist()) for i, ep in enumerate(state["episodes"])]
        self.complete, self.steps = list(state["complete"]), state["steps"]
        running = state["running"]
        self._obs = None if running is None else [o.numpy() for o in running["observations"]]
        if running is not None:
            self._actions = [a.numpy() for a in running["actions"]]
            self._rewards, self._terms, self._truncs = running["rewards"], running["terminations"], running["truncations"]

    def returns(self) -> np.ndarray:
        """Undiscounted returns of the complete episodes (ended by the environment)."""
        return np.array([sum(ep.rewards) for ep, done in zip(self.episodes, self.complete) if done])
