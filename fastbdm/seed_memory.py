"""How many seeds one batched run holds: device memory per seed, the dataset once, the device's free memory.

Per seed (bytes, fp32): its parameters and buffers (every learner and target: TD3SBC.state_dict), two
Adam moments and one gradient per optimised parameter, and the activations of one update at the batch
size (activation_bytes, a model). The dataset (TransitionBuffer) is on the device once for all seeds.
"""
import os
from dataclasses import dataclass

import torch

FLOAT = 4
HEADROOM = 0.9  # the share of the free memory a batch may plan for (allocator rounding, graph pools)
ACTIVATION_SLACK = 2  # the activation model counts what autograd keeps; temporaries and the allocator's
                      # blocks come on top: planned at twice the count


@dataclass
class SeedMemory:
    """Bytes one seed of a batch holds on the device."""

    parameters: int
    adam: int
    gradients: int
    activations: int

    @property
    def total(self) -> int:
        return self.parameters + self.adam + self.gradients + self.activations


def activation_bytes(config, batch_size: int) -> int:
    """The activations autograd keeps through one update of one seed at `batch_size` rows B, per hidden
    layer a pre-activation and an output (LayerNorm: its normalised input too), times ACTIVATION_SLACK:
    the twin critics on B rows (critic loss) and their first member on B rows (actor loss), the actor on B
    rows, or for td3sbc on the 2B SBC states; td3sbc also D and E on B rows (the BDM and data losses) and
    D' on the 2B SBC rows (the state-BC loss; the reverse chain before it keeps nothing)."""
    critic = sum(config.critic_hidden) * (3 if config.critic_layer_norm else 2)
    actor, denoiser = 2 * sum(config.actor_hidden), 2 * sum(config.denoiser_hidden)
    per_row = 2 * critic + critic + actor
    if config.algo == "td3sbc":
        per_row += actor + 2 * denoiser + 2 * denoiser
    return ACTIVATION_SLACK * FLOAT * batch_size * per_row


def seed_memory(agent, batch_size: int) -> SeedMemory:
    """The device memory of one seed shaped as `agent` (a TD3SBC) at `batch_size` rows per update."""
    optimised = sum(p.numel() * p.element_size() for opt in agent.optimizers.values()
                    for group in opt.param_groups for p in group["params"])
    return SeedMemory(parameters=sum(t.numel() * t.element_size() for t in agent.state_dict().values()),
                      adam=2 * optimised, gradients=optimised, activations=activation_bytes(agent.config, batch_size))


def dataset_bytes(transitions) -> int:
    """Bytes of the dataset on the device (TransitionBuffer): states and next states, actions and next
    actions, rewards, dones and valid flags, fp32."""
    rows, n, m = len(transitions), transitions.obs_dim, transitions.act_dim
    return FLOAT * rows * (2 * n + 2 * m + 3)


def free_memory(device: torch.device) -> int:
    """Free bytes on `device`: CUDA's free memory, or on the CPU the memory the kernel reports available."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def gigabytes(size: int) -> str:
    return f"{size / 1e9:.2f} GB"


def seeds_per_batch(seeds: int, requested: int, per_seed: SeedMemory, dataset: int, device: torch.device) -> int:
    """Seeds per batched run: `requested` (--seeds-per-batch; None: on CUDA as many as HEADROOM of the free
    memory holds, on the CPU all `seeds`), at most `seeds`. ValueError (one line, naming --seeds-per-batch)
    when the device cannot hold that many."""
    room = HEADROOM * free_memory(device) - dataset
    fit = max(int(room // per_seed.total), 0)
    wanted = min(seeds, requested or (fit if device.type == "cuda" else seeds))
    if wanted >= 1 and wanted <= fit:
        return wanted
    wanted = max(wanted, 1)
    advice = (f"pass --seeds-per-batch {fit}" if fit >= 1 else
              "--seeds-per-batch 1 does not fit either: pass a smaller --batch-size")
    raise ValueError(f"{wanted} seeds per batch need {gigabytes(dataset + wanted * per_seed.total)} on {device} "
                     f"({gigabytes(per_seed.total)} per seed, the dataset {gigabytes(dataset)}) but "
                     f"{gigabytes(free_memory(device))} is free; {advice}")
