"""S seeds trained by one batched update: the learners of S TD3SBC agents stored stacked (S, ...), one
fused Adam over every learner stepping all seeds (as TD3SBC's), every seed's losses and gradients computed in one
torch.func.vmap over the seed axis (batched matmuls; the Triton kernels take the seed axis,
kernels/seed_axis.py).

Seed k's update is a function of its parameters, its batch and its noise (TD3SBC.update with injected
UpdateNoise), so seed k in a batch of seeds follows the single-seed run of seed k up to the float
rounding of batched against single matmuls, whichever other seeds share the batch: its agent is built
from its own seed, and its batches and noise come from its own generator (`generators`).

On CUDA (pending a GPU): the generators are torch.Generator(device="cuda"), and a CUDA graph that
captures `draw` must register each of them (torch.cuda.CUDAGraph.register_generator_state) so that
every replay advances its Philox offset; the fused Adam is capturable with a tensor lr (make_adam).
The Triton ops join vmap and torch.func.grad through their seed-axis vmap rules and the
autograd.Functions of fastbdm.ops.
"""
import copy
from typing import Dict, List, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .td3sbc import TD3SBC, Batch, UpdateNoise, make_adam

# Parameter-name prefixes of each learner's online network (TD3SBC's learners).
LEARNERS = {"actor": "actor.", "critic": "critic.", "denoiser": "bdm.denoiser.", "data_denoiser": "data_denoiser."}
TARGETS = {"actor_target.": "actor.", "critic_target.": "critic.", "bdm.target_denoiser.": "bdm.denoiser."}


class _Method(nn.Module):
    """agent.<name>(*args) as a module call, so that functional_call can run it on other parameters."""

    def __init__(self, agent: TD3SBC, name: str):
        super().__init__()
        self.agent, self.name = agent, name

    def forward(self, *args):
        return getattr(self.agent, self.name)(*args)


def stack_batches(batches: Sequence[Batch]) -> Batch:
    """S batches of B rows -> one Batch of (S, B, ...) tensors."""
    return Batch(*(torch.stack(field) for field in zip(*batches)))


def stack_noise(noises: Sequence[UpdateNoise]) -> UpdateNoise:
    """S seeds' UpdateNoise -> one with a leading seed axis (None fields stay None)."""
    return UpdateNoise(*(None if field[0] is None else torch.stack(field) for field in zip(*noises)))


