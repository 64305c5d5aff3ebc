"""Discrete cosine diffusion schedule (docs/ALGORITHM.md#diffusion-schedule) and the three output parameterisations.

All tensors are float32 buffers of shape (steps,), indexed by the level i in [0, steps).
"""
import math

import torch
from torch import nn

PREDICTIONS = ("sample", "epsilon", "v")


def _alphabar(tau: float) -> float:
    return math.cos((tau + 0.008) / 1.008 * math.pi / 2) ** 2


class DiffusionSchedule(nn.Module):
    """squaredcos_cap_v2 schedule with `steps` levels.

    Buffers (steps,): betas, alphas, alphas_cumprod (abar_i), alphas_cumprod_prev (abar_{i-1},
    1 at i = 0), sqrt_ab, sqrt_one_minus_ab, the DDPM posterior coefficients coef_x0, coef_xt,
    posterior_std, and the SBC weights eta = beta^2 alpha (1 - abar).
    """

    def __init__(self, steps: int = 10):
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = steps
        betas = torch.tensor(
            [min(1 - _alphabar((i + 1) / steps) / _alphabar(i / steps), 0.999) for i in range(steps)],
            dtype=torch.float64,
        )
        alphas = 1 - betas
        ab = torch.cumprod(alphas, 0)
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        buffers = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": ab,
            "alphas_cumprod_prev": ab_prev,
            "sqrt_ab": ab.sqrt(),
            "sqrt_one_minus_ab": (1 - ab).sqrt(),
            "sqrt_ab_prev": ab_prev.sqrt(),
            "sqrt_one_minus_ab_prev": (1 - ab_prev).sqrt(),
            "coef_x0": ab_prev.sqrt() * betas / (1 - ab),
            "coef_xt": alphas.sqrt() * (1 - ab_prev) / (1 - ab),
            "posterior_std": (betas * (1 - ab_prev) / (1 - ab)).sqrt(),
            "eta": betas**2 * alphas * (1 - ab),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)

    def time_input(self, t: torch.Tensor) -> torch.Tensor:
        """c(t) = -1 + 2 t / steps as a (R, 1) float column, t (R,) int64."""
        return (t.to(torch.float32) * (2.0 / self.steps) - 1.0).unsqueeze(-1)

    def gather(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Per-row coefficient `name` at levels t (R,), as a (R, 1) column."""
        return getattr(self, name)[t].unsqueeze(-1)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Forward noising sqrt(abar_t) x0 + sqrt(1 - abar_t) eps; x0, eps (R, n), t (R,)."""
        return self.gather("sqrt_ab", t) * x0 + self.gather("sqrt_one_minus_ab", t) * eps


def network_target(prediction: str, x0, eps, sqrt_ab, sqrt_1m_ab):
    """What the network should output for a clean x0 noised with eps (its own output space)."""
    if prediction == "sample":
        return x0
    if prediction == "epsilon":
        return eps
    return sqrt_ab * eps - sqrt_1m_ab * x0


def split_prediction(prediction: str, out, x_t, sqrt_ab, sqrt_1m_ab):
    """(x0hat, epshat) implied by the network output `out` at x_t; coefficients broadcast."""
    if prediction == "sample":
        x0hat = out
        epshat = (x_t - sqrt_ab * x0hat) / sqrt_1m_ab
    elif prediction == "epsilon":
        epshat = out
        x0hat = (x_t - sqrt_1m_ab * epshat) / sqrt_ab
    else:
        x0hat = sqrt_ab * x_t - sqrt_1m_ab * out
        epshat = sqrt_1m_ab * x_t + sqrt_ab * out
    return x0hat, epshat
