"""S seeds trained by one batched update: the learners of S TD3SBC agents stored stacked (S, ...), one
fused Adam over every learner stepping all seeds (as TD3SBC's), every seed's losses and gradients computed in one
torch.func.vmap over the seed axis (batched matmuls; the Triton kernels take the seed axis,
kernels/seed_axis.py).

Seed k's update is a function of its parameters, its batch and its noise (TD3SBC.update with injected
UpdateNoise; a pair of updates: TD3SBC.update_pair, its frozen networks' outputs for both updates, one
reverse chain, vmapped over the seeds too), so seed k in a batch of seeds follows the single-seed run of
seed k up to the float
rounding of batched against single matmuls, whichever other seeds share the batch: its agent is built
from its own seed, and its batches and noise come from its own generator (`generators`).

On CUDA (pending a GPU): the generators are torch.Generator(device="cuda"), and a CUDA graph that
captures the draws registers each of them (torch.cuda.CUDAGraph.register_generator_state,
graphs.SeedBatchRunner) so that every replay advances its Philox offset; the fused Adam is capturable
with a tensor lr (make_adam).

Seed k's state in a single-seed layout (agent_state, optimizer_state) is what its checkpoint holds
(fastbdm.checkpoint's format, as a single-seed run writes it); `load` puts S such states back in.
The Triton ops join vmap and torch.func.grad through their seed-axis vmap rules and the
autograd.Functions of fastbdm.ops.
"""
import copy
from typing import Dict, List, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

from .networks import Actor, normalize_states
from .td3sbc import TD3SBC, Batch, FrozenOutputs, UpdateNoise, make_adam
from .update_draws import draw_updates

# Parameter-name prefixes of each learner's online network, in the order of TD3SBC.optimizers' one Adam
# (so that a seed's slice of the Adam state is a single-seed agent's, index for index).
LEARNERS = {"actor": "actor.", "critic": "critic.", "data_denoiser": "data_denoiser.", "denoiser": "bdm.denoiser."}
TARGETS = {"actor_target.": "actor.", "critic_target.": "critic.", "bdm.target_denoiser.": "bdm.denoiser."}


class _Method(nn.Module):
    """agent.<name>(*args) as a module call, so that functional_call can run it on other parameters."""

    def __init__(self, agent: TD3SBC, name: str):
        super().__init__()
        self.agent, self.name = agent, name

    def forward(self, *args):
        return getattr(self.agent, self.name)(*args)


class StackedPolicy(nn.Module):
    """S seeds' deterministic policies on raw observations in one vmapped call: obs (S N, n), seed k's N
    rows together (k-th block) -> actions (S N, m). actor: the seeds' shared architecture (its own
    parameters are not used); parameters: its parameter names -> (S, ...) tensors, read as they are
    (live while training, or a snapshot: SeedBatch.cpu_policy)."""

    def __init__(self, actor: Actor, parameters: Dict[str, torch.Tensor], obs_mean: torch.Tensor,
                 obs_std: torch.Tensor):
        super().__init__()
        self.actor, self.stacked = actor, parameters
        self.register_buffer("obs_mean", obs_mean)
        self.register_buffer("obs_std", obs_std)
        self.seeds = next(iter(parameters.values())).shape[0]

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        rows = normalize_states(obs, self.obs_mean, self.obs_std).reshape(self.seeds, -1, obs.shape[-1])
        act = vmap(lambda params, s: functional_call(self.actor, params, (s,)))
        return act(self.stacked, rows).reshape(obs.shape[0], -1)


def stack_batches(batches: Sequence[Batch]) -> Batch:
    """S batches of B rows -> one Batch of (S, B, ...) tensors."""
    return Batch(*(torch.stack(field) for field in zip(*batches)))


def stack_noise(noises: Sequence[UpdateNoise]) -> UpdateNoise:
    """S seeds' UpdateNoise -> one with a leading seed axis (None fields stay None)."""
    return UpdateNoise(*(None if field[0] is None else torch.stack(field) for field in zip(*noises)))


