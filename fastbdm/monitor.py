"""Training metrics kept on the device: running sums and the first update where a term was not finite.

`record` launches a few tiny kernels and never synchronises; `read` is the one host sync, made every
N updates by the trainer.
"""
from typing import Dict, List

import torch

METRICS = ("critic_loss", "q_mean", "bdm_loss", "data_loss", "actor_loss", "bc", "sbc", "lambda")


class UpdateMonitor:
    def __init__(self, device, names=METRICS):
        self.names = list(names)
        self.index = {n: i for i, n in enumerate(self.names)}
        k = len(self.names)
        self.sums = torch.zeros(k, device=device)
        self.counts = torch.zeros(k, device=device)
        self.first_nonfinite = torch.full((k,), -1, dtype=torch.int64, device=device)
        self.step = torch.zeros((), dtype=torch.int64, device=device)
        self._indices = {}  # metric names -> index tensor, made once (no host copy inside a graph)

    def record(self, metrics: Dict[str, torch.Tensor]) -> None:
        """Add one update's scalar metrics (a subset of names); counts the update."""
        self.step += 1
        names = tuple(metrics)
        if names not in self._indices:
            self._indices[names] = torch.tensor([self.index[n] for n in names], device=self.sums.device)
        idx = self._indices[names]
        values = torch.stack([v.float() for v in metrics.values()])
        finite = torch.isfinite(values)
        self.sums.index_add_(0, idx, torch.where(finite, values, 0.0))
        self.counts.index_add_(0, idx, torch.ones_like(values))
        seen = self.first_nonfinite[idx]
        self.first_nonfinite[idx] = torch.where((seen < 0) & ~finite, self.step, seen)

    def read(self) -> Dict[str, float]:
        """Means since the last read (terms that were recorded), then reset the sums. A term the
        algorithm does not have (rebrac, td3bc: bdm_loss, data_loss, sbc) is never recorded: it is
        absent here (an empty metrics.csv cell) and never in nonfinite()."""
        sums, counts = self.sums.tolist(), self.counts.tolist()
        self.sums.zero_()
        self.counts.zero_()
        return {n: s / c for n, s, c in zip(self.names, sums, counts) if c > 0}

    def nonfinite(self) -> List[tuple]:
        """[(term, update number)] of terms that have been NaN or inf, earliest first."""
        bad = [(n, s) for n, s in zip(self.names, self.first_nonfinite.tolist()) if s >= 0]
        return sorted(bad, key=lambda x: x[1])

    def state_dict(self) -> dict:
        return {"step": self.step.item(), "first_nonfinite": self.first_nonfinite.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.step.fill_(state["step"])
        self.first_nonfinite.copy_(torch.tensor(state["first_nonfinite"]))
