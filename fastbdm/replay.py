"""Normalised transitions resident on the training device, sampled without leaving it."""
from typing import List

import torch

from .kernels.gather_fields import gather_fields
from .networks import normalize_states
from .td3sbc import Batch


class TransitionBuffer:
    """All transitions of a dataset, states normalised, on one device, stored as one (N, width) matrix
    `rows` whose columns are Batch's fields in order (obs n, actions m, rewards 1, next_obs n,
    next_actions m, dones 1, valid 1: width 2n + 2m + 3); obs ... valid are column views of it.

    `sample` draws indices with torch.randint on that device and gathers the rows in one index_select
    (two kernels): no host synchronisation, safe inside a CUDA graph (the default generator is
    graph-aware). `gather` takes the row draws of S seeds' U updates (fastbdm.update_draws) and returns
    each update's Batch, its fields column views of the gathered rows or, with `dense` (the triton
    backend: kernels/gather_fields.py, still one launch), contiguous blocks the kernels read without a copy.
    """

    def __init__(self, transitions, device):
        mean, std = transitions.obs_mean.to(device), transitions.obs_std.to(device)
        self.obs_mean, self.obs_std = mean, std
        fields = (transitions.observations, transitions.actions, transitions.rewards, transitions.next_observations,
                  transitions.next_actions, transitions.terminals, transitions.valid)
        self.vectors = [f.dim() == 1 for f in fields]  # (N,) fields: one column, read back as (R,)
        self.widths = [1 if vector else f.shape[1] for f, vector in zip(fields, self.vectors)]
        self.size = fields[0].shape[0]
        self.rows = torch.empty(self.size, sum(self.widths), device=device)
        for name, column, field in zip(Batch._fields, self.fields(self.rows), fields):  # one field at a time
            field = field.to(device)
            column.copy_(normalize_states(field, mean, std) if name in ("obs", "next_obs") else field)
        self.obs, self.actions, self.rewards, self.next_obs, self.next_actions, self.dones, self.valid = \
            self.fields(self.rows)

    def fields(self, rows: torch.Tensor) -> Batch:
        """Batch's fields as column views of rows ([S,] R, width): ([S,] R, n) or ([S,] R, m) matrices,
        ([S,] R) vectors."""
        parts = rows.split(self.widths, dim=-1)
        return Batch(*(p.squeeze(-1) if vector else p for p, vector in zip(parts, self.vectors)))

    def __len__(self) -> int:
        return self.size

    def sample_rows(self, batch_size: int, generator: torch.Generator = None) -> torch.Tensor:
        """(batch_size, width) rows drawn uniformly with replacement; indices from `generator` (on this
        buffer's device; default torch's global one)."""
        idx = torch.randint(0, self.size, (batch_size,), device=self.rows.device, generator=generator)
        return self.rows.index_select(0, idx)

    def gather(self, draws: torch.Tensor, dense: bool = False, levels: torch.Tensor = None, steps: int = 0
               ) -> List[Batch]:
        """draws (S, U, B) int64 >= 0 (S seeds' U updates of B rows; row: draw mod len(self)) -> U Batches of
        (S, B, ...) fields, in one launch: column views of the index_select's (S, U, B, width) rows, or (dense)
        each field a contiguous (S, B, d) block of gather_fields' update-major output. levels (optional, (S, L)
        int64 >= 0, unit column stride): draws replaced in place by themselves mod steps (dense: in the same
        launch)."""
        S, U, B = draws.shape
        if not dense:
            if levels is not None:
                levels.remainder_(steps)
            rows = self.rows.index_select(0, draws.remainder(self.size).flatten()).unflatten(0, (S, U, B))
            return [self.fields(rows.select(1, u)) for u in range(U)]
        flat = gather_fields(self.rows, draws, self.widths, levels, steps)
        blocks = [block.view(U, S, B, d) for block, d in zip(flat.split([S * U * B * d for d in self.widths]),
                                                               self.widths)]
        return [Batch(*(b[u].squeeze(-1) if vector else b[u] for b, vector in zip(blocks, self.vectors)))
                for u in range(U)]

    def sample(self, batch_size: int, generator: torch.Generator = None) -> Batch:
        """sample_rows as a Batch (its fields column views of the gathered rows)."""
        return self.fields(self.sample_rows(batch_size, generator))
