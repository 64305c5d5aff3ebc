"""`python -m fastbdm.inspect RUN_DIR`: the learned successor measure against real rollouts.

For N dataset states s with their actions a, K samples of the run's target BDM d(. | s, a) (model
side) against K rollouts in the MuJoCo environment put into the state behind s (reality side): take
a, then follow the target policy pi' with the TD target's smoothing noise for k ~ Geometric(1 - gamma)
steps and keep the state reached (an episode that terminates first stays at its terminal state),
docs/ALGORITHM.md#the-successor-state-measure. Prints a table, writes inspect.json and inspect.png.
"""
import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, List

import numpy as np
import torch

from .mujoco_states import StateError, field_names, mujoco_env, recoverable, set_observation, step_unlimited
from .networks import STATE_NORM_EPS, denormalize_states, normalize_states
from .sample_comparison import Comparison, compare_samples

INSPECT_JSON, INSPECT_PNG = "inspect.json", "inspect.png"
SCATTER_STATES = 4  # states drawn in inspect.png


class InspectError(Exception):
    """The run cannot be inspected; the message is one line for the user."""


def geometric_horizons(rng: np.random.Generator, gamma: float, size: int) -> np.ndarray:
    """(size,) int horizons k >= 1 with P(k) = (1 - gamma) gamma^(k-1), the weights of the successor measure."""
    return rng.geometric(1.0 - gamma, size)


class Rollouts:
    """`count` plain gymnasium environments stepped together, one batched policy call per step."""

    def __init__(self, make_env: Callable, count: int, seed: int):
        self.envs = [make_env() for _ in range(count)]
        for i, env in enumerate(self.envs):
            env.reset(seed=seed + i)
        space = self.envs[0].action_space
        self.low, self.high = space.low, space.high

    def occupancy(self, obs: np.ndarray, action: np.ndarray, policy: Callable, horizons: np.ndarray):
        """States reached (count, n) float64 and whether their episode terminated first (count,) bool:
        rollout i starts in the state behind obs (n,), takes action (m,), then policy (M, n) -> (M, m)
        on its observations, for horizons[i] steps or until it terminates (and stays there)."""
        states = np.stack([set_observation(env, obs) for env in self.envs])
        actions = np.repeat(np.clip(action, self.low, self.high)[None], len(self.envs), 0)
        terminated = np.zeros(len(self.envs), dtype=bool)
        for step in range(1, int(horizons.max()) + 1):
            moving = np.flatnonzero(~terminated & (horizons >= step))
            if not len(moving):
                break
            if step > 1:
                actions[moving] = np.clip(policy(states[moving]), self.low, self.high)
            for i in moving:
                states[i], terminated[i] = step_unlimited(self.envs[i], actions[i])
        return states, terminated

    def close(self) -> None:
        for env in self.envs:
            env.close()


def target_policy(agent) -> Callable[[np.ndarray], np.ndarray]:
    """The TD target's action on raw observations (M, n): clip(pi'(s) + clip(policy_noise N, +-noise_clip))."""
    device = agent.obs_mean.device

    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:
        s = normalize_states(torch.as_tensor(obs, dtype=torch.float32, device=device), agent.obs_mean, agent.obs_std)
        return agent.target_action(s).cpu().numpy()

    return act


def model_samples(agent, obs: np.ndarray, action: np.ndarray, count: int) -> np.ndarray:
    """(count, n) raw-observation samples of the target BDM's d(. | obs, action), with the run's sampler."""
    device, mean, std = agent.obs_mean.device, agent.obs_mean, agent.obs_std
    s = normalize_states(torch.as_tensor(obs, device=device), mean, std).expand(count, -1).contiguous()
    a = torch.as_tensor(action, device=device).expand(count, -1).contiguous()
    return denormalize_states(agent.bdm.sample(s, a), mean, std).cpu().numpy()


def runnable_on(agent, device: torch.device) -> None:
    """The run's BDM kernels for `device`: its backend resolved there; a GPU-only precision becomes
    exact fp32 on the CPU (the numbers then differ from the GPU's in the last digits)."""
    from .backends import TORCH_PRECISIONS, resolve_backend

    agent.bdm.backend = "auto"
    if resolve_backend("auto", device) == "torch" and agent.bdm.precision not in TORCH_PRECISIONS:
        agent.bdm.precision = "ieee"


def make_env_factory(run: dict) -> tuple:
    """(gymnasium id, zero-argument env maker) of the environment the run evaluates in: config.json's
    "eval_env" where present, else the task's default (fastbdm.data.names.env_id)."""
    from .data.names import env_id, make_env

    eval_env = run.get("eval_env") or env_id(run["env"])
    return eval_env, lambda: make_env(eval_env)