def seed_dims(args):
    """vmap in_dims for args: 0 for every tensor (its seed axis), None for anything else (None fields, flags)."""
    return tree_map(lambda x: 0 if isinstance(x, torch.Tensor) else None, args)


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
        self._frozen_outputs = self._loss("frozen_outputs")

    def _loss(self, method: str):
        """f(trainable, frozen, *args) -> agent.<method>(*args) of one seed on those parameters (a loss
        and its metrics, for grad over `trainable`)."""
        call = _Method(self.template, method)

        def loss(trainable, frozen, *args):
            params = {f"agent.{name}": p for name, p in {**trainable, **frozen}.items()}
            buffers = {f"agent.{name}": b for name, b in self.buffers.items()}
            return functional_call(call, {**params, **buffers}, args, strict=False, tie_weights=False)

        return loss

    def _split(self, learners: Sequence[str]):
        trainable = {n: self.parameters[n] for learner in learners for n in self.learners[learner]}
        frozen = {n: p.detach() for n, p in self.parameters.items() if n not in trainable}
        return trainable, frozen

    def draw(self, buffer, batch_size: int, actor_step: bool):
        """Each seed's batch (from `buffer`) and UpdateNoise of one update from its own generator
        (fastbdm.update_draws): a Batch of (S, B, ...) column views of the seeds' gathered rows, an
        UpdateNoise of (S, ...) views."""
        (batch,), (noise,) = draw_updates(self.template, buffer, batch_size, [actor_step], self.generators)
        return batch, noise

    def step(self, buffer, batch_size: int) -> Dict[str, torch.Tensor]:
        """One update of every seed on its own batch and noise, drawn from its own generator (`draw`)."""
        actor_step = (self.num_updates + 1) % self.config.policy_freq == 0
        return self.update(*self.draw(buffer, batch_size, actor_step))

    def update(self, batch: Batch, noise: UpdateNoise, outputs: FrozenOutputs = None) -> Dict[str, torch.Tensor]:
        """One update of every seed on batch (S, B, ...) and noise (stacked UpdateNoise; with the actor
        fields on every policy_freq-th update): TD3SBC.update per seed, batched. outputs: the seeds'
        stacked FrozenOutputs of this update (update_pair; evaluated by the losses when None).
        Returns detached (S,) metric tensors."""
        self.num_updates += 1
        actor_step = self.num_updates % self.config.policy_freq == 0
        side = [learner for learner in ("critic", "denoiser", "data_denoiser") if learner in self.learners]
        trainable, frozen = self._split(side)
        grads, metrics = self._per_seed(self._critic_side, trainable, frozen, batch, noise, outputs)
        self._step(side, grads)
        if actor_step:
            trainable, frozen = self._split(["actor"])
            grads, terms = self._per_seed(self._actor, trainable, frozen, batch, noise, outputs)
            self._step(["actor"], grads)
            self.update_targets()
            metrics.update(terms)
        return {k: v.detach() for k, v in metrics.items()}

    def pair_step(self, buffer, batch_size: int) -> List[Dict[str, torch.Tensor]]:
        """One update pair of every seed (update_pair), each seed's two batches and noises drawn at once from
        its own generator (fastbdm.update_draws: as UpdateRunner.pair draws a single seed's)."""
        return self.update_pair(*draw_updates(self.template, buffer, batch_size, [False, True], self.generators))

    def update_pair(self, batches: Sequence[Batch], noises: Sequence[UpdateNoise]) -> List[Dict[str, torch.Tensor]]:
        """TD3SBC.update_pair per seed, batched: the two updates of an actor period (policy_freq 2, from
        an even count) on stacked batches and noises (the second with the actor's draws), the frozen
        networks' outputs of both computed first in one vmapped call (one reverse chain for all seeds
        and both updates). Returns each update's detached (S,) metrics."""
        if self.config.policy_freq != 2 or self.num_updates % 2:
            raise ValueError(f"update_pair needs policy_freq 2 and an even update count (policy_freq "
                             f"{self.config.policy_freq}, {self.num_updates} updates done): call update()")
        def present(trainable, frozen, steps):  # vmap returns tensors only: each FrozenOutputs' present fields
            return [{k: v for k, v in out._asdict().items() if v is not None}
                    for out in self._frozen_outputs(trainable, frozen, steps, True)]

        with torch.no_grad():
            steps = [list(pair) for pair in zip(batches, noises)]
            frozen = [FrozenOutputs(**fields) for fields in self._per_seed(present, {}, self.parameters, steps)]
        # pi(S) without its graph: the actor loss evaluates it again under torch.func.grad
        frozen[-1] = frozen[-1]._replace(sbc_actions=None, sbc_policy=None)
        return [self.update(b, noise, f) for b, noise, f in zip(batches, noises, frozen)]

    @staticmethod
    def _per_seed(fn, *args):
        """fn vmapped over the leading seed axis of every tensor in args (None fields: none)."""
        return vmap(fn, in_dims=seed_dims(args))(*args)

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

    @property
    def obs_mean(self) -> torch.Tensor:
        return self.template.obs_mean

    def _actor_parameters(self) -> Dict[str, torch.Tensor]:
        return {name[len("actor."):]: p.detach() for name, p in self.parameters.items() if name.startswith("actor.")}

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Every seed's deterministic action: raw obs (S N, n), seed k's N rows the k-th block -> (S N, m)."""
        return StackedPolicy(self.template.actor, self._actor_parameters(), self.template.obs_mean,
                             self.template.obs_std)(obs)

    def cpu_policy(self) -> StackedPolicy:
        """`act` as a picklable snapshot on the CPU that later updates do not change (TD3SBC.cpu_policy)."""
        actor = copy.deepcopy(self.template.actor).cpu().requires_grad_(False)
        return StackedPolicy(actor, {n: p.to("cpu", copy=True) for n, p in self._actor_parameters().items()},
                             self.template.obs_mean.to("cpu", copy=True), self.template.obs_std.to("cpu", copy=True))

    def optimizer_state(self, seed: int) -> Dict[str, dict]:
        """Seed `seed`'s Adam states, keyed and laid out as {learner: TD3SBC.optimizers[learner].state_dict()}
        of a single-seed agent (the moments' seed slice; the step count, shared by the seeds, copied)."""
        states = {}
        for learner, opt in self.optimizers.items():
            full = opt.state_dict()
            states[learner] = {"param_groups": copy.deepcopy(full["param_groups"]), "state": {
                i: {k: (v.clone() if k == "step" else v[seed].clone()) for k, v in s.items()}
                for i, s in full["state"].items()}}
        return states

    @torch.no_grad()
    def load(self, agent_states: Sequence[dict], optimizer_states: Sequence[dict]) -> None:
        """Seed k's parameters from agent_states[k] (a single-seed TD3SBC.state_dict(), agent_state's layout)
        and its Adam states from optimizer_states[k] (optimizer_state's); the seeds' step counts must agree."""
        for name, p in self.parameters.items():
            p.copy_(torch.stack([state[name] for state in agent_states]))
        for learner, opt in self.optimizers.items():
            per_seed = [states[learner] for states in optimizer_states]
            opt.load_state_dict({"param_groups": per_seed[0]["param_groups"], "state": {
                i: {k: (v if k == "step" else torch.stack([s["state"][i][k] for s in per_seed])) for k, v in s0.items()}
                for i, s0 in per_seed[0]["state"].items()}})

    def agent_state(self, seed: int) -> Dict[str, torch.Tensor]:
        """Seed `seed`'s parameters and buffers, keyed as TD3SBC.state_dict() of a single-seed agent."""
        return {**{name: p[seed].detach() for name, p in self.parameters.items()},
                **{name: b for name, b in self.template.state_dict().items() if name not in self.parameters}}
