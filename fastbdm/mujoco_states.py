"""The MuJoCo state behind a locomotion observation, and the observation's field names.

gymnasium's HalfCheetah, Hopper and Walker2d (v4 and v5, `_get_obs`) observe qpos[1:] ++ qvel: every
joint but the root x position, whose value the dynamics do not depend on. Hopper and Walker2d clip
the velocities to [-10, 10] in the observation; a state with a velocity at the bound may have had a
larger one, so it cannot be recovered. HalfCheetah does not clip.
"""
from typing import List

import gymnasium as gym
import mujoco
import numpy as np

# the observation's velocity clip per task (gymnasium/envs/mujoco/{half_cheetah,hopper,walker2d}_v{4,5}.py)
VELOCITY_CLIP = {"halfcheetah": None, "hopper": 10.0, "walker2d": 10.0}
CLIP_TOLERANCE = 1e-6


class StateError(ValueError):
    """The environment or the observation does not fit the qpos[1:] ++ qvel layout; one line."""


def mujoco_env(env: gym.Env) -> "gym.envs.mujoco.MujocoEnv":
    """env.unwrapped, checked to be a MuJoCo environment that observes qpos[1:] ++ qvel."""
    inner = env.unwrapped
    if not isinstance(inner, gym.envs.mujoco.MujocoEnv):
        raise StateError(f"{env.spec.id if env.spec else type(inner).__name__} is not a MuJoCo environment")
    size = inner.model.nq - 1 + inner.model.nv
    if env.observation_space.shape != (size,):
        raise StateError(f"{env.spec.id} observes {env.observation_space.shape}, not qpos[1:] ++ qvel ({size},)")
    return inner


def field_names(env: gym.Env) -> List[str]:
    """Names of the observation's entries after gymnasium's docs: the joint name (as in the XML) and
    its type, e.g. HalfCheetah ['rootz position', 'rooty angle', ..., 'rootx velocity', 'rootz velocity',
    'rooty angular velocity', ...]."""
    model = mujoco_env(env).model
    names, kinds = [], []
    for j in range(model.njnt):
        slide = model.jnt_type[j] == mujoco.mjtJoint.mjJNT_SLIDE
        names.append(model.joint(j).name)
        kinds.append(("position", "velocity") if slide else ("angle", "angular velocity"))
    return [f"{n} {k[0]}" for n, k in zip(names[1:], kinds[1:])] + [f"{n} {k[1]}" for n, k in zip(names, kinds)]


def recoverable(task: str, obs: np.ndarray) -> np.ndarray:
    """(N,) bool: whether the observations (N, n) of `task` ('hopper') carry their full state, i.e. no
    velocity sits at the observation's clip bound."""
    clip = VELOCITY_CLIP[task]
    obs = np.atleast_2d(obs)
    if clip is None:
        return np.ones(len(obs), dtype=bool)
    nv = (obs.shape[1] + 1) // 2
    return (np.abs(obs[:, -nv:]) < clip - CLIP_TOLERANCE).all(1)


def set_observation(env: gym.Env, obs: np.ndarray, root_x: float = 0.0) -> np.ndarray:
    """Puts a reset environment into the state behind `obs` (n,): qpos = [root_x, obs[:nq-1]],
    qvel = obs[nq-1:], everything else (warm starts, time) as after mj_resetData. Returns the
    environment's own observation of that state (float64), equal to obs for a recoverable one."""
    inner = mujoco_env(env)
    nq = inner.model.nq
    obs = np.asarray(obs, dtype=np.float64)
    mujoco.mj_resetData(inner.model, inner.data)
    inner.set_state(np.concatenate([[root_x], obs[:nq - 1]]), obs[nq - 1:])
    return inner._get_obs()


def step_unlimited(env: gym.Env, action: np.ndarray) -> tuple:
    """(observation, terminated) after one step of the bare MuJoCo environment: no time limit (the
    successor measure has an infinite horizon) and no wrapper checks."""
    obs, _, terminated, _, _ = mujoco_env(env).step(action)
    return obs, terminated