class SeedBatch:
    """The learners of `agents` (one TD3SBC per seed, same config and shapes) stacked: parameters[name]
    (S, *shape of the agent's parameter `name`). The agents are templates only: their own parameters
    are not updated (`agent_state` gives seed k's). generators: one torch.Generator per seed on the
    agents' device, for its batch indices and its noise (seeded by the caller)."""

    def __init__(self, agents: List[TD3SBC], generators: List[torch.Generator]):
        if len(agents) != len(generators):
            raise ValueError(f"{len(agents)} agents but {len(generators)} generators: one generator per seed")
        self.template = copy.deepcopy(agents[0])
        self.seeds, self.generators = len(agents), generators
        self.config = self.template.config
        device = self.template.obs_mean.device
        named = [dict(agent.named_parameters()) for agent in agents]
        self.parameters: Dict[str, torch.Tensor] = {
            name: torch.stack([n[name].detach() for n in named]).requires_grad_(p.requires_grad)
            for name, p in named[0].items()}
        self.buffers = {name: b for name, b in self.template.named_buffers()}
        self.learners = {learner: names for learner, prefix in LEARNERS.items()  # the algorithm's learners
                         if (names := [name for name in self.parameters if name.startswith(prefix)])}
        self.optimizers = {"learners": make_adam(  # as TD3SBC.optimizers: one Adam over every learner
            [self.parameters[n] for names in self.learners.values() for n in names], self.config.lr, device)}
        self.num_updates = 0
        self._critic_side = grad(self._loss("critic_side_losses"), has_aux=True)
        self._actor = grad(self._loss("actor_loss"), has_aux=True)

    def _loss(self, method: str):
        """f(trainable, frozen, batch, noise) -> (loss, metrics) of one seed, for grad over `trainable`."""
        call = _Method(self.template, method)

        def loss(trainable, frozen, batch, noise):
            params = {f"agent.{name}": p for name, p in {**trainable, **frozen}.items()}
            buffers = {f"agent.{name}": b for name, b in self.buffers.items()}
            return functional_call(call, {**params, **buffers}, (batch, noise), strict=False, tie_weights=False)

        return loss

    def _split(self, learners: Sequence[str]):
        trainable = {n: self.parameters[n] for learner in learners for n in self.learners[learner]}
        frozen = {n: p.detach() for n, p in self.parameters.items() if n not in trainable}
        return trainable, frozen

    def draw(self, buffer, batch_size: int, actor_step: bool):
        """Each seed's batch (buffer.sample) and UpdateNoise from its own generator, stacked."""
        batches, noises = [], []
        for gen in self.generators:
            b = buffer.sample(batch_size, generator=gen)
            batches.append(b)
            noises.append(self.template.draw_noise(batch_size, b.obs.device, actor_step, generator=gen))
        return stack_batches(batches), stack_noise(noises)

    def step(self, buffer, batch_size: int) -> Dict[str, torch.Tensor]:
        """One update of every seed on its own batch and noise, drawn from its own generator (`draw`)."""
        actor_step = (self.num_updates + 1) % self.config.policy_freq == 0
        return self.update(*self.draw(buffer, batch_size, actor_step))

    def update(self, batch: Batch, noise: UpdateNoise) -> Dict[str, torch.Tensor]:
        """One update of every seed on batch (S, B, ...) and noise (stacked UpdateNoise; with the actor
        fields on every policy_freq-th update): TD3SBC.update per seed, batched. Returns detached (S,)
        metric tensors."""
        self.num_updates += 1
        actor_step = self.num_updates % self.config.policy_freq == 0
        side = [learner for learner in ("critic", "denoiser", "data_denoiser") if learner in self.learners]
        trainable, frozen = self._split(side)
        grads, metrics = self._per_seed(self._critic_side, trainable, frozen, batch, noise)
        self._step(side, grads)
        if actor_step:
            trainable, frozen = self._split(["actor"])
            grads, terms = self._per_seed(self._actor, trainable, frozen, batch, noise)
            self._step(["actor"], grads)
            self.update_targets()
            metrics.update(terms)
        return {k: v.detach() for k, v in metrics.items()}

    @staticmethod
    def _per_seed(fn, trainable, frozen, batch, noise):
        """fn vmapped over the leading seed axis of every argument (noise's None fields: none)."""
        noise_dims = UpdateNoise(*(None if field is None else 0 for field in noise))
        return vmap(fn, in_dims=(0, 0, 0, noise_dims))(trainable, frozen, batch, noise)

    def _step(self, learners: Sequence[str], grads: Dict[str, torch.Tensor]) -> None:
        """One Adam step of `learners` only: the other learners have no gradient, so Adam skips them."""
        with torch.no_grad():
            adam = self.optimizers["learners"]
            adam.zero_grad(set_to_none=True)
            for learner in learners:
                for name in self.learners[learner]:  # vmap's grads may be strided (transposes): the fused
                    self.parameters[name].grad = grads[name].contiguous()  # Adam reads them in the params' layout
            adam.step()

    @torch.no_grad()
    def update_targets(self) -> None:
        """Soft update of every seed's targets by tau in one foreach lerp (TD3SBC.update_targets)."""
        pairs = [(name, source + name[len(target):]) for name in self.parameters
                 for target, source in TARGETS.items() if name.startswith(target)]
        torch._foreach_lerp_([self.parameters[t] for t, _ in pairs], [self.parameters[o] for _, o in pairs],
                             self.config.tau)

    def agent_state(self, seed: int) -> Dict[str, torch.Tensor]:
        """Seed `seed`'s parameters and buffers, keyed as TD3SBC.state_dict() of a single-seed agent."""
        return {**{name: p[seed].detach() for name, p in self.parameters.items()},
                **{name: b for name, b in self.template.state_dict().items() if name not in self.parameters}}
