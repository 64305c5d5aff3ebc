"""The random numbers of consecutive updates (one update, or the two of a pair) drawn at once, for one seed or
S seeds, each seed from its own generator: one torch.randint over [0, draw_high) for all the updates' batch
rows and diffusion levels together, then all their normals in one torch.randn (in TD3SBC.noise_layout's
order: the fields a pair's frozen networks read together side by side), and the batches' rows in one gather
for every seed and update, which also reduces the draws (a row: its draw mod the dataset size; a level: mod
the steps, in place; TransitionBuffer.gather; its fields contiguous on the triton backend, update-major: at
one seed both updates' next_obs are one block). At one seed, TD3SBC.frozen_outputs reads the updates'
next_obs, policy normals and chain start noise as single views (fastbdm.row_blocks), no concatenation. A
pair costs three kernels at one seed (2 S + 1 at S seeds), where drawing its updates one by one cost
twenty: no stacks either, each seed's draws are written into its row of (S, ...) tensors and the Batch and
UpdateNoise fields are views.

The numbers a seed draws depend on how its updates are grouped (a pair's draws are not two single
updates' draws), and the trainers group them by the update count and the run's boundaries alone
(graphs.UpdateRunner.run: pairs from an even count, single updates where a pair does not fit), so seed
k draws alike alone and in a batch of seeds, and a resumed run like the uninterrupted one with the same
--log-every, --eval-every and --checkpoint-every (a run resumed from an odd update count, where an odd
--steps stopped it, draws other numbers, of the same distribution, than one that passed that count
inside a pair). No host synchronisation; on CUDA each generator must be
registered with a graph that captures the draws (graphs.UpdateRunner.generators).
"""
from typing import List, Sequence, Tuple

import torch

from .backends import resolve_backend
from .nvtx_ranges import phase
from .replay import TransitionBuffer
from .td3sbc import TD3SBC, Batch, UpdateNoise


def draw_high(agent: TD3SBC, buffer: TransitionBuffer) -> int:
    """The integer draws' range, N x steps (N transitions): a multiple of both, so that a row (draw mod N)
    and a level (draw mod steps) are exactly uniform."""
    return len(buffer) * agent.config.steps


def draw_updates(agent: TD3SBC, buffer: TransitionBuffer, batch_size: int, actor_steps: Sequence[bool],
                 generators: Sequence[torch.Generator], seed_axis: bool = True
                 ) -> Tuple[List[Batch], List[UpdateNoise]]:
    """The batches and UpdateNoise of len(actor_steps) consecutive updates (actor_steps[u]: update u steps
    the actor) of S = len(generators) seeds, seed k's drawn from generators[k] (None: torch's global one).
    seed_axis: every field (S, ...); False (one generator): without the seed axis."""
    device, seeds, updates = buffer.rows.device, len(generators), len(actor_steps)
    if not seed_axis and seeds != 1:
        raise ValueError(f"draw_updates without a seed axis draws one seed's updates, got {seeds} generators")
    normal_count, level_count = agent.noise_sizes(batch_size, actor_steps)
    rows = updates * batch_size
    # per seed [the batches' row draws | the levels' draws], reduced (mod rows, mod steps) by the gather
    draws = torch.empty(seeds, rows + level_count, dtype=torch.int64, device=device)
    normals = torch.empty(seeds, normal_count, device=device)
    high = draw_high(agent, buffer)
    for k, generator in enumerate(generators):
        with phase("sample"):
            torch.randint(0, high, draws.shape[1:], generator=generator, device=device, out=draws[k])
        with phase("noise"):
            torch.randn(normals.shape[1:], generator=generator, device=device, out=normals[k])
    levels = draws[:, rows:]
    with phase("sample"):  # the triton backend's kernels read contiguous fields: gathered so, no copies later
        dense = resolve_backend(agent.config.backend, device) == "triton"
        batches = buffer.gather(draws[:, :rows].view(seeds, updates, batch_size), dense, levels, agent.config.steps)
    if not seed_axis:
        batches = [Batch(*(field[0] for field in batch)) for batch in batches]
        normals, levels = normals[0], levels[0]
    return batches, agent.noise_views(normals, levels, batch_size, actor_steps)
