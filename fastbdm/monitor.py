"""Training metrics kept on the device: running sums and the first update where a term was not finite.

`record` launches seven tiny kernels whatever the number of metrics (and seeds), for one update or the two
of a pair, or one (`fused`, the triton backend: kernels/record_metrics.py), and never synchronises; `read`
is the one host sync, made every N updates by the trainer. `UpdateMonitor.stack` joins S seeds' monitors
so that one record of (S,) metric values updates all of them with the same launches.
"""
from typing import Dict, List, Sequence

import torch

from .kernels.record_metrics import record_metrics

METRICS = ("critic_loss", "q_mean", "bdm_loss", "data_loss", "actor_loss", "bc", "sbc", "lambda")
NEVER = torch.iinfo(torch.int64).max  # first_update's value of a term that has always been finite
MAX_UPDATES = 2  # updates one record takes at most: a pair


class UpdateMonitor:
    """One run's metrics (`seeds` None) or S seeds' (`seeds` = S: every state tensor with a leading seed
    axis; see `stack`). totals (2, [S,] k): the sums of the finite values and the counts of the records of
    each of the k names since the last read; first_update ([S,] k) int64: the first update number where
    the term was NaN or inf (NEVER if none); clock ([S,] MAX_UPDATES) int64: the updates recorded (`step`,
    the last column) and the numbers before it (column c holds step - (MAX_UPDATES - 1 - c)), so that a
    record of u updates reads their numbers as its last u columns after one add. fused: record in one Triton
    launch (kernels/record_metrics.py; a CUDA device, or the CPU interpreter), else in seven torch kernels."""

    def __init__(self, device, names=METRICS, seeds: int = None, fused: bool = False):
        self.names, self.fused = list(names), fused
        self.index = {n: i for i, n in enumerate(self.names)}
        self.lead, k = () if seeds is None else (seeds,), len(self.names)
        self.totals = torch.zeros(2, *self.lead, k, device=device)
        self.first_update = torch.full((*self.lead, k), NEVER, dtype=torch.int64, device=device)
        self.clock = torch.arange(1 - MAX_UPDATES, 1, device=device).expand(*self.lead, MAX_UPDATES).clone()
        self._never = torch.full((), NEVER, dtype=torch.int64, device=device)
        self._absent = torch.zeros(self.lead, device=device)  # the value of a name an update of a record lacks
        # metric names of each update -> (index (u j,), values ([S,] u j), sums' and counts' increments
        # (2, [S,] u j)): the torch path's cached tensors
        self._sources = {}

    @property
    def step(self) -> torch.Tensor:
        """([S]) int64: the updates recorded."""
        return self.clock[..., -1]

    @property
    def sums(self) -> torch.Tensor:
        return self.totals[0]

    @property
    def counts(self) -> torch.Tensor:
        return self.totals[1]

    @classmethod
    def stack(cls, monitors: Sequence["UpdateMonitor"]) -> "UpdateMonitor":
        """One monitor of len(monitors) seeds holding their current states; each of `monitors` then reads
        its seed's slice of it (its tensors become views), so recording (S,) values into the stack
        records seed k's values into monitors[k]."""
        names = monitors[0].names
        if any(m.names != names for m in monitors):
            raise ValueError("UpdateMonitor.stack needs monitors of the same metric names")
        stacked = cls(monitors[0].clock.device, names, seeds=len(monitors), fused=monitors[0].fused)
        for seed, monitor in enumerate(monitors):
            for field in ("totals", "first_update", "clock"):
                view = getattr(stacked, field).select(-2 if field == "totals" else 0, seed)
                view.copy_(getattr(monitor, field))
                setattr(monitor, field, view)
        return stacked

    def record(self, *updates: Dict[str, torch.Tensor]) -> None:
        """Add the metrics of one update, or of the two updates of a pair in their order (each a subset of
        names; 0-d tensors, or (S,) with seeds); counts the updates, each its own update number.
        Seven kernels, for one update or a pair: the stack of the values, NaN/inf to 0, the test of
        finiteness (a value is finite iff that left it unchanged), the clock's step, the first non-finite
        update (where, scatter_reduce) and one index_add of the sums and counts. The updates' values lie
        in a (u, j) grid over the j names of any of them (in order of first appearance); a name an update
        lacks (the first of a pair has no actor terms) holds a finite 0 that adds 0 to its count."""
        if not 1 <= len(updates) <= MAX_UPDATES:
            raise ValueError(f"UpdateMonitor.record takes 1 to {MAX_UPDATES} updates' metrics, got {len(updates)}")
        names = list(dict.fromkeys(n for metrics in updates for n in metrics))
        if self.fused:
            self._record_fused(updates, names)
            return
        key = tuple(tuple(metrics) for metrics in updates)
        if key not in self._sources:
            device, u, j = self.clock.device, len(updates), len(names)
            idx = torch.tensor([self.index[n] for n in names] * u, device=device)
            present = torch.tensor([float(n in metrics) for metrics in updates for n in names], device=device)
            source = torch.stack([torch.zeros(*self.lead, u * j, device=device),
                                  present.expand(*self.lead, u * j)])  # source[1]: the counts' increments
            self._sources[key] = idx, torch.empty(*self.lead, u * j, device=device), source
        idx, values, source = self._sources[key]
        torch.stack([metrics.get(n, self._absent).float() for metrics in updates for n in names], dim=-1, out=values)
        torch.nan_to_num(values, 0.0, 0.0, 0.0, out=source[0])
        finite = (values == source[0]).unflatten(-1, (len(updates), -1))
        self.clock.add_(len(updates))
        first = torch.where(finite, self._never, self.clock[..., -len(updates):, None]).flatten(-2)
        self.first_update.scatter_reduce_(-1, idx.expand_as(first), first, "amin")
        self.totals.index_add_(-1, idx, source)

    def _record_fused(self, updates, names) -> None:
        """record in one launch: the slots name-major, this monitor's absent value as a placeholder where an
        update lacks a name; the state as (S, ...) views (S = 1 without seeds)."""
        slots = [(metrics.get(n, self._absent), n in metrics) for n in names for metrics in updates]
        lead = self.lead or (1,)
        record_metrics([v for v, _ in slots], [p for _, p in slots], [self.index[n] for n in names],
                       self.totals.view(2, *lead, -1), self.first_update.view(*lead, -1),
                       self.clock.view(*lead, MAX_UPDATES), len(updates))

    def read(self) -> Dict[str, float]:
        """Means since the last read (terms that were recorded), then reset the sums. A term the
        algorithm does not have (rebrac, td3bc: bdm_loss, data_loss, sbc) is never recorded: it is
        absent here (an empty metrics.csv cell) and never in nonfinite()."""
        sums, counts = self.sums.tolist(), self.counts.tolist()
        self.totals.zero_()
        return {n: s / c for n, s, c in zip(self.names, sums, counts) if c > 0}

    @property
    def first_nonfinite(self) -> torch.Tensor:
        """([S,] k) int64: the first update where each term was NaN or inf, -1 where none."""
        return torch.where(self.first_update == NEVER, -1, self.first_update)

    def nonfinite(self) -> List[tuple]:
        """[(term, update number)] of terms that have been NaN or inf, earliest first."""
        bad = [(n, s) for n, s in zip(self.names, self.first_nonfinite.tolist()) if s >= 0]
        return sorted(bad, key=lambda x: x[1])

    def state_dict(self) -> dict:
        return {"step": self.step.item(), "first_nonfinite": self.first_nonfinite.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.clock.copy_(torch.arange(1 - MAX_UPDATES, 1) + state["step"])
        first = torch.tensor(state["first_nonfinite"])
        self.first_update.copy_(torch.where(first < 0, NEVER, first))
