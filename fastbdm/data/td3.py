"""Online TD3 (Fujimoto et al. 2018), the behaviour policy of generated datasets.

Reuses the project's Actor and TwinCritic (fastbdm.networks); one update per environment step after
a uniform-random warm-up; fp32 (bf16 autocast measured ~10x slower on an AVX2-only CPU).
"""
import copy
from typing import Sequence

import numpy as np
import torch

from ..networks import Actor, TwinCritic
from ..td3sbc import make_adam


class ReplayBuffer:
    """Preallocated float32 storage of (s, a, r, s', done); capacity rows, uniform sampling."""

    FIELDS = ("obs", "actions", "rewards", "next_obs", "dones")

    def __init__(self, obs_dim: int, act_dim: int, capacity: int):
        self.obs = torch.zeros(capacity, obs_dim)
        self.actions = torch.zeros(capacity, act_dim)
        self.rewards = torch.zeros(capacity)
        self.next_obs = torch.zeros(capacity, obs_dim)
        self.dones = torch.zeros(capacity)
        self.capacity, self.size, self.cursor = capacity, 0, 0

    def add(self, obs, action, reward: float, next_obs, done: bool) -> None:
        i = self.cursor
        self.obs[i] = torch.from_numpy(np.asarray(obs, dtype=np.float32))
        self.actions[i] = torch.from_numpy(np.asarray(action, dtype=np.float32))
        self.rewards[i] = reward
        self.next_obs[i] = torch.from_numpy(np.asarray(next_obs, dtype=np.float32))
        self.dones[i] = float(done)
        self.cursor = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int):
        idx = torch.randint(0, self.size, (batch_size,))
        return self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.dones[idx]

    def state_dict(self) -> dict:
        """The filled rows (not the whole capacity), size and cursor."""
        rows = {key: getattr(self, key)[:self.size].clone() for key in self.FIELDS}
        return dict(rows, size=self.size, cursor=self.cursor)

    def load_state_dict(self, state: dict) -> None:
        for key in self.FIELDS:
            getattr(self, key)[:state["size"]] = state[key]
        self.size, self.cursor = state["size"], state["cursor"]


class TD3:
    """TD3 learner: actor pi, twin critics, target copies; `update` takes one replay minibatch."""

    def __init__(self, obs_dim: int, act_dim: int, max_action: float = 1.0, hidden: Sequence[int] = (256, 256),
                 lr: float = 3e-4, gamma: float = 0.99, tau: float = 0.005, policy_noise: float = 0.2,
                 noise_clip: float = 0.5, policy_freq: int = 2):
        self.actor = Actor(obs_dim, act_dim, max_action, hidden)
        self.critic = TwinCritic(obs_dim, act_dim, hidden)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = make_adam(self.actor.parameters(), lr, "cpu")
        self.critic_opt = make_adam(self.critic.parameters(), lr, "cpu")
        self.max_action, self.gamma, self.tau = max_action, gamma, tau
        self.policy_noise, self.noise_clip = policy_noise * max_action, noise_clip * max_action
        self.policy_freq, self.updates = policy_freq, 0

    def state_dict(self) -> dict:
        """Networks, their targets, both Adam states and the update count."""
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "actor_target": self.actor_target.state_dict(), "critic_target": self.critic_target.state_dict(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        for key in ("actor", "critic", "actor_target", "critic_target", "actor_opt", "critic_opt"):
            getattr(self, key).load_state_dict(state[key])
        self.updates = state["updates"]

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic action for one raw observation (n,) -> (m,)."""
        return self.actor(torch.as_tensor(obs, dtype=torch.float32)[None])[0].numpy()

    def update(self, obs, actions, rewards, next_obs, dones) -> None:
        """One TD3 step: critic regression to the clipped double-Q target; every policy_freq-th
        step the actor ascends Q1 and the targets move by tau."""
        with torch.no_grad():
            noise = (torch.randn_like(actions) * self.policy_noise).clamp(-self.noise_clip, self.noise_clip)
            next_a = (self.actor_target(next_obs) + noise).clamp(-self.max_action, self.max_action)
            target_q = self.critic_target(next_obs, next_a).min(0).values
            y = rewards + self.gamma * (1.0 - dones) * target_q
        critic_loss = (self.critic(obs, actions) - y).square().mean(-1).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        self.updates += 1
        if self.updates % self.policy_freq:
            return
        actor_loss = -self.critic(obs, self.actor(obs), members=1).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        for net, target in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
            torch._foreach_lerp_(list(target.parameters()), list(net.parameters()), self.tau)
