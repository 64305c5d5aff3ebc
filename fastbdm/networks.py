"""The four networks of docs/ALGORITHM.md#networks: actor, twin critics, SSM denoiser D and data denoiser E."""
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backends import kernel_ops, resolve_backend


STATE_NORM_EPS = 1e-3


def normalize_states(obs, mean, std):
    """s_norm = (s - mean) / (std + 1e-3), statistics over the dataset's observations (docs/ALGORITHM.md#networks)."""
    return (obs - mean) / (std + STATE_NORM_EPS)


def denormalize_states(s_norm, mean, std):
    """The inverse of normalize_states: raw observations s_norm (std + 1e-3) + mean."""
    return s_norm * (std + STATE_NORM_EPS) + mean


class _Backend:
    """The kernel backend of a small network (backends.resolve_backend): "torch" runs the module's own
    torch code, "triton" the fused kernels of kernels/small_mlp.py (ops.small_mlp at `precision`), "auto"
    the kernels on CUDA."""

    backend: str = "torch"
    precision: str = "tf32"

    def _fused(self, like: torch.Tensor, name: str = "small_mlp"):
        """ops.`name` (small_mlp or small_mlp_saved) at self.precision when the backend resolves to "triton" for
        like's device, else None."""
        if resolve_backend(self.backend, like.device) != "triton":
            return None
        return getattr(kernel_ops("triton", self.precision), name)


class Actor(_Backend, nn.Module):
    """pi(s) = max_action * tanh(MLP(s)); s (B, obs_dim) -> (B, act_dim). backend, precision: _Backend."""

    def __init__(self, obs_dim: int, act_dim: int, max_action: float = 1.0, hidden: Sequence[int] = (256, 256, 256),
                 backend: str = "torch", precision: str = "tf32"):
        super().__init__()
        layers, width = [], obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, act_dim))
        self.net = nn.Sequential(*layers)
        self.max_action, self.backend, self.precision = max_action, backend, precision

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        fused = self._fused(s)
        if fused is not None:
            return fused(s, None, self.weights(), "linear", False, 1, self.max_action).squeeze(-3)
        return self.max_action * torch.tanh(self.net(s))

    def saved_forward(self, s: torch.Tensor):
        """On the Triton backend the fused forward with its saved activations (ops.SavedForward, out (1, B, m):
        forward's, differentiable as it), for a backward the caller launches; None on the torch backend."""
        fused = self._fused(s, "small_mlp_saved")
        return None if fused is None else fused(s, None, self.weights(), "linear", False, 1, self.max_action)

    def weights(self) -> list:
        """(W, b) per layer, W (out, in): the layout "linear" of kernels/small_mlp.py."""
        return list(self.net.parameters())


class NormalizedPolicy(nn.Module):
    """The deterministic policy on raw observations: actor(normalize_states(obs)); (N, n) -> (N, m)."""

    def __init__(self, actor: Actor, obs_mean: torch.Tensor, obs_std: torch.Tensor):
        super().__init__()
        self.actor = actor
        self.register_buffer("obs_mean", obs_mean)
        self.register_buffer("obs_std", obs_std)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(normalize_states(obs, self.obs_mean, self.obs_std))


class EnsembleLinear(nn.Module):
    """The parameters of `members` independent Linear layers for one batched matmul: weight (E, in, out),
    bias (E, 1, out) (TwinCritic.forward applies them: (E', B, in) -> (E', B, out) with the first E').

    Each member is initialised like torch.nn.Linear: U(-1/sqrt(in), 1/sqrt(in)).
    """

    def __init__(self, members: int, in_features: int, out_features: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features).uniform_(-bound, bound))


