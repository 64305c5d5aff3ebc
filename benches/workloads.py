"""What the benchmarks and the profiling scripts run: sizes, device, synthetic halfcheetah-shaped data,
the whole-update variants, and the cost model (FLOPs, compulsory bytes) recorded with each timing.
"""
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from fastbdm import TD3SBC, TD3SBCConfig
from fastbdm.backends import torch_matmul_precision
from fastbdm.data.transitions import build_transitions
from fastbdm.graphs import WARMUP_PAIRS, UpdateRunner
from fastbdm.monitor import UpdateMonitor
from fastbdm.networks import Denoiser
from fastbdm.replay import TransitionBuffer

from .research_code import NumpyReplayBuffer, ResearchCode

TASK, OBS_DIM, ACT_DIM = "halfcheetah-medium-replay", 17, 6
FLOAT = 4  # bytes per fp32 element


@dataclass(frozen=True)
class Size:
    """Batch B, denoiser hidden width (2 layers), actor/critic hidden width (3 layers), levels T."""

    name: str
    batch: int
    hidden: int
    mlp_hidden: int
    steps: int = 10
    dataset: int = 20_000

    @property
    def rows(self) -> int:
        """Rows of the kernel benchmarks: 2B, the batched TD call and the SBC chain."""
        return 2 * self.batch


SIZES = {
    # tiny enough for interpreter-mode Triton (one program per launch at most of the kernels)
    "small": Size("small", batch=32, hidden=32, mlp_hidden=32, dataset=4096),
    # the paper's: B = 1024, halfcheetah shapes, T = 10, denoisers 2 x 512, actor/critics 3 x 256
    "paper": Size("paper", batch=1024, hidden=512, mlp_hidden=256, dataset=100_000),
    # the same networks at B = 2048 (kernels on 4096 rows)
    "paper2048": Size("paper2048", batch=2048, hidden=512, mlp_hidden=256, dataset=100_000),
}


def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_size(device: torch.device) -> str:
    return "paper" if device.type == "cuda" else "small"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def triton_ready(device: torch.device) -> bool:
    """Triton kernels run here: a CUDA device, or the CPU interpreter (TRITON_INTERPRET=1)."""
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


# Variant names: BACKEND[-PRECISION][+streams][+graphs] (PRECISION of the Triton MLP kernels, tf32 unless named;
# +streams: two CUDA streams, fastbdm.branches).
UPDATE_VARIANTS = ("research", "torch", "triton", "triton+streams", "triton+graphs", "triton+streams+graphs",
                   "triton-bf16+graphs")
# The baselines (--algo rebrac, td3bc) run no denoiser kernel; on the triton backend their actor and critics
# are the fused small-MLP kernels. Eager, or in CUDA graphs.
BASELINES = ("rebrac", "td3bc")
BASELINE_VARIANTS = ("torch", "torch+graphs", "triton", "triton+graphs")
KERNEL_VARIANTS = ("torch", "triton", "triton-bf16")


def variant_kernels(variant: str):
    """(backend, precision) of a variant name: "triton-bf16+graphs" -> ("triton", "bf16")."""
    backend, _, precision = variant.split("+")[0].partition("-")
    return ("torch" if backend == "research" else backend), precision or "tf32"


def _split_by_device(variants, device: torch.device):
    """(variants that run on this device, {omitted variant: reason})."""
    omitted = {}
    for v in variants:
        backend, precision = variant_kernels(v)
        if backend == "triton" and not triton_ready(device):
            omitted[v] = "no CUDA device and TRITON_INTERPRET != 1"
        elif "+graphs" in v and device.type != "cuda":
            omitted[v] = "CUDA graphs need a CUDA device"
        elif precision == "bf16" and device.type != "cuda":
            omitted[v] = "bf16 kernels need a CUDA device (the CPU interpreter computes bf16 dots wrongly)"
    return [v for v in variants if v not in omitted], omitted


def update_variants(device: torch.device):
    """(update variants that run on this device, {omitted variant: reason})."""
    return _split_by_device(UPDATE_VARIANTS, device)


def baseline_variants(device: torch.device):
    """(baseline update variants that run on this device, {omitted variant: reason})."""
    return _split_by_device(BASELINE_VARIANTS, device)


def kernel_variants(device: torch.device):
    """(kernel variants that run on this device, {omitted variant: reason})."""
    return _split_by_device(KERNEL_VARIANTS, device)