def format_table(rows: List[dict], summary: dict) -> str:
    """The per-state table and its summary row, plain text."""
    head = f"{'state':>8} {'|mean err| (std)':>17} {'std ratio':>10} {'energy':>8} {'p':>6} {'terminated':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['index']:>8} {r['mean_abs_error']:>17.3f} {r['median_std_ratio']:>10.3f} "
                     f"{r['energy_distance']:>8.4f} {r['p_value']:>6.3f} {r['terminated_fraction']:>10.2f}")
    lines.append("-" * len(head))
    lines.append(f"{'all':>8} {summary['mean_abs_error']:>17.3f} {summary['median_std_ratio']:>10.3f} "
                 f"{summary['energy_distance']:>8.4f} {summary['rejected_at_0.05']:>6.2f} "
                 f"{summary['terminated_fraction']:>10.2f}")
    return "\n".join(lines)


def summarize(rows: List[dict]) -> dict:
    """Over all states: mean |error|, median std ratio (over states and dimensions), mean energy
    distance, fraction of states whose test rejects at 0.05, mean terminated fraction."""
    return {
        "mean_abs_error": float(np.mean([r["mean_abs_error"] for r in rows])),
        "median_std_ratio": float(np.median([r["std_ratio"] for r in rows])),
        "energy_distance": float(np.mean([r["energy_distance"] for r in rows])),
        "rejected_at_0.05": float(np.mean([r["p_value"] < 0.05 for r in rows])),
        "terminated_fraction": float(np.mean([r["terminated_fraction"] for r in rows])),
    }


