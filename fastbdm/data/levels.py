"""The level a generated dataset's behaviour must reach to deserve its name, and the account of a miss.

medium-replay, medium, medium-expert: the TD3 evaluation return must reach the medium level
(normalised MEDIUM_SCORE); full-replay, expert, medium-expert: the TD3 run must reach its step cap
(not be cut by its time budget). A generation that misses is a *partial* dataset.
"""
from typing import Optional

from ..presets import REFERENCE_RETURNS, normalized_score, split_name

MEDIUM_SCORE = {"halfcheetah": 40.0, "hopper": 45.0, "walker2d": 60.0}
MEDIUM_KINDS = ("medium-replay", "medium", "medium-expert")
LONG_RUN_KINDS = ("full-replay", "expert", "medium-expert")


def medium_return(env: str) -> float:
    """Raw return of the medium level: the inverse of the D4RL normalisation at MEDIUM_SCORE."""
    lo, hi = REFERENCE_RETURNS[env]
    return lo + MEDIUM_SCORE[env] / 100.0 * (hi - lo)


def _score(env: str, ret: Optional[float]) -> Optional[float]:
    return None if ret is None else round(float(normalized_score(env, ret)), 2)


def level_of(info: dict) -> Optional[dict]:
    """The level record of a generated dataset from its metadata (key 'fastbdm'; older datasets
    without a 'level' record included); None for the random kind, which has no level to reach.

    Keys: partial (bool), stop ('reached', 'step cap' or 'time budget'), steps, step_cap, time_budget_s;
    medium kinds: wanted_return/wanted_score (the medium level), reached_return/reached_score (the
    evaluation that ended the search); long kinds: final_return/final_score (the last evaluation).
    """
    if info.get("level") is not None:
        return info["level"]
    env, kind = split_name(info["name"])
    if kind == "random":
        return None
    level = dict(partial=False, stop=info["stop"], steps=info["steps"], step_cap=info["step_cap"],
                 time_budget_s=info.get("time_budget_s"))
    if kind in MEDIUM_KINDS:
        reached = info.get("medium_eval_return")
        level.update(wanted_return=round(medium_return(env), 1), wanted_score=MEDIUM_SCORE[env],
                     reached_return=reached, reached_score=_score(env, reached), medium_steps=info["medium_steps"])
        level["partial"] = not info["medium_reached"]
    if kind in LONG_RUN_KINDS:
        final = info.get("final_eval_return")
        level.update(final_return=final, final_score=_score(env, final))
        level["partial"] |= info["stop"] != "step cap"
    return level


def level_summary(level: dict) -> str:
    """'level 17.6 of 45' (medium kinds) or '96,267 of 1,000,000 steps' (a long run cut short)."""
    if "wanted_score" in level and (level["reached_score"] is None or level["reached_score"] < level["wanted_score"]):
        reached = "none" if level["reached_score"] is None else f"{level['reached_score']:.1f}"
        return f"level {reached} of {level['wanted_score']:g}"
    if "wanted_score" in level:
        return f"level {level['reached_score']:.1f} of {level['wanted_score']:g}, {level['steps']:,} of {level['step_cap']:,} steps"
    return f"{level['steps']:,} of {level['step_cap']:,} steps"


def shortfall_message(name: str, level: dict, dataset_id: str) -> str:
    """One line: where the generation of `name` stopped, the level it wanted, where the partial data
    are, and how to continue the stopped run (--resume) with the options that would get there."""
    budget = level.get("time_budget_s")
    why = f"its time budget ({budget:.0f} s)" if level["stop"] == "time budget" else f"its step cap ({level['step_cap']:,})"
    if "wanted_score" in level and level["reached_score"] is not None and level["reached_score"] >= level["wanted_score"]:
        where = (f"reached the medium level (normalised {level['reached_score']:.1f}) but the run was cut at "
                 f"{level['steps']:,} of {level['step_cap']:,} TD3 steps")
    elif "wanted_score" in level:
        got = ("no evaluation" if level["reached_return"] is None else
               f"evaluation return {level['reached_return']:.0f} (normalised {level['reached_score']:.1f})")
        where = (f"reached {got} in {level['steps']:,} TD3 steps, short of the medium level (return "
                 f"{level['wanted_return']:.0f}, normalised {level['wanted_score']:g})")
    else:
        where = f"was cut at {level['steps']:,} of {level['step_cap']:,} TD3 steps"
    if level["stop"] == "time budget":
        fix = (f"continue the run with more time, e.g. python -m fastbdm.data.generate --env {name} --resume "
               f"--time-budget {3 * budget:.0f} (this run: {budget:.0f} s), or a --max-steps (this run: {level['step_cap']:,})")
    else:
        fix = (f"continue the run with a higher step cap, e.g. python -m fastbdm.data.generate --env {name} --resume "
               f"--max-steps {2 * level['step_cap']} (this run: {level['step_cap']:,})"
               + (f", and --time-budget if {budget:.0f} s is not enough" if budget else ""))
    return f"{name}: generation stopped by {why} and {where}; its data are kept as partial dataset {dataset_id}; {fix}"