class TwinCritic(_Backend, nn.Module):
    """Q1 and Q2 evaluated together: (s, a) -> (2, B). Hidden layers Linear -> ReLU -> LayerNorm
    (ReBRAC's critics), or Linear -> ReLU with layer_norm=False (TD3's and TD3+BC's). backend,
    precision: _Backend (the fused kernel runs both members in one launch)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256, 256), members: int = 2,
                 layer_norm: bool = True, backend: str = "torch", precision: str = "tf32"):
        super().__init__()
        self.members, self.layer_norm, self.backend, self.precision = members, layer_norm, backend, precision
        widths = [obs_dim + act_dim, *hidden]
        self.hidden = nn.ModuleList(EnsembleLinear(members, i, o) for i, o in zip(widths[:-1], widths[1:]))
        norms = hidden if layer_norm else ()
        self.norm_weight = nn.ParameterList(nn.Parameter(torch.ones(members, 1, h)) for h in norms)
        self.norm_bias = nn.ParameterList(nn.Parameter(torch.zeros(members, 1, h)) for h in norms)
        self.out = EnsembleLinear(members, widths[-1], 1)

    def forward(self, s: torch.Tensor, a: torch.Tensor, members: int = None, frozen: bool = False) -> torch.Tensor:
        """(members, B) values of the first `members` critics (default all); Q1 alone is members=1.
        frozen: the weights as constants (detached), differentiable in s and a only (the actor's loss)."""
        count = self.members if members is None else members
        weights = [w.detach() for w in self.weights()] if frozen else self.weights()
        fused = self._fused(s)
        if fused is not None:
            return fused(s, a, weights, "ensemble", self.layer_norm, count).squeeze(-1)
        x = torch.cat([s, a], dim=-1).expand(count, -1, -1)
        weights = iter(weights)
        for _ in self.hidden:  # weights()' order: W, b (, g, beta) per hidden layer
            w, b = next(weights), next(weights)
            x = torch.relu(torch.baddbmm(b[:count], x, w[:count]))
            if self.layer_norm:
                g, beta = next(weights), next(weights)
                x = F.layer_norm(x, x.shape[-1:]) * g[:count] + beta[:count]
        w, b = next(weights), next(weights)
        return torch.baddbmm(b[:count], x, w[:count]).squeeze(-1)

    def saved_forward(self, s: torch.Tensor, a: torch.Tensor, members: int = None, frozen: bool = False):
        """On the Triton backend forward's fused launch with its saved activations (ops.SavedForward, out
        (members, B, 1)); None on the torch backend."""
        fused = self._fused(s, "small_mlp_saved")
        if fused is None:
            return None
        weights = [w.detach() for w in self.weights()] if frozen else self.weights()
        return fused(s, a, weights, "ensemble", self.layer_norm, self.members if members is None else members)

    def weights(self) -> list:
        """(W, b, g, beta) per hidden layer ((W, b) without layer_norm), then (W_out, b_out): the layout
        "ensemble" of kernels/small_mlp.py (W (members, in, out), vectors (members, 1, out))."""
        flat = []
        for i, layer in enumerate(self.hidden):
            flat += [layer.weight, layer.bias, *((self.norm_weight[i], self.norm_bias[i]) if self.layer_norm else ())]
        return [*flat, self.out.weight, self.out.bias]


class Denoiser(nn.Module):
    """Denoiser MLP on rows [x_t, s, c(t), a] (SSM denoiser D) or [x_t, c(t)] (data denoiser E).

    Hidden layers Linear -> ReLU -> LayerNorm, output Linear(hidden[-1], obs_dim).
    `cond_dim` = obs_dim + act_dim for D, 0 for E; the input width is obs_dim + cond_dim + 1.
    """

    def __init__(self, obs_dim: int, act_dim: int = 0, conditional: bool = True, hidden: Sequence[int] = (512, 512)):
        super().__init__()
        self.obs_dim, self.act_dim, self.conditional = obs_dim, act_dim, conditional
        self.in_dim = 2 * obs_dim + act_dim + 1 if conditional else obs_dim + 1
        widths = [self.in_dim, *hidden]
        self.linears = nn.ModuleList(nn.Linear(i, o) for i, o in zip(widths[:-1], widths[1:]))
        self.norms = nn.ModuleList(nn.LayerNorm(h) for h in hidden)
        self.out = nn.Linear(widths[-1], obs_dim)

    def rows(self, x_t: torch.Tensor, c: torch.Tensor, s=None, a=None) -> torch.Tensor:
        """Assemble input rows; x_t (R, n), c (R, 1), s (R, n), a (R, m)."""
        return torch.cat([x_t, s, c, a], dim=-1) if self.conditional else torch.cat([x_t, c], dim=-1)

    def forward_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (R, in_dim) -> (R, obs_dim)."""
        h = rows
        for linear, norm in zip(self.linears, self.norms):
            h = norm(torch.relu(linear(h)))
        return self.out(h)

    def forward(self, x_t: torch.Tensor, c: torch.Tensor, s=None, a=None) -> torch.Tensor:
        return self.forward_rows(self.rows(x_t, c, s, a))

    def weights(self) -> tuple:
        """(W1, b1, g1, beta1, ..., W_out, b_out), each Linear weight (out, in): what the kernels read."""
        flat = []
        for linear, norm in zip(self.linears, self.norms):
            flat += [linear.weight, linear.bias, norm.weight, norm.bias]
        return (*flat, self.out.weight, self.out.bias)
