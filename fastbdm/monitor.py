"""Training metrics kept on the device: running sums and the first update where a term was not finite.

`record` launches seven tiny kernels whatever the number of metrics (and seeds) and never synchronises;
`read` is the one host sync, made every N updates by the trainer. `UpdateMonitor.stack` joins S seeds'
monitors so that one record of (S,) metric values updates all of them with the same seven kernels.
"""
from typing import Dict, List, Sequence

import torch

METRICS = ("critic_loss", "q_mean", "bdm_loss", "data_loss", "actor_loss", "bc", "sbc", "lambda")
NEVER = torch.iinfo(torch.int64).max  # first_update's value of a term that has always been finite


class UpdateMonitor:
    """One run's metrics (`seeds` None) or S seeds' (`seeds` = S: every state tensor with a leading seed
    axis; see `stack`). totals (2, [S,] k): the sums of the finite values and the counts of the records of
    each of the k names since the last read; first_update ([S,] k) int64: the first update number where
    the term was NaN or inf (NEVER if none); step ([S]) int64: the updates recorded."""

    def __init__(self, device, names=METRICS, seeds: int = None):
        self.names = list(names)
        self.index = {n: i for i, n in enumerate(self.names)}
        lead, k = () if seeds is None else (seeds,), len(self.names)
        self.totals = torch.zeros(2, *lead, k, device=device)
        self.first_update = torch.full((*lead, k), NEVER, dtype=torch.int64, device=device)
        self.step = torch.zeros(lead, dtype=torch.int64, device=device)
        self._never = torch.full((), NEVER, dtype=torch.int64, device=device)
        self._sources = {}  # metric names -> (index (j,), values ([S,] j), sums' and counts' rows (2, [S,] j))

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
        stacked = cls(monitors[0].step.device, names, seeds=len(monitors))
        for seed, monitor in enumerate(monitors):
            for field in ("totals", "first_update", "step"):
                view = getattr(stacked, field).select(-2 if field == "totals" else 0, seed)
                view.copy_(getattr(monitor, field))
                setattr(monitor, field, view)
        return stacked

    def record(self, metrics: Dict[str, torch.Tensor]) -> None:
        """Add one update's metrics (a subset of names; 0-d tensors, or (S,) with seeds); counts the update.
        Seven kernels: the stack of the values, NaN/inf to 0, the test of finiteness (a value is finite
        iff that left it unchanged), the step count, the first non-finite update (where, scatter_reduce)
        and one index_add of the sums and counts."""
        names = tuple(metrics)
        if names not in self._sources:
            device, lead = self.step.device, self.step.shape
            idx = torch.tensor([self.index[n] for n in names], device=device)
            self._sources[names] = idx, torch.empty(*lead, len(names), device=device), \
                torch.ones(2, *lead, len(names), device=device)
        idx, values, source = self._sources[names]  # source[1] stays 1: the counts' increments
        torch.stack([v.float() for v in metrics.values()], dim=-1, out=values)
        torch.nan_to_num(values, 0.0, 0.0, 0.0, out=source[0])
        finite = values == source[0]
        self.step.add_(1)
        first = torch.where(finite, self._never, self.step.unsqueeze(-1))
        self.first_update.scatter_reduce_(-1, idx.expand_as(first), first, "amin")
        self.totals.index_add_(-1, idx, source)

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
        self.step.fill_(state["step"])
        first = torch.tensor(state["first_nonfinite"])
        self.first_update.copy_(torch.where(first < 0, NEVER, first))
