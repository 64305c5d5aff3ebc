"""Per-task TD3-SBC coefficients (docs/ALGORITHM.md#per-task-coefficients), the baselines' own defaults and the
D4RL reference returns."""
from dataclasses import dataclass, replace

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


ALGOS = ("td3sbc", "rebrac", "td3bc")


@dataclass(frozen=True)
class AlgoDefaults:
    """An algorithm's own defaults: batch size, and the TD3SBCConfig fields where it departs from TD3-SBC's."""

    batch_size: int
    model: dict


ALGO_DEFAULTS = {
    "td3sbc": AlgoDefaults(1024, {}),
    # ReBRAC (Tarasov et al. 2023): TD3-SBC without the state-BC term; the per-task w_a, w_c of the table
    "rebrac": AlgoDefaults(1024, {"w_rel": 0.0}),
    # TD3+BC (Fujimoto & Gu 2021; CORL td3_bc.py): lambda = alpha / mean|Q1|, BC = mean over all elements
    # of (pi(s) - a)^2 with weight 1 on every task, no critic BC, 2 x 256 ReLU networks without LayerNorm
    "td3bc": AlgoDefaults(256, {"w_actor_bc": 1.0, "w_critic_bc": 0.0, "w_rel": 0.0, "alpha": 2.5, "lr": 3e-4,
                                "actor_hidden": (256, 256), "critic_hidden": (256, 256), "critic_layer_norm": False}),
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


def preset(name: str, algo: str = "td3sbc") -> Preset:
    """The task's BC weights for `algo`: the table's, with the algorithm's own where it has them."""
    env, kind = split_name(name)
    w_a, w_c = _BC[env][kind]
    own = {k: v for k, v in ALGO_DEFAULTS[algo].model.items() if k in Preset.__dataclass_fields__}
    return replace(Preset(w_actor_bc=w_a, w_critic_bc=w_c, w_rel=_W_REL[env]), **own)


def normalized_score(env: str, total_return):
    """D4RL normalised score 100 (R - R_random) / (R_expert - R_random)."""
    lo, hi = REFERENCE_RETURNS[env]
    return 100.0 * (total_return - lo) / (hi - lo)
