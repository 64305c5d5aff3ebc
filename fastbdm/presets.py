"""Per-task TD3-SBC coefficients (docs/ALGORITHM.md#per-task-coefficients) and the D4RL reference returns."""
from dataclasses import dataclass

ENVS = ("halfcheetah", "hopper", "walker2d")
KINDS = ("random", "medium", "medium-replay", "medium-expert", "expert", "full-replay")

# (w_actor_bc, w_critic_bc) per env and dataset kind; w_rel per env.
_BC = {
    "halfcheetah": {"medium": (0.001, 0.01), "medium-replay": (0.01, 0.001), "medium-expert": (0.01, 0.1),
                    "expert": (0.01, 0.01), "full-replay": (0.001, 0.1), "random": (0.001, 0.1)},
    "hopper": {"medium": (0.01, 0.01), "medium-replay": (0.05, 0.5), "medium-expert": (0.1, 0.01),
               "expert": (0.1, 0.1), "full-replay": (0.01, 0.01), "random": (0.001, 0.01)},
    "walker2d": {"medium": (0.05, 0.1), "medium-replay": (0.05, 0.01), "medium-expert": (0.01, 0.01),
                 "expert": (0.01, 0.5), "full-replay": (0.01, 0.01), "random": (0.01, 0.0)},
}
_W_REL = {"halfcheetah": 0.1, "hopper": 1.0, "walker2d": 0.1}

# D4RL normalisation: (random return, expert return).
REFERENCE_RETURNS = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
}


@dataclass(frozen=True)
class Preset:
    w_actor_bc: float
    w_critic_bc: float
    w_rel: float


def split_name(name: str) -> tuple:
    """'halfcheetah-medium-replay[-v2]' -> ('halfcheetah', 'medium-replay'); ValueError if unknown."""
    base = name[:-3] if name.endswith("-v2") else name
    env, _, kind = base.partition("-")
    if env not in ENVS or kind not in KINDS:
        raise ValueError(f"unknown task {name!r}")
    return env, kind


def preset(name: str) -> Preset:
    env, kind = split_name(name)
    w_a, w_c = _BC[env][kind]
    return Preset(w_actor_bc=w_a, w_critic_bc=w_c, w_rel=_W_REL[env])


def normalized_score(env: str, total_return):
    """D4RL normalised score 100 (R - R_random) / (R_expert - R_random)."""
    lo, hi = REFERENCE_RETURNS[env]
    return 100.0 * (total_return - lo) / (hi - lo)
