"""Bellman Diffusion: a conditional diffusion model of the successor state measure d(x | s, a),
trained by temporal differences on the denoiser's output (docs/ALGORITHM.md#the-successor-state-measure)."""
import copy
from typing import List, NamedTuple, Sequence, Union

import torch
from torch import nn

from .backends import BACKENDS, PRECISIONS, kernel_ops, resolve_backend
from .compat import CompatFlags
from .loss_terms import LossTerm
from .networks import Denoiser
from .reference import SAMPLERS
from .schedule import PREDICTIONS, DiffusionSchedule


class DataDenoising(NamedTuple):
    """A second denoiser's denoising loss, run in the BDM TD loss's row and loss launches (TD3-SBC's data
    denoiser E: docs/ALGORITHM.md#one-td3-sbc-update). net: an unconditional Denoiser; noised (B, obs_dim):
    the states noised into its input rows [q(noised, t, eps), c(t)]; x0 (B, obs_dim): the states of its
    loss's target (noised itself but for compat mismatched_data_denoiser); t (B,), eps (B, obs_dim): its own
    draws."""

    net: Denoiser
    noised: torch.Tensor
    x0: torch.Tensor
    t: torch.Tensor
    eps: torch.Tensor


class BellmanDiffusion(nn.Module):
    """Online SSM denoiser D, its target copy D', the schedule and the TD loss.

    States are expected normalised. s, s_next (B, obs_dim) float32; a, a_next (B, act_dim);
    done (B,) float or bool; t (B,) int64 in [0, steps); eps, z (B, obs_dim).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (512, 512),
        steps: int = 10,
        prediction: str = "sample",
        gamma: float = 0.99,
        backend: str = "auto",
        sampler: str = "ddim",
        compat: Union[bool, CompatFlags] = False,
        precision: str = "tf32",
    ):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}: choose one of {', '.join(PREDICTIONS)}")
        if sampler not in ("ddim", "ddpm"):
            raise ValueError(f"unknown sampler {sampler!r}: choose ddim or ddpm")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.prediction, self.gamma, self.backend, self.precision = prediction, gamma, backend, precision
        self.flags = CompatFlags.resolve(compat)
        self.sampler = "posterior_mean" if self.flags.posterior_mean_sampler else sampler
        assert self.sampler in SAMPLERS
        self.schedule = DiffusionSchedule(steps)
        self.denoiser = Denoiser(obs_dim, act_dim, conditional=True, hidden=hidden)
        self.target_denoiser = copy.deepcopy(self.denoiser).requires_grad_(False)

    @property
    def steps(self) -> int:
        return self.schedule.steps

    def ops(self, like: torch.Tensor):
        """Kernel functions (fastbdm.reference, or fastbdm.ops at self.precision) for tensors on like.device."""
        return kernel_ops(resolve_backend(self.backend, like.device), self.precision)

    def _net(self, target: bool) -> Denoiser:
        return self.target_denoiser if target else self.denoiser

    def denoise(self, x_t, s, a, t, target: bool = False) -> torch.Tensor:
        """Raw network output (B, obs_dim) at noisy states x_t, levels t (B,)."""
        net = self._net(target)
        rows = net.rows(x_t, self.schedule.time_input(t), s, a)
        return self.ops(x_t).denoiser_forward(rows, net.weights())

    @torch.no_grad()
    def sample(self, s, a, z=None, target: bool = True, noise=None) -> torch.Tensor:
        """Samples of d(. | s, a): (B, obs_dim), `steps` denoiser evaluations, no autograd.

        z (B, obs_dim) is the start noise (drawn when None); noise (steps, B, obs_dim) the DDPM
        per-level noise (sampler="ddpm" only; drawn when None). s and a may be two row segments each
        ([head, tail], B rows together), read where they are (TD3SBC.frozen_outputs)."""
        if z is None:
            z = torch.randn_like(s)
        return self.ops(z).reverse_chain(
            self._net(target).weights(), s, a, z, self.schedule, self.prediction, self.sampler, noise
        )

    def td_loss(self, s, a, s_next, a_next, done, t=None, eps=None, z=None, chain_noise=None,
                samples=None) -> torch.Tensor:
        """Scalar BDM TD loss (docs/ALGORITHM.md#the-bdm-td-loss): td_loss_term's loss."""
        return self.td_loss_term(s, a, s_next, a_next, done, t, eps, z, chain_noise, samples).loss

    def td_loss_term(self, s, a, s_next, a_next, done, t=None, eps=None, z=None, chain_noise=None,
                     samples=None) -> LossTerm:
        """The BDM TD loss as a LossTerm: td_loss_terms' first."""
        return self.td_loss_terms(s, a, s_next, a_next, done, t, eps, z, chain_noise, samples)[0]

    def td_loss_terms(self, s, a, s_next, a_next, done, t=None, eps=None, z=None, chain_noise=None,
                      samples=None, data: DataDenoising = None) -> List[LossTerm]:
        """[the BDM TD loss] or, with data, [the BDM TD loss, data's denoising loss] as LossTerms (with d loss
        / d the network's output from the Triton backend, each loss's rows and loss in the same launch);
        the TD loss's gradients reach self.denoiser only. t, eps, z are drawn when None; chain_noise
        (steps, B, obs_dim): the DDPM sampler's (drawn when None). samples (B, obs_dim): the target chain's
        x0 on (s_next, a_next) from z and chain_noise when the caller ran it already
        (TD3SBC.frozen_outputs); else sampled here."""
        ops, sch = self.ops(s), self.schedule
        if t is None:
            t = torch.randint(0, self.steps, (s.shape[0],), device=s.device)
        if eps is None:
            eps = torch.randn_like(s_next)
        if z is None:
            z = eps if self.flags.shared_noise else torch.randn_like(s_next)
        masked = not self.flags.unmasked_terminals
        with torch.no_grad():
            if samples is None:
                samples = self.sample(s_next, a_next, z, noise=chain_noise)
            rows, target_rows, target1, data_rows = ops.bdm_td_rows(
                s, a, s_next, a_next, samples, done, t, eps, sch, self.prediction, masked,
                None if data is None else (data.noised, data.t, data.eps))
        # D' (no grad: its weights detached), D and E in one launch (a denoiser group)
        target_weights = [w.detach() for w in self.target_denoiser.weights()]
        networks = [(target_rows, target_weights), (rows, self.denoiser.weights())]
        if data is not None:
            networks.append((data_rows, data.net.weights()))
        y2, pred, *out = ops.denoiser_forwards(*zip(*networks))
        done = done if masked else torch.zeros_like(done)
        if data is None:
            return [ops.td_loss_term(pred, target1, y2, done, self.gamma)]
        return list(ops.td_and_denoising_terms(pred, target1, y2, done, self.gamma, out[0], data.x0, data.eps, data.t,
                                               sch, self.prediction))

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """target <- (1 - tau) target + tau online, one foreach lerp."""
        torch._foreach_lerp_(list(self.target_denoiser.parameters()), list(self.denoiser.parameters()), tau)