def config(size: Size, backend: str = "torch", precision: str = "tf32", algo: str = "td3sbc") -> TD3SBCConfig:
    """The algorithm's default (fixed) hyper-parameters at this size: its number of actor/critic
    layers (3 for td3sbc and rebrac, 2 for td3bc), each size.mlp_hidden wide."""
    depth = len(TD3SBCConfig.for_algo(algo).actor_hidden)
    return TD3SBCConfig.for_algo(algo, steps=size.steps, actor_hidden=(size.mlp_hidden,) * depth,
                                 critic_hidden=(size.mlp_hidden,) * depth, denoiser_hidden=(size.hidden,) * 2,
                                 backend=backend, precision=precision)


def synthetic_buffer(size: Size, device, seed: int = 0) -> TransitionBuffer:
    """Random-walk episodes of 1000 steps with halfcheetah shapes, through the real dataset path."""
    rng = np.random.default_rng(seed)
    n = size.dataset
    obs = np.cumsum(rng.normal(0, 0.1, (n, OBS_DIM)), 0).astype(np.float32)
    raw = {"observations": obs, "actions": rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
           "rewards": rng.normal(size=n).astype(np.float32), "terminals": np.zeros(n, bool),
           "timeouts": (np.arange(n) % 1000) == 999}
    return TransitionBuffer(build_transitions(raw, TASK, "synthetic", device), device)


def research_buffer(buffer: TransitionBuffer) -> NumpyReplayBuffer:
    """The same normalised transitions in host arrays, OfflineRL-Kit key names and shapes."""
    host = lambda x: x.cpu().numpy()  # noqa: E731
    return NumpyReplayBuffer({
        "observations": host(buffer.obs), "actions": host(buffer.actions), "next_observations": host(buffer.next_obs),
        "next_actions": host(buffer.next_actions), "rewards": host(buffer.rewards)[:, None],
        "terminals": host(buffer.dones)[:, None], "valid_next_actions": host(buffer.valid)}, buffer.obs.device)


class UpdateLoop:
    """One variant's training step of `algo` (td3sbc, or a baseline with BASELINE_VARIANTS, all at
    batch size.batch); `actor_next`: the next step moves the actor; steps_per_call: updates per step.

    research: ResearchCode.learn on NumpyReplayBuffer batches, one update per step. torch / triton: the
    trainer's eager step (fastbdm.graphs.UpdateRunner: TransitionBuffer samples, TD3SBC.update_pair
    with that backend, device-side metrics), one pair of updates per step (one update with a
    policy_freq other than 2). triton+graphs, triton-bf16+graphs: the same runner replaying its captured
    CUDA graph; one step is then pairs_per_graph pairs of updates (steps_per_call = 2 pairs_per_graph),
    captured here after the runner's warm-up. "+streams" (triton+streams, triton+streams+graphs): the agent's
    independent work on two CUDA streams (TD3SBC streams=2). Every fastbdm step runs under the trainer's torch matmul
    setting for its precision (backends.torch_matmul_precision: TF32 on CUDA for tf32 and bf16); the
    research variant keeps torch's default (exact fp32), as the research code did.
    """

    def __init__(self, variant: str, size: Size, device, seed: int = 0, pairs_per_graph: int = 1,
                 algo: str = "td3sbc"):
        torch.manual_seed(seed)
        np.random.seed(seed)
        self.variant, self.size, self.device = variant, size, torch.device(device)
        self.steps_per_call = 2 * pairs_per_graph if variant.endswith("+graphs") else 1
        buffer = synthetic_buffer(size, device, seed)
        if variant == "research":
            self.model = ResearchCode(OBS_DIM, ACT_DIM, config(size), device)
            host_buffer = research_buffer(buffer)
            self._step = lambda: self.model.learn(host_buffer.sample(size.batch))
            return
        known = UPDATE_VARIANTS if algo == "td3sbc" else BASELINE_VARIANTS
        if variant not in known:
            raise ValueError(f"unknown {algo} variant {variant!r}: choose one of {', '.join(known)}")
        backend, precision = variant_kernels(variant)
        self.model = TD3SBC(OBS_DIM, ACT_DIM, config=config(size, backend, precision, algo), device=device,
                            streams=2 if "+streams" in variant else 1)
        graphs = variant.endswith("+graphs")
        if not graphs and self.model.config.policy_freq == 2:
            self.steps_per_call = 2
        monitor = UpdateMonitor(device, fused=backend == "triton")  # one record launch on the triton backend
        runner = UpdateRunner(self.model, buffer, monitor, size.batch, graphs=graphs, pairs_per_graph=pairs_per_graph)

        def step(count=self.steps_per_call):  # torch's matmuls at the trainer's setting (fastbdm.train.main)
            with torch_matmul_precision(precision):
                runner.run(count)

        if graphs:
            step(2 * WARMUP_PAIRS + self.steps_per_call)  # warm-up, capture, one replay
        self._step = step

    @property
    def actor_next(self) -> bool:
        """Whether the next call moves the actor (always, for pairs)."""
        freq = self.model.config.policy_freq
        if self.variant == "research":
            return self.model.cnt % freq == 0
        return self.steps_per_call > 1 or (self.model.num_updates + 1) % freq == 0

    def step(self):
        return self._step()


