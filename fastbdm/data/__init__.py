"""Offline datasets: names, readers (D4RL hdf5, npz, Minari), the Transitions set, local generation."""
from .errors import DatasetError
from .loaders import load_transitions
from .names import env_id, make_env, parse_name
from .transitions import Transitions, build_transitions

__all__ = ["DatasetError", "Transitions", "build_transitions", "env_id", "load_transitions", "make_env", "parse_name"]
