"""The transitions set a trainer samples from, built from raw D4RL-layout arrays.

Timeout handling (D4RL's `qlearning_dataset` convention): rows whose `timeouts` flag is set are
DROPPED. The row before a dropped timeout row keeps its true next observation, is not a done, and is
marked `timeouts = 1` in the result ("the episode was cut by the time limit right after this row").
Terminal rows are kept with `terminals = 1` (`dones` = terminals). When the raw data carry no
`next_observations`, s'_i = s_{i+1} and the last row is dropped, as D4RL does.
next_actions[i] = actions[i+1] (zeros on the last row); valid[i] = 1 iff ||s'_i - s_{i+1}||^2 < 1e-3
and row i does not end an episode (terminal or time limit) and is not the last row.
"""
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch

from .errors import DatasetError
from .names import DIMS, parse_name

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
VALID_TOLERANCE = 1e-3


@dataclass
class Transitions:
    """Transitions of one dataset, RAW (not normalised), as float32 tensors on one device.

    observations, next_observations (N, obs_dim); actions, next_actions (N, act_dim);
    rewards, terminals, timeouts, valid (N,); obs_mean, obs_std (obs_dim,) over `observations`.
    episode_returns: returns of the complete episodes in the raw data (timeout rows included).
    source: where the data came from (a path or 'minari:<id>'); metadata: the Minari metadata, if any
    (generated datasets keep their behaviour, steps and returns under 'fastbdm').
    """

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    next_actions: torch.Tensor
    terminals: torch.Tensor
    timeouts: torch.Tensor
    valid: torch.Tensor
    obs_mean: torch.Tensor
    obs_std: torch.Tensor
    env_name: str
    name: str
    source: str
    episode_returns: np.ndarray
    metadata: dict = field(default_factory=dict)

    @property
    def dones(self) -> torch.Tensor:
        """(N,) 1 on terminal rows; time limits are not dones."""
        return self.terminals

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    def __len__(self) -> int:
        return self.observations.shape[0]


def _column(raw: Mapping, key: str, rows: int, where: str) -> np.ndarray:
    """A flag/reward column as a (rows,) array; (rows, 1) is accepted."""
    value = np.asarray(raw[key])
    if value.shape not in ((rows,), (rows, 1)):
        raise DatasetError(f"{where}: '{key}' has shape {value.shape}, expected ({rows},); "
                           "every key must have one entry per transition.")
    return value.reshape(rows)


def _matrix(raw: Mapping, key: str, rows: int, dim: int, env: str, where: str) -> np.ndarray:
    value = np.asarray(raw[key])
    if value.ndim != 2 or value.shape[1] != dim:
        raise DatasetError(f"{where}: '{key}' has shape {value.shape}, but {env} needs (N, {dim}); "
                           f"this file is for another environment - pass the {env} dataset.")
    if value.shape[0] != rows:
        raise DatasetError(f"{where}: '{key}' has {value.shape[0]} rows but 'observations' has {rows}; "
                           "the file is truncated or inconsistent - re-create it.")
    return value


def _check_finite(where: str, **arrays) -> None:
    for key, value in arrays.items():
        if not np.all(np.isfinite(value)):
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            raise DatasetError(f"{where}: '{key}' contains {bad} NaN/inf values; the data are corrupted - "
                               "re-download or regenerate the dataset.")


def complete_episode_returns(rewards: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Returns of the episodes that end (terminal or timeout) inside the data; a trailing cut-off one is left out."""
    idx = np.flatnonzero(ends)
    cumulative = np.cumsum(rewards, dtype=np.float64)
    return cumulative[idx] - np.concatenate([[0.0], cumulative[idx[:-1]]])


def build_transitions(raw: Mapping, name: str, source: str, device="cpu", metadata: dict = None) -> Transitions:
    """Validate raw D4RL-layout arrays for dataset `name` and build the Transitions (see module docstring).

    raw: observations (N, n), actions (N, m), rewards (N,), terminals (N,); optional timeouts (N,)
    and next_observations (N, n). Any problem raises DatasetError naming `source`.
    """
    env, kind = parse_name(name)
    obs_dim, act_dim = DIMS[env]
    where = f"dataset {source}"
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise DatasetError(f"{where} lacks key(s) {', '.join(missing)}; a D4RL-layout dataset needs "
                           f"{', '.join(REQUIRED_KEYS)} (timeouts, next_observations optional).")
    obs = np.asarray(raw["observations"])
    rows = obs.shape[0] if obs.ndim >= 1 else 0
    if rows == 0:
        raise DatasetError(f"{where} is empty (0 transitions); pass a dataset with data or regenerate it.")
    obs = _matrix(raw, "observations", rows, obs_dim, env, where)
    actions = _matrix(raw, "actions", rows, act_dim, env, where)
    rewards = _column(raw, "rewards", rows, where).astype(np.float64)
    terminals = _column(raw, "terminals", rows, where).astype(bool)
    timeouts = (_column(raw, "timeouts", rows, where) if "timeouts" in raw else np.zeros(rows)).astype(bool)
    has_next = "next_observations" in raw
    next_obs = _matrix(raw, "next_observations", rows, obs_dim, env, where) if has_next else None
    _check_finite(where, observations=obs, actions=actions, rewards=rewards,
                  **({"next_observations": next_obs} if has_next else {}))

    returns = complete_episode_returns(rewards, terminals | timeouts)
    cut_after = np.zeros_like(timeouts)  # the next row is a (dropped) timeout row
    cut_after[:-1] = timeouts[1:] & ~timeouts[:-1] & ~terminals[:-1]
    if not has_next:  # s'_i = s_{i+1}; the last row has no successor
        next_obs = obs[1:]
        obs, actions, rewards, terminals, timeouts, cut_after = (
            x[:-1] for x in (obs, actions, rewards, terminals, timeouts, cut_after))
    keep = ~timeouts
    if not keep.any():
        raise DatasetError(f"{where} has no usable transitions (timeout rows, and the last row when "
                           "next_observations are absent, are dropped); pass a larger dataset.")
    obs, actions, rewards, next_obs = obs[keep], actions[keep], rewards[keep], next_obs[keep]
    terminals, cut_after = terminals[keep], cut_after[keep]

    next_actions = np.zeros_like(actions)
    next_actions[:-1] = actions[1:]
    valid = np.zeros(len(obs), dtype=bool)
    gap = np.square(next_obs[:-1].astype(np.float64) - obs[1:]).sum(-1)
    valid[:-1] = gap < VALID_TOLERANCE
    valid &= ~(terminals | cut_after)

    obs64 = obs.astype(np.float64)
    tensor = lambda x: torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32).to(device)  # noqa: E731
    return Transitions(
        observations=tensor(obs), actions=tensor(actions), rewards=tensor(rewards),
        next_observations=tensor(next_obs), next_actions=tensor(next_actions),
        terminals=tensor(terminals), timeouts=tensor(cut_after), valid=tensor(valid),
        obs_mean=tensor(obs64.mean(0)), obs_std=tensor(obs64.std(0)),
        env_name=env, name=f"{env}-{kind}", source=source, episode_returns=returns,
        metadata=dict(metadata or {}),
    )
