"""Two sample sets compared: a model's samples of a distribution against samples of the real one."""
from dataclasses import dataclass

import numpy as np

STD_FLOOR = 1e-8  # a reality-side std below this (all samples equal) counts as this


@dataclass
class Comparison:
    """mean_error (n,): (model mean - reality mean) / reality std, per dimension; std_ratio (n,): model
    std / reality std; energy_distance: between the two sets in the units of `scale`; p_value: of the
    permutation test that both sets come from one distribution (small: they do not)."""

    mean_error: np.ndarray
    std_ratio: np.ndarray
    energy_distance: float
    p_value: float

    @property
    def mean_abs_error(self) -> float:
        """Mean over dimensions of |mean_error|, in reality-side standard deviations."""
        return float(np.abs(self.mean_error).mean())

    @property
    def median_std_ratio(self) -> float:
        return float(np.median(self.std_ratio))


def compare_samples(model: np.ndarray, reality: np.ndarray, scale=None, resamples: int = 200,
                    seed: int = 0) -> Comparison:
    """Compares model samples (K, n) with reality samples (L, n). The energy distance and its test run
    on both divided by `scale` (n,) (default 1), so that no dimension dominates by its units; the test
    takes `resamples` permutations (dcor.homogeneity.energy_test), seeded."""
    import dcor

    model, reality = np.asarray(model, dtype=np.float64), np.asarray(reality, dtype=np.float64)
    std = np.maximum(reality.std(0, ddof=1), STD_FLOOR)
    scale = np.ones(model.shape[1]) if scale is None else np.asarray(scale, dtype=np.float64)
    x, y = model / scale, reality / scale
    test = dcor.homogeneity.energy_test(x, y, num_resamples=resamples, random_state=seed)
    return Comparison(
        mean_error=(model.mean(0) - reality.mean(0)) / std,
        std_ratio=model.std(0, ddof=1) / std,
        energy_distance=float(dcor.energy_distance(x, y)),
        p_value=float(test.pvalue),
    )
