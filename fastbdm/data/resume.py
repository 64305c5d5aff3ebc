"""Stopping a generation between two environment steps and the state that lets it continue exactly.

StopSignals turns Ctrl-C (SIGINT) and SIGTERM into a request that the generation loop reads after
each step (a second Ctrl-C stops at once, without a checkpoint). env_state/load_env_state capture a
gymnasium MuJoCo environment fully: MuJoCo's integration state (qpos, qvel, act, the solver's warm
start, time), the TimeLimit's elapsed steps and the environment's and action space's numpy RNGs.
The generation checkpoint itself (fastbdm.checkpoint: durable, checksummed, weights_only) lives in a
hidden directory of the Minari root, invisible to Minari: .generation/<env>/<kind>.pt, written when a
run stops and every generate.CHECKPOINT_EVERY_S of training (so a killed run loses minutes, not the run); the
medium-level state of a finished run beside it (.generation/<env>/medium-level.pt).
"""
import signal
import threading
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
import torch

from .names import minari_root

STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION


def checkpoint_path(env: str, kind: str) -> Path:
    """Where a stopped generation of `env`-`kind` keeps its state: <Minari root>/.generation/ENV/KIND.pt."""
    return minari_root() / ".generation" / env / f"{kind}.pt"


def medium_level_path(env: str) -> Path:
    """Where a TD3 run that reached the medium level of `env` keeps its state at that point, for the other
    kinds whose first stage is the same run (medium, expert, medium-expert):
    <Minari root>/.generation/ENV/medium-level.pt."""
    return minari_root() / ".generation" / env / "medium-level.pt"


class StopSignals:
    """Within `with StopSignals() as stop:`, SIGINT and SIGTERM set stop.requested (stop.signal names the
    signal) instead of interrupting; a second one raises KeyboardInterrupt. Outside the main thread
    (where Python cannot install handlers) it never requests a stop."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested, self.signal, self._previous = False, None, {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self.signal = True, signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def generator_state(generator: np.random.Generator) -> dict:
    return generator.bit_generator.state


def set_generator_state(generator: np.random.Generator, state: dict) -> None:
    generator.bit_generator.state = state


def _time_limit(env: gym.Env) -> gym.wrappers.TimeLimit:
    wrapper = env
    while not isinstance(wrapper, gym.wrappers.TimeLimit):
        wrapper = wrapper.env
    return wrapper


def env_state(env: gym.Env) -> dict:
    """The full state of a gymnasium MuJoCo environment made by make_env (after a reset)."""
    model, data = env.unwrapped.model, env.unwrapped.data
    physics = np.empty(mujoco.mj_stateSize(model, STATE_SPEC))
    mujoco.mj_getState(model, data, physics, STATE_SPEC)
    return {"physics": torch.from_numpy(physics), "elapsed_steps": _time_limit(env)._elapsed_steps,
            "np_random": generator_state(env.unwrapped.np_random),
            "action_space": generator_state(env.action_space.np_random)}


def load_env_state(env: gym.Env, state: dict) -> None:
    """Restore env_state into an environment of the same id that has been reset once."""
    model, data = env.unwrapped.model, env.unwrapped.data
    mujoco.mj_setState(model, data, state["physics"].numpy(), STATE_SPEC)
    mujoco.mj_forward(model, data)
    _time_limit(env)._elapsed_steps = state["elapsed_steps"]
    set_generator_state(env.unwrapped.np_random, state["np_random"])
    set_generator_state(env.action_space.np_random, state["action_space"])