# --- cost model ------------------------------------------------------------------------------------

def denoiser_params(size: Size, conditional: bool = True) -> int:
    return sum(p.numel() for p in Denoiser(OBS_DIM, ACT_DIM, conditional, (size.hidden,) * 2).parameters())


def denoiser_matmul_flops(size: Size, rows: int, in_dim: int = 2 * OBS_DIM + ACT_DIM + 1) -> int:
    """2 R (in H + H H + H n): the forward's matmul FLOPs (docs/ALGORITHM.md#cost-of-one-update)."""
    h = size.hidden
    return 2 * rows * (in_dim * h + h * h + h * OBS_DIM)


def kernel_cost(kernel: str, size: Size) -> dict:
    """FLOPs and compulsory bytes (inputs read once, outputs written once, fp32) of one kernel call
    on size.rows rows; elementwise FLOPs counted per arithmetic operation."""
    r, n, m, h = size.rows, OBS_DIM, ACT_DIM, size.hidden
    in_dim = 2 * n + m + 1
    weights = denoiser_params(size) * FLOAT
    if kernel == "noising":  # q_sample 3 per element, c(t) 2 per row; t is int64
        return {"flops": r * (3 * n + 2), "bytes": FLOAT * r * (3 * n + m + in_dim) + 8 * r}
    if kernel == "denoiser_forward":
        return {"flops": denoiser_matmul_flops(size, r), "bytes": weights + FLOAT * r * (in_dim + n)}
    if kernel == "reverse_chain":  # s, a part of layer 1 once, then T levels on x (DDIM)
        per_level = denoiser_matmul_flops(size, r) - 2 * r * (n + 1 + m) * h
        return {"flops": 2 * r * (n + m) * h + size.steps * per_level, "bytes": weights + FLOAT * r * (3 * n + m)}
    if kernel == "td_loss":  # pred (2R', n) with R' = rows / 2; ~12 operations per pred element, fwd + bwd
        half = r // 2
        return {"flops": 12 * r * n, "bytes": FLOAT * (half * n * 6 + half)}
    if kernel == "denoiser_backward":  # weight grads and hidden input grads; saved pre1, pre2 read
        return {"flops": 2 * denoiser_matmul_flops(size, r) - 2 * r * in_dim * h,
                "bytes": 2 * weights + FLOAT * r * (in_dim + n + 2 * h)}
    raise ValueError(kernel)


_UPDATE_FLOPS = {}


def update_flops(size: Size, algo: str = "td3sbc") -> int:
    """Matmul FLOPs of one update (mean over the actor period), counted by
    torch.utils.flop_counter on TD3SBC.update with the torch backend (forward and backward)."""
    if (size.name, algo) not in _UPDATE_FLOPS:
        loop = UpdateLoop("torch", size, "cpu", algo=algo)
        with FlopCounterMode(display=False) as counter:
            loop.step()  # one update pair (policy_freq 2): the mean over the actor period
        _UPDATE_FLOPS[size.name, algo] = counter.get_total_flops() // loop.steps_per_call
    return _UPDATE_FLOPS[size.name, algo]


def update_bytes(size: Size, algo: str = "td3sbc") -> int:
    """Compulsory bytes of one update (mean over the actor period): every trained network's
    parameters read in forward and backward, its gradient written and Adam's 4 reads + 3 writes
    (10 P per step), each target network read once, the soft update (3 P per target) every second
    update, and the batch read once. The baselines have no denoisers (D, D', E: 0 parameters)."""
    model = TD3SBC(OBS_DIM, ACT_DIM, config=config(size, algo=algo))
    count = lambda mod: 0 if mod is None else sum(p.numel() for p in mod.parameters())  # noqa: E731
    critic, actor = count(model.critic), count(model.actor)
    den, data = count(model.bdm and model.bdm.denoiser), count(model.data_denoiser)
    freq = model.config.policy_freq
    every = 10 * (critic + den + data) + actor + critic + den  # targets pi', Q', D' read
    actor_step = 10 * actor + critic + den + data + 3 * (actor + critic + den)  # Q1, D', E read; soft update
    batch = size.batch * (2 * OBS_DIM + 2 * ACT_DIM + 3)
    return FLOAT * (every + actor_step // freq + batch)
