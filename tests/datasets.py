"""A tiny halfcheetah-shaped npz dataset (D4RL keys) shared by the end-to-end test modules."""
import numpy as np

OBS, ACT = 17, 6


def write_tiny_npz(path, rows: int, episode: int = 100):
    """`rows` random transitions, episodes of `episode` steps ended by timeouts; returns path."""
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(rows + 1, OBS)).astype(np.float32)
    timeouts = np.zeros(rows, bool)
    timeouts[episode - 1::episode] = True
    np.savez(path, observations=obs[:-1], next_observations=obs[1:],
             actions=rng.uniform(-1, 1, (rows, ACT)).astype(np.float32),
             rewards=rng.normal(size=rows).astype(np.float32), terminals=np.zeros(rows, bool), timeouts=timeouts)
    return path
