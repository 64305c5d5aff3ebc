"""Normalised transitions resident on the training device, sampled without leaving it."""
import torch

from .networks import normalize_states
from .td3sbc import Batch


class TransitionBuffer:
    """All transitions of a dataset, states normalised, on one device.

    `sample` draws indices with torch.randint on that device and gathers into fresh tensors: no
    host synchronisation, safe inside a CUDA graph (the default generator is graph-aware).
    """

    def __init__(self, transitions, device):
        mean, std = transitions.obs_mean.to(device), transitions.obs_std.to(device)
        self.obs_mean, self.obs_std = mean, std
        self.obs = normalize_states(transitions.observations.to(device), mean, std)
        self.next_obs = normalize_states(transitions.next_observations.to(device), mean, std)
        self.actions = transitions.actions.to(device)
        self.next_actions = transitions.next_actions.to(device)
        self.rewards = transitions.rewards.to(device)
        self.dones = transitions.terminals.to(device)
        self.valid = transitions.valid.to(device)
        self.size = self.obs.shape[0]

    def __len__(self) -> int:
        return self.size

    def sample(self, batch_size: int, generator: torch.Generator = None) -> Batch:
        """batch_size transitions drawn uniformly with replacement; indices from `generator` (on this
        buffer's device; default torch's global one)."""
        idx = torch.randint(0, self.size, (batch_size,), device=self.obs.device, generator=generator)
        return Batch(self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx],
                     self.next_actions[idx], self.dones[idx], self.valid[idx])
