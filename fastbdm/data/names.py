"""Dataset names ('halfcheetah-medium-replay[-v2]') and where such a dataset is looked for.

Resolves a name to its environment and kind, the gymnasium environments (v5 for generation and
Minari's data, v4 for D4RL's), the D4RL file name and the Minari dataset ids (remote `mujoco/...`
ids and the ids this project generates under `fastbdm/`, partial ones included).
"""
import difflib
import os
import warnings
from pathlib import Path
from typing import Optional, Tuple

import gymnasium as gym
import mujoco

from ..presets import ENVS, KINDS, split_name
from .errors import DatasetError

ALL_NAMES = tuple(f"{env}-{kind}" for env in ENVS for kind in KINDS)

ENV_IDS = {"halfcheetah": "HalfCheetah-v5", "hopper": "Hopper-v5", "walker2d": "Walker2d-v5"}
# D4RL's -v2 data came from gym's v3 MuJoCo environments; gymnasium's v4 ones keep those models.
D4RL_ENV_IDS = {"halfcheetah": "HalfCheetah-v4", "hopper": "Hopper-v4", "walker2d": "Walker2d-v4"}
# (observation dim, action dim): the same in D4RL's -v2 data and the gymnasium v5 environments.
DIMS = {"halfcheetah": (17, 6), "hopper": (11, 3), "walker2d": (17, 6)}

# Kinds Minari hosts for the locomotion tasks (mujoco/<env>/<kind>-v0; gymnasium v5 data).
MINARI_REMOTE_KINDS = ("medium", "expert")
GENERATED_NAMESPACE = "fastbdm"


def parse_name(name: str) -> Tuple[str, str]:
    """'hopper-medium-expert' or 'hopper-medium-expert-v2' -> ('hopper', 'medium-expert').

    Unknown names raise DatasetError naming the closest known names.
    """
    try:
        return split_name(name)
    except ValueError:
        close = difflib.get_close_matches(str(name).removesuffix("-v2"), ALL_NAMES, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"use one of {', '.join(ALL_NAMES)}."
        raise DatasetError(f"unknown dataset name {name!r}: {hint}") from None


def env_id(env_name: str) -> str:
    """Gymnasium id for 'halfcheetah' (or a dataset name such as 'halfcheetah-medium'): 'HalfCheetah-v5'."""
    env = env_name if env_name in ENV_IDS else parse_name(env_name)[0]
    return ENV_IDS[env]


# gymnasium's MuJoCo assets use attributes that newer MuJoCo deprecates; MuJoCo prints that warning
# (and appends it to ./MUJOCO_LOG.TXT) at every model compile, though it says nothing about a run
GYMNASIUM_ASSET_DEPRECATIONS = ("compiler attribute 'settotalmass' is deprecated",)


def mujoco_warning(message: str) -> None:
    """MuJoCo's warning hook: Python RuntimeWarnings instead of prints, the asset deprecations dropped."""
    if not message.startswith(GYMNASIUM_ASSET_DEPRECATIONS):
        warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)


# gymnasium warns at every gym.make of a v4 environment that v5 exists; we use v4 on purpose (D4RL data)
V4_OUT_OF_DATE = r".*The environment (HalfCheetah|Hopper|Walker2d)-v4 is out of date"


def make_env(env: str, **kwargs) -> gym.Env:
    """gymnasium.make for a gymnasium id ('Hopper-v4') or one of our environment (or dataset) names
    (their v5 environment); kwargs go to gymnasium.make. Installs mujoco_warning as MuJoCo's
    (process-wide) warning hook; gymnasium's v4 out-of-date warning is not shown."""
    mujoco.set_mju_user_warning(mujoco_warning)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=V4_OUT_OF_DATE, category=DeprecationWarning)
        return gym.make(env if env in gym.registry else env_id(env), **kwargs)


def task_of(gym_id: str) -> str:
    """Our task of a locomotion gymnasium id: 'Walker2d-v4' -> 'walker2d'; DatasetError otherwise."""
    task = gym_id.partition("-v")[0].lower()
    if task not in ENV_IDS:
        raise DatasetError(f"{gym_id!r} is not a {'/'.join(ENV_IDS)} environment; use e.g. {D4RL_ENV_IDS[ENVS[0]]}.")
    return task


def check_env_matches(gym_id: str, obs_dim: int, act_dim: int) -> None:
    """DatasetError (one line) unless `gym_id` is a gymnasium environment with (obs_dim,) observations
    and (act_dim,) actions."""
    try:
        env = make_env(gym_id) if gym_id in gym.registry else None
    except Exception as err:  # gymnasium raises many kinds (missing dependency, bad kwargs)
        raise DatasetError(f"--eval-env {gym_id}: gymnasium cannot make it ({type(err).__name__}: {err})") from None
    if env is None:
        close = difflib.get_close_matches(gym_id, list(gym.registry), n=3)
        raise DatasetError(f"--eval-env {gym_id}: no such gymnasium environment"
                           + (f"; did you mean {', '.join(close)}?" if close else ""))
    obs, act = env.observation_space.shape, env.action_space.shape
    env.close()
    if obs != (obs_dim,) or act != (act_dim,):
        raise DatasetError(f"--eval-env {gym_id} has observations {obs} and actions {act}, but the data have "
                           f"({obs_dim},) and ({act_dim},); pick an environment of the data's task (e.g. its -v4 or -v5).")


def d4rl_filename(env: str, kind: str) -> str:
    """D4RL's file name: ('halfcheetah', 'medium-replay') -> 'halfcheetah_medium_replay-v2.hdf5'."""
    return f"{env}_{kind.replace('-', '_')}-v2.hdf5"


def d4rl_dirs() -> list:
    """Directories searched for D4RL files: $D4RL_DATASET_DIR (if set), then ~/.d4rl/datasets."""
    dirs = [os.environ["D4RL_DATASET_DIR"]] if os.environ.get("D4RL_DATASET_DIR") else []
    return [Path(d).expanduser() for d in dirs] + [Path("~/.d4rl/datasets").expanduser()]


def minari_root() -> Path:
    """The local Minari root: $MINARI_DATASETS_PATH, default ~/.minari/datasets."""
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path("~/.minari/datasets").expanduser())


def remote_minari_id(env: str, kind: str) -> Optional[str]:
    """Minari's hosted id for this name, or None (e.g. no medium-replay locomotion data on Minari)."""
    return f"mujoco/{env}/{kind}-v0" if kind in MINARI_REMOTE_KINDS else None


def generated_minari_id(env: str, kind: str) -> str:
    """Id of the dataset this project generates: 'fastbdm/halfcheetah/medium-replay-v0'."""
    return f"{GENERATED_NAMESPACE}/{env}/{kind}-v0"


def partial_minari_id(env: str, kind: str) -> str:
    """Id of a generated dataset that stopped short of its level: 'fastbdm/hopper/medium-replay-partial-v0'."""
    return f"{GENERATED_NAMESPACE}/{env}/{kind}-partial-v0"


def local_minari_ids(env: str, kind: str) -> list:
    """Minari ids tried in the local root, in order: Minari's own data first, then ours."""
    remote = remote_minari_id(env, kind)
    return ([remote] if remote else []) + [generated_minari_id(env, kind)]