def draw(path: Path, rows: List[dict], samples: List[tuple], fields: List[str], title: str) -> None:
    """inspect.png: for the first few states, model and rollout samples over the two dimensions with the
    largest |mean error|; below, the std ratio per dimension over all states (box plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = min(SCATTER_STATES, len(rows))
    fig = plt.figure(figsize=(4.2 * max(shown, 3), 8.4))
    grid = fig.add_gridspec(2, max(shown, 1), height_ratios=(1, 0.9))
    for col in range(shown):
        row, (model, reality) = rows[col], samples[col]
        i, j = np.argsort(-np.abs(row["mean_error"]))[:2]
        ax = fig.add_subplot(grid[0, col])
        ax.scatter(reality[:, i], reality[:, j], s=6, alpha=0.45, label="rollouts", color="tab:orange")
        ax.scatter(model[:, i], model[:, j], s=6, alpha=0.45, label="BDM samples", color="tab:blue")
        ax.scatter([row["obs"][i]], [row["obs"][j]], marker="x", s=60, color="black", label="s")
        ax.set_xlabel(f"{fields[i]} ({row['mean_error'][i]:+.2f} std)")
        ax.set_ylabel(f"{fields[j]} ({row['mean_error'][j]:+.2f} std)")
        ax.set_title(f"state {row['index']}: energy {row['energy_distance']:.3f}, p {row['p_value']:.3f}", fontsize=9)
        ax.grid(alpha=0.3)
        if col == 0:
            ax.legend(fontsize=8, markerscale=2)
    ax = fig.add_subplot(grid[1, :])
    ratios = np.array([r["std_ratio"] for r in rows])  # (states, n)
    ax.boxplot([ratios[:, d] for d in range(ratios.shape[1])])
    ax.set_xticks(range(1, len(fields) + 1), fields, rotation=40, ha="right", fontsize=8)
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylabel("std ratio BDM / rollouts")
    ax.set_title(f"per dimension over {len(rows)} states", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def inspect_run(args) -> dict:
    """Everything the command computes: the settings, the per-state rows and the summary; writes the
    table to stdout and inspect.json / inspect.png to args.out (default the run directory)."""
    from .data import DatasetError, parse_name
    from .data.loaders import load_source
    from .train import TrainingError, load_agent, pick_device

    device = pick_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InspectError("--device cuda: no CUDA device is visible; use --device cpu")
    try:
        agent, run = load_agent(args.run_dir, device)
        task, _ = parse_name(run["env"])
        recorded = run["dataset"]["source"] if isinstance(run["dataset"], dict) else run["dataset"]
        transitions = load_source(run["env"], str(args.dataset or recorded))
    except (TrainingError, DatasetError) as exc:
        raise InspectError(str(exc)) from None
    runnable_on(agent, device)
    gym_id, make = make_env_factory(run)
    probe = make()
    try:
        fields = field_names(probe)
        if len(fields) != transitions.obs_dim:
            raise StateError(f"{gym_id} observes {len(fields)} values, the dataset {transitions.obs_dim}")
    except StateError as exc:
        raise InspectError(f"{exc}: fastbdm.inspect needs one of the MuJoCo locomotion tasks") from None

    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    picked = rng.choice(len(transitions), size=min(args.states, len(transitions)), replace=False)
    obs_all = transitions.observations[picked].numpy()
    ok = recoverable(task, obs_all)
    skipped = [int(i) for i in picked[~ok]]
    if not ok.any():
        raise InspectError(f"all {len(picked)} drawn states have a velocity at the observation's clip bound; "
                           "draw more with --states")
    gamma = agent.config.gamma
    scale = (agent.obs_std + STATE_NORM_EPS).cpu().numpy()  # the run's normalised space: dataset std units
    policy, rollouts = target_policy(agent), Rollouts(make, args.samples, args.seed)
    rows, samples = [], []
    try:
        for n, index in enumerate(picked[ok]):
            obs = transitions.observations[index].numpy()
            action = transitions.actions[index].numpy()
            roundtrip = float(np.abs(set_observation(probe, obs) - obs).max())
            next_obs, _ = step_unlimited(probe, np.clip(action, rollouts.low, rollouts.high))
            horizons = geometric_horizons(rng, gamma, args.samples)
            reality, terminated = rollouts.occupancy(obs, action, policy, horizons)
            model = model_samples(agent, obs, action, args.samples).astype(np.float64)
            cmp: Comparison = compare_samples(model, reality, scale, args.resamples, args.seed + n)
            rows.append({
                "index": int(index), "obs": obs.tolist(), "action": action.tolist(),
                "roundtrip_error": roundtrip,
                "next_obs_error": float(np.abs(next_obs - transitions.next_observations[index].numpy()).max()),
                "mean_abs_error": cmp.mean_abs_error, "median_std_ratio": cmp.median_std_ratio,
                "energy_distance": cmp.energy_distance, "p_value": cmp.p_value,
                "terminated_fraction": float(terminated.mean()), "mean_horizon": float(horizons.mean()),
                "mean_error": cmp.mean_error.tolist(), "std_ratio": cmp.std_ratio.tolist(),
                "model_mean": model.mean(0).tolist(), "model_std": model.std(0, ddof=1).tolist(),
                "reality_mean": reality.mean(0).tolist(), "reality_std": reality.std(0, ddof=1).tolist(),
            })
            samples.append((model, reality))
    finally:
        rollouts.close()
        probe.close()
    summary = summarize(rows)
    result = {
        "run_dir": str(args.run_dir), "env": run["env"], "gym_env": gym_id, "dataset": transitions.source,
        "checkpoint_step": agent.num_updates, "states": args.states, "samples": args.samples, "seed": args.seed,
        "resamples": args.resamples, "gamma": gamma, "sampler": agent.bdm.sampler,
        "prediction": agent.bdm.prediction, "policy_noise": agent.config.policy_noise,
        "noise_clip": agent.config.noise_clip, "skipped_states": skipped,
        "energy_units": "the run's normalised state space (dataset std + 1e-3 per dimension)",
        "fields": fields, "summary": summary, "per_state": rows,
    }
    out = Path(args.out or args.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(format_table(rows, summary))
    print(f"{len(rows)} states ({len(skipped)} of {len(picked)} drawn skipped: a velocity at the clip bound), "
          f"{args.samples} samples each, gamma {gamma}, sampler {agent.bdm.sampler}, checkpoint at update "
          f"{agent.num_updates}; the summary's p column is the fraction of states whose energy test rejects at 0.05; "
          f"largest one-step error from the recovered state {max(r['next_obs_error'] for r in rows):.2g}")
    (out / INSPECT_JSON).write_text(json.dumps(result, indent=1))
    draw(out / INSPECT_PNG, rows, samples, fields,
         f"{run['env']} run on {Path(transitions.source).name} ({gym_id}), update {agent.num_updates}: "
         f"BDM d(.|s,a) vs {args.samples} rollouts, gamma {gamma}")
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastbdm.inspect", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory of fastbdm.train or fastbdm.sweep")
    p.add_argument("--states", type=int, default=20, help="dataset states drawn (those with clipped velocities are skipped)")
    p.add_argument("--samples", type=int, default=256, help="model samples and rollouts per state")
    p.add_argument("--resamples", type=int, default=200, help="permutations of the energy test")
    p.add_argument("--seed", type=int, default=0, help="seed of the states, horizons, noise and environments")
    p.add_argument("--dataset", type=Path, default=None, help="the run's dataset elsewhere (default: config.json's)")
    p.add_argument("--out", type=Path, default=None, help="where inspect.json and inspect.png go (default: RUN_DIR)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="device of the networks")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on the CPU")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import dcor  # noqa: F401
        import matplotlib  # noqa: F401
    except ImportError as exc:
        print(f"error: fastbdm.inspect needs {exc.name}: pip install -e '.[sweep]'", file=sys.stderr)
        return 2
    for name in ("states", "samples", "resamples", "threads"):
        if getattr(args, name) < 1 + (name == "samples"):
            print(f"error: --{name} must be at least {1 + (name == 'samples')}, got {getattr(args, name)}", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        inspect_run(args)
    except InspectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or args.run_dir
    print(f"wrote {out / INSPECT_JSON} and {out / INSPECT_PNG} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
