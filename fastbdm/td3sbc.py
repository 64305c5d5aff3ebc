"""TD3-SBC: TD3 with ReBRAC critic/actor behaviour cloning and Bellman-diffusion state-BC
(docs/ALGORITHM.md#one-td3-sbc-update), and its baselines on the same TD3 skeleton: ReBRAC (without the
state-BC term and its learners) and TD3+BC (Q scaled by alpha / mean|Q1|, mean-squared actor BC, no critic BC)."""
import copy
import math
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from . import loss_terms
from .backends import kernel_ops, resolve_backend
from .bdm import BellmanDiffusion, DataDenoising
from .branches import Branches, Fork
from .compat import CompatFlags
from .loss_terms import LossTerm
from .networks import Actor, Denoiser, NormalizedPolicy, TwinCritic, normalize_states
from .nvtx_ranges import phase
from .presets import ALGO_DEFAULTS, ALGOS
from .row_blocks import concat_rows


class Batch(NamedTuple):
    """One minibatch of normalised transitions: obs, next_obs (B, n); actions, next_actions (B, m);
    rewards, dones, valid (B,) float32 (valid = 1 where next_actions really follows next_obs)."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    next_actions: torch.Tensor
    dones: torch.Tensor
    valid: torch.Tensor


class UpdateNoise(NamedTuple):
    """Every random number of one update (TD3SBC.draw_noise), so that an update is a function of its
    batch and its noise. The fields are views of two flat draws, one of normals and one of levels
    (TD3SBC.noise_layout gives their order there). B rows, n = obs dim, m = action dim; None where the algorithm or
    the step has no such draw (bdm, data, sbc: td3sbc only; sbc: actor steps only; the chains: sampler "ddpm" only).

    policy (B, m) N(0, 1): the target action's smoothing noise before scaling and clipping.
    bdm_t (B,), bdm_eps, bdm_z (B, n), bdm_chain (steps, B, n): the BDM TD loss (bdm_z is bdm_eps with
    compat shared_noise). data_t (B,), data_eps (B, n): the data denoiser's loss. sbc_normal (B, n): the
    random SBC states' normals (None with compat standardised_sbc_half); sbc_t (2B,), sbc_eps, sbc_z
    (2B, n), sbc_chain (steps, 2B, n): the state-BC term."""

    policy: torch.Tensor
    bdm_t: Optional[torch.Tensor] = None
    bdm_eps: Optional[torch.Tensor] = None
    bdm_z: Optional[torch.Tensor] = None
    bdm_chain: Optional[torch.Tensor] = None
    data_t: Optional[torch.Tensor] = None
    data_eps: Optional[torch.Tensor] = None
    sbc_normal: Optional[torch.Tensor] = None
    sbc_t: Optional[torch.Tensor] = None
    sbc_eps: Optional[torch.Tensor] = None
    sbc_z: Optional[torch.Tensor] = None
    sbc_chain: Optional[torch.Tensor] = None


class FrozenOutputs(NamedTuple):
    """One update's outputs of the networks that do not move between its pair's start and its own
    steps (pi', Q', D', and pi before the actor's step), computed for all updates of a pair at its start
    (TD3SBC.frozen_outputs). B rows; None where the algorithm or the step has none.

    next_action (B, m): the target action a'. q_target (2, B): Q1', Q2' at (s', a'). samples (B, n): the
    BDM target chain's x0 on (s', a'). sbc_states (2B, n) and sbc_actions (2B, m) = pi(S) with its
    graph (None: the actor loss evaluates pi(S) itself); sbc_samples (2B, n): the SBC chain's x0; sbc_policy:
    on the Triton backend pi(S)'s ops.SavedForward (sbc_actions its output), which actor_gradients goes back
    through."""

    next_action: Optional[torch.Tensor] = None
    q_target: Optional[torch.Tensor] = None
    samples: Optional[torch.Tensor] = None
    sbc_states: Optional[torch.Tensor] = None
    sbc_actions: Optional[torch.Tensor] = None
    sbc_samples: Optional[torch.Tensor] = None
    sbc_policy: Optional[tuple] = None


class TargetSide(NamedTuple):
    """pi' and Q' on the next states of consecutive updates (TD3SBC.target_side): next_obs (U B, n) and
    actions (U B, m) = a' over all of them (the reverse chain reads both); per update its a' (B, m) and
    Q1', Q2' (2, B)."""

    next_obs: torch.Tensor
    actions: torch.Tensor
    next_action: Sequence[torch.Tensor]
    q_target: Sequence[torch.Tensor]


@dataclass
class TD3SBCConfig:
    """Hyper-parameters of docs/ALGORITHM.md#networks and docs/ALGORITHM.md#one-td3-sbc-update; the BC weights
    default to halfcheetah-medium-replay.

    algo: "td3sbc", "rebrac" (w_rel must be 0) or "td3bc" (`for_algo` applies each one's defaults).
    alpha: lambda = alpha / mean|Q1(s, pi(s))| (1 for TD3-SBC and ReBRAC, 2.5 for TD3+BC)."""

    algo: str = "td3sbc"
    gamma: float = 0.99
    tau: float = 0.005
    policy_freq: int = 2
    lr: float = 1e-3
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    w_actor_bc: float = 0.01
    w_critic_bc: float = 0.001
    w_rel: float = 0.1
    steps: int = 10
    prediction: str = "sample"
    sampler: str = "ddim"
    actor_hidden: Tuple[int, ...] = (256, 256, 256)
    critic_hidden: Tuple[int, ...] = (256, 256, 256)
    critic_layer_norm: bool = True
    alpha: float = 1.0
    denoiser_hidden: Tuple[int, ...] = (512, 512)
    backend: str = "auto"
    precision: str = "tf32"  # Triton MLP kernels: tf32, tf32x3, ieee, or bf16 (GPU only)
    compat: CompatFlags = field(default_factory=CompatFlags)

    @classmethod
    def for_algo(cls, algo: str, **fields) -> "TD3SBCConfig":
        """The algorithm's defaults (fastbdm.presets.ALGO_DEFAULTS), then `fields`."""
        if algo not in ALGOS:
            raise ValueError(f"unknown algo {algo!r}: choose one of {', '.join(ALGOS)}")
        return cls(algo=algo, **{**ALGO_DEFAULTS[algo].model, **fields})

    @classmethod
    def from_dict(cls, values: dict) -> "TD3SBCConfig":
        """The inverse of dataclasses.asdict (a run's config.json "config"): lists back to tuples, compat to CompatFlags."""
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**{**values, "compat": CompatFlags(**values.get("compat", {}))})


def make_adam(params, lr: float, device: torch.device) -> torch.optim.Adam:
    """Fused Adam; on a GPU also capturable with a tensor lr, so that it can live in a CUDA graph.
    The fused kernel keeps the step count in a tensor: no host read of it on either device."""
    if torch.device(device).type == "cuda":
        return torch.optim.Adam(params, lr=torch.tensor(lr, device=device), fused=True, capturable=True)
    return torch.optim.Adam(params, lr=lr, fused=True)


def one_adam_state(saved: dict) -> dict:
    """A checkpoint's "optimizers" entry ({name: Adam state dict}) for TD3SBC.optimizers: as it is when
    written with one Adam ("learners"); one Adam per learner (checkpoints before issue 14: actor, critic,
    data_denoiser, denoiser, each one param group) merged into the one Adam's state, in its parameter
    order (the learners in that order), each parameter keeping its moments and step count."""
    if "learners" in saved:
        return saved
    state, params = {}, []
    for name in [n for n in ("actor", "critic", "data_denoiser", "denoiser") if n in saved]:
        ids = saved[name]["param_groups"][0]["params"]
        index = {old: len(params) + i for i, old in enumerate(ids)}
        state.update({index[old]: moments for old, moments in saved[name]["state"].items()})
        params += [index[old] for old in ids]
    return {"learners": {"state": state, "param_groups": [{**saved["actor"]["param_groups"][0], "params": params}]}}


class TD3SBC(nn.Module):
    """All learners of config.algo and one update over them. States are normalised by the caller;
    `obs_mean`/`obs_std` are kept for acting in the environment. Only td3sbc has the SSM denoiser,
    its target and the data denoiser (self.bdm, self.data_denoiser: None for rebrac and td3bc).
    streams: 2 runs the update's independent work on two CUDA streams (fastbdm.branches; the learning is
    the same with 1)."""

    def __init__(self, obs_dim: int, act_dim: int, max_action: float = 1.0,
                 config: TD3SBCConfig = None, device="cpu", streams: int = 1):
        super().__init__()
        self.config = cfg = config or TD3SBCConfig()
        if cfg.algo not in ALGOS:
            raise ValueError(f"unknown algo {cfg.algo!r}: choose one of {', '.join(ALGOS)}")
        if cfg.algo != "td3sbc" and cfg.w_rel != 0:
            raise ValueError(f"w_rel={cfg.w_rel}: {cfg.algo} has no state-BC term; set w_rel=0 "
                             f"(TD3SBCConfig.for_algo({cfg.algo!r}) does)")
        self.act_dim, self.max_action = act_dim, max_action
        # "bf16" is the denoisers' precision: the actor and critics keep fp32 operands (TF32 dots), as
        # torch's own matmuls did for them (backends.TORCH_TF32)
        small = "tf32" if cfg.precision == "bf16" else cfg.precision
        self.actor = Actor(obs_dim, act_dim, max_action, cfg.actor_hidden, cfg.backend, small)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic = TwinCritic(obs_dim, act_dim, cfg.critic_hidden, layer_norm=cfg.critic_layer_norm,
                                 backend=cfg.backend, precision=small)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.bdm = self.data_denoiser = None
        if cfg.algo == "td3sbc":
            self.bdm = BellmanDiffusion(obs_dim, act_dim, cfg.denoiser_hidden, cfg.steps, cfg.prediction,
                                        cfg.gamma, cfg.backend, cfg.sampler, cfg.compat, cfg.precision)
            self.data_denoiser = Denoiser(obs_dim, conditional=False, hidden=cfg.denoiser_hidden)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.to(device)
        learners = [self.actor, self.critic]
        if self.bdm is not None:
            learners += [self.data_denoiser, self.bdm.denoiser]
        # One Adam (one param group) over every learner: a step is one multi-tensor launch set for all
        # of them; the parameters without a gradient (the actor on critic steps, the others on actor
        # steps) are skipped, their moments and step counts left as they are.
        self.optimizers = {"learners": make_adam([p for net in learners for p in net.parameters()], cfg.lr, device)}
        self.num_updates = 0
        self.branches = Branches(streams)

    @property
    def flags(self) -> CompatFlags:
        return self.config.compat

    def noise_layout(self, rows: int, actor_steps: Sequence[bool] = (True,)
                     ) -> Tuple[List[Tuple[int, str, tuple]], List[Tuple[int, str, tuple]]]:
        """Where the UpdateNoise fields of consecutive updates (actor_steps[u]: update u steps the actor), each
        on `rows` rows, lie in their two flat draws: ([(u, field, shape)] of the normals, [(u, field, shape)]
        of the levels), in their order inside the draw. Normals: every update's policy, side by side (one
        (U rows, m) block for pi' over the updates' next states, frozen_outputs); per update bdm_eps, data_eps,
        on actor steps sbc_normal (absent with compat standardised_sbc_half) and sbc_eps; then the reverse
        chain's start noise in the chain's row order, side by side: every update's bdm_z, then on actor steps
        sbc_z (with compat shared_noise bdm_eps and sbc_eps take these places: z is eps); then (ddpm) the
        chains' bdm_chain, sbc_chain. Levels: per update bdm_t, data_t, on actor steps sbc_t."""
        cfg, flags, n = self.config, self.flags, self.obs_mean.shape[0]
        normals, levels = [(u, "policy", (rows, self.act_dim)) for u in range(len(actor_steps))], []
        if self.bdm is None:
            return normals, levels
        chains = []  # (update, term, rows) of every BDM-sampled term, in the chain's row order
        for u, actor_step in enumerate(actor_steps):
            levels += [(u, "bdm_t", (rows,)), (u, "data_t", (rows,))]
            if not flags.shared_noise:
                normals.append((u, "bdm_eps", (rows, n)))
            normals.append((u, "data_eps", (rows, n)))
            chains.append((u, "bdm", rows))
            if actor_step:
                levels.append((u, "sbc_t", (2 * rows,)))
                if not flags.standardised_sbc_half:
                    normals.append((u, "sbc_normal", (rows, n)))
                if not flags.shared_noise:
                    normals.append((u, "sbc_eps", (2 * rows, n)))
                chains.append((u, "sbc", 2 * rows))
        start = "eps" if flags.shared_noise else "z"
        normals += [(u, f"{term}_{start}", (count, n)) for u, term, count in chains]
        if self.bdm.sampler == "ddpm":
            normals += [(u, f"{term}_chain", (cfg.steps, count, n)) for u, term, count in chains]
        return normals, levels

    def noise_sizes(self, rows: int, actor_steps: Sequence[bool] = (True,)) -> Tuple[int, int]:
        """(normals, levels): the lengths of consecutive updates' two flat draws (noise_layout)."""
        return tuple(sum(math.prod(shape) for *_, shape in part) for part in self.noise_layout(rows, actor_steps))

    def noise_views(self, normals: torch.Tensor, levels: torch.Tensor, rows: int, actor_steps: Sequence[bool] = (True,)
                    ) -> List[UpdateNoise]:
        """Each of consecutive updates' UpdateNoise as views of their flat draws (noise_layout): normals
        ([S,] noise_sizes[0]) N(0, 1) float, levels ([S,] noise_sizes[1]) int64 in [0, steps); every field
        keeps the leading dims."""
        fields = [{} for _ in actor_steps]
        for flat, part in zip((normals, levels), self.noise_layout(rows, actor_steps)):
            views = flat.split([math.prod(shape) for *_, shape in part], -1)
            for (u, name, shape), view in zip(part, views):
                fields[u][name] = view.unflatten(-1, shape)
        if self.bdm is not None and self.flags.shared_noise:
            for update in fields:
                update.update({f"{term}_z": update[f"{term}_eps"] for term in ("bdm", "sbc") if f"{term}_eps" in update})
        return [UpdateNoise(**update) for update in fields]

    def draw_noise(self, rows: int, device, actor_step: bool = True, generator=None) -> UpdateNoise:
        """The random numbers of one update on `rows` rows, drawn from `generator` (default: torch's global
        one): all its normals in one torch.randn, then all its levels in one torch.randint, the fields views
        of them (noise_views). A generator on a CUDA device must be registered with a CUDA graph that
        captures the draws (torch.cuda.CUDAGraph.register_generator_state)."""
        normals, levels = self.noise_sizes(rows, [actor_step])
        normal = torch.randn(normals, device=device, generator=generator)
        level = torch.randint(0, self.config.steps, (levels,), device=device, generator=generator) if levels else \
            torch.empty(0, dtype=torch.int64, device=device)
        return self.noise_views(normal, level, rows, [actor_step])[0]

    def target_action(self, next_obs: torch.Tensor, normal: torch.Tensor = None) -> torch.Tensor:
        """a' = clamp(pi'(s') + clamp(policy_noise N, -noise_clip, noise_clip), -max, max); normal (B, m) is
        N (UpdateNoise.policy; drawn when None)."""
        cfg = self.config
        if normal is None:  # the policy draw alone (draw_noise's first), not the BDM draws behind it
            normal = torch.randn(next_obs.shape[0], self.act_dim, device=next_obs.device)
        return self._backend_ops(next_obs).smoothed_action(self.actor_target(next_obs), normal, cfg.policy_noise,
                                                           cfg.noise_clip, self.max_action)

    def target_values(self, next_obs: torch.Tensor, normal: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(a' = target_action(next_obs, normal) (B, m), Q1', Q2'(s', a') (2, B)), no graph: on the Triton
        backend one launch (ops.target_values), else target_action and the target critics."""
        if resolve_backend(self.critic_target.backend, next_obs.device) != "triton":
            with torch.no_grad():
                action = self.target_action(next_obs, normal)
                return action, self.critic_target(next_obs, action)
        cfg, critic = self.config, self.critic_target
        return kernel_ops("triton", critic.precision).target_values(
            next_obs, normal, self.actor_target.weights(), critic.weights(), critic.layer_norm, critic.members,
            self.max_action, cfg.policy_noise, cfg.noise_clip)

    def critic_loss(self, b: Batch, next_action: torch.Tensor, q_target: torch.Tensor = None
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """ReBRAC critic loss summed over the two critics (docs/ALGORITHM.md#critic-loss), and the mean of
        Q(s, a) over both critics and the rows: critic_loss_term's loss and q mean."""
        term, q_mean = self.critic_loss_term(b, next_action, q_target)
        return term.loss, q_mean

    def critic_loss_term(self, b: Batch, next_action: torch.Tensor, q_target: torch.Tensor = None
                         ) -> Tuple[LossTerm, torch.Tensor]:
        """The critic loss as a LossTerm (with d loss / d Q(s, a) from the Triton backend) and the mean of
        Q(s, a) (detached). q_target (2, B): the target critics at (s', a') (evaluated here when None)."""
        cfg = self.config
        if q_target is None:
            with torch.no_grad():
                q_target = self.critic_target(b.next_obs, next_action)
        q = self.critic(b.obs, b.actions)
        return self._backend_ops(q).critic_td_loss(q, q_target, next_action, b.next_actions, b.rewards, b.dones,
                                                   b.valid, cfg.gamma, cfg.w_critic_bc,
                                                   self.flags.broadcast_critic_penalty)

    def _backend_ops(self, like: torch.Tensor):
        """The kernel functions of config.backend on like's device (fastbdm.reference or fastbdm.ops) for
        the update's glue (target action, losses): no matmuls, so at any precision."""
        return kernel_ops(resolve_backend(self.config.backend, like.device))

    def data_denoiser_loss(self, b: Batch, noise: UpdateNoise = None) -> torch.Tensor:
        """E learns the dataset's state marginal: data_denoiser_term's loss."""
        return self.data_denoiser_term(b, noise).loss

    def data_denoiser_term(self, b: Batch, noise: UpdateNoise = None) -> LossTerm:
        """The data denoiser's loss, mean over rows and dims of (E(q(s,t,eps),t) - target)^2, as a LossTerm
        (with d loss / d E's output from the Triton backend); t, eps from noise (drawn when None). On its own:
        critic_side_terms runs it in the BDM TD loss's launches (BellmanDiffusion.td_loss_terms)."""
        sch, ops = self.bdm.schedule, self.bdm.ops(b.obs)
        if noise is None:
            noise = self.draw_noise(b.obs.shape[0], b.obs.device, actor_step=False)
        data = self.data_denoising(b, noise)
        rows = ops.noised_rows(data.noised, data.eps, data.t, None, None, sch)
        out = ops.denoiser_forward(rows, data.net.weights())
        return ops.denoising_loss(out, data.x0, data.eps, data.t, sch, self.config.prediction)

    def data_denoising(self, b: Batch, noise: UpdateNoise) -> DataDenoising:
        """The data denoiser's loss inputs: E learns the dataset's states s with its own t, eps (noise.data_t,
        data_eps); compat mismatched_data_denoiser noises s' instead, the target still of s."""
        noised = b.next_obs if self.flags.mismatched_data_denoiser else b.obs
        return DataDenoising(self.data_denoiser, noised, b.obs, noise.data_t, noise.data_eps)

    def sbc_states(self, s: torch.Tensor, normal: torch.Tensor = None) -> torch.Tensor:
        """S = [s; s_rand] (2B, n): s_rand = batch mean + batch std * normal per dim, normal (B, n)
        (UpdateNoise.sbc_normal; drawn when None; compat: s standardised, no normal)."""
        if self.flags.standardised_sbc_half:
            normal = None
        elif normal is None:
            normal = torch.randn_like(s)
        return self.actor_ops(s).sbc_states(s, normal)

    def actor_ops(self, like: torch.Tensor):
        """The kernel functions of the actor's backend for tensors on like.device (fastbdm.reference, or
        fastbdm.ops at the actor's precision, as Actor's): the actor loss's sbc_states and actor_terms."""
        if resolve_backend(self.actor.backend, like.device) == "triton":
            return kernel_ops("triton", self.actor.precision)
        return kernel_ops("torch")

    def actor_loss(self, b: Batch, noise: UpdateNoise = None, frozen: FrozenOutputs = None
                   ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """-lambda Q1(s, pi(s)) + actor BC (+ state-BC for td3sbc), lambda = alpha / mean|Q1| (detached).
        Actor BC: w_a mean_rows ||pi(s) - a||^2, for td3bc w_a mean over all elements of (pi(s) - a)^2.
        noise: an actor step's UpdateNoise (drawn when None); frozen: this update's FrozenOutputs (the SBC
        states, pi(S) and chain samples; computed here when None). Returns the loss and its terms (bc and
        lambda: values without a graph; sbc with its graph): the function torch.func.grad differentiates
        (fastbdm.seed_batch); actor_gradients gives its gradients with fewer launches."""
        cfg = self.config
        S, A, q1, noise, frozen = self._actor_outputs(b, noise, frozen)
        loss, bc, lam = self.actor_ops(A).actor_terms(A, b.actions, q1, cfg.alpha, cfg.w_actor_bc,
                                                      mean_squared=cfg.algo == "td3bc")
        terms = {"bc": bc, "lambda": lam}
        if self.bdm is not None:
            terms["sbc"] = self.state_bc_term(S, A, noise, frozen.sbc_samples).loss
            loss = loss + terms["sbc"]
        return loss, {"actor_loss": loss, **terms}

    def actor_gradients(self, b: Batch, noise: UpdateNoise = None, frozen: FrozenOutputs = None
                        ) -> Tuple[List[torch.Tensor], Dict[str, torch.Tensor]]:
        """d actor_loss / d the actor's parameters (in their order) and actor_loss's terms, detached. With the
        Triton kernels, backward starts at the networks' outputs with the kernels' own gradients (no seed,
        scaling or loss-sum launch): D''s backward takes the SBC term's gradient to pi(S), which
        actor_terms adds into its own; then ops.policy_value_grads goes back from Q1 and pi(S) through the
        critic to pi(S) and on through the actor in one launch, and writes the actor's weight gradients in
        a second (no autograd over the actor and the critic)."""
        params = list(self.actor.parameters())
        if resolve_backend(self.actor.backend, b.obs.device) != "triton":
            loss, terms = self.actor_loss(b, noise, frozen)
            return list(torch.autograd.grad(loss, params)), {k: v.detach() for k, v in terms.items()}
        cfg, ops = self.config, self.actor_ops(b.obs)
        S, noise, frozen = self._actor_states(b, noise, frozen)
        policy = None if frozen is None else frozen.sbc_policy
        if policy is None:
            with torch.no_grad():
                policy = self.actor.saved_forward(S)
        A = policy.out.squeeze(-3).detach()
        fork = self.branches.fork(S, [S, A], parallel=self.bdm is not None)  # Q1 beside the SBC term
        with fork.side():
            critic = self.critic.saved_forward(S, A, members=1, frozen=True)  # Q1 with its activations, no graph
        sbc = None
        if self.bdm is not None:
            A.requires_grad_()
            sbc = self.state_bc_term(S, A, noise, frozen.sbc_samples)
            # d sbc / d pi(S): D''s rows' action columns, a view that actor_terms reads in place
            sbc = sbc._replace(grad=torch.autograd.grad(sbc.output, A, sbc.grad)[0])
        critic = fork.join(critic)
        q1 = critic.out[..., 0, :, 0]
        loss, bc, lam, grad_a, grad_q = ops.actor_terms_grads(A, b.actions, q1, cfg.alpha, cfg.w_actor_bc,
                                                              cfg.algo == "td3bc", sbc)
        grads = ops.policy_value_grads(grad_q, grad_a, S, self.actor.weights(), policy, self.critic.weights(), critic,
                                       self.critic.layer_norm, self.max_action)
        terms = {"actor_loss": loss, "bc": bc, "lambda": lam}
        if sbc is not None:
            terms["sbc"] = sbc.loss.detach()
        return list(grads), terms

    def _actor_states(self, b: Batch, noise: UpdateNoise, frozen: FrozenOutputs):
        """(S, noise, frozen): the actor loss's states S, the batch's (rebrac, td3bc) or the SBC states (td3sbc:
        [s; s_rand], from frozen; noise and frozen computed when None)."""
        if self.bdm is None:
            return b.obs, noise, frozen
        if noise is None:
            noise = self.draw_noise(b.obs.shape[0], b.obs.device)
        if frozen is None:
            frozen = self.frozen_outputs([(b, noise)], actor_last=True, targets=False)[0]
        return frozen.sbc_states, noise, frozen

    def _actor_outputs(self, b: Batch, noise: UpdateNoise, frozen: FrozenOutputs):
        """The actor loss's networks' outputs: (S, A = pi(S), Q1(S, A) (R,), noise, frozen), S as _actor_states'
        (pi(S) from frozen when there)."""
        S, noise, frozen = self._actor_states(b, noise, frozen)
        A = self.actor(S) if frozen is None or frozen.sbc_actions is None else frozen.sbc_actions
        # Q1 on every row of (S, pi(S)), of which the terms read the batch's (the first B): the gradients
        # reach A without a slice's zero fill and copy. The critic's weights as constants: no weight
        # gradients. squeeze, not [0]: no select_backward.
        q1 = self.critic(S, A, members=1, frozen=True).squeeze(-2)
        return S, A, q1, noise, frozen

    def state_bc_term(self, S: torch.Tensor, A: torch.Tensor, noise: UpdateNoise,
                      samples: torch.Tensor = None) -> LossTerm:
        """sbc = w_rel w_a mean_rows(eta_t ||E(x_t, t) - D'(x_t, S, A, t)||^2) on S (2B, n), A = pi(S) (2B, m),
        t, eps, z and the chain noise from an actor step's noise, as a LossTerm (with d sbc / d D''s output
        from the Triton backend); the gradient reaches the actor only through the target denoiser's action
        input. samples (2B, n): the chain's x0 on (S, A) when the caller ran it (TD3SBC.frozen_outputs);
        else sampled here."""
        cfg, bdm, sch = self.config, self.bdm, self.bdm.schedule
        ops = bdm.ops(S)
        t = noise.sbc_t
        x0 = bdm.sample(S, A.detach(), noise.sbc_z, noise=noise.sbc_chain) if samples is None else samples
        e_rows, d_rows = ops.sbc_rows(x0, noise.sbc_eps, t, S, A, sch)  # one q(x0, t, eps) for both
        # E without a graph (its rows and weights detached) and D' with the graph to its rows, in one launch
        e_weights = [w.detach() for w in self.data_denoiser.weights()]
        e_out, d_out = ops.denoiser_forwards([e_rows.detach(), d_rows], [e_weights, bdm.target_denoiser.weights()])
        # compat broadcast_sbc_weights: the level weighting lost (reference.sbc_loss)
        return ops.sbc_loss_term(e_out, d_out, t, sch, cfg.w_rel * cfg.w_actor_bc, self.flags.broadcast_sbc_weights)

    def critic_side_losses(self, b: Batch, noise: UpdateNoise, frozen: FrozenOutputs = None
                           ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The losses of critic_side_terms summed (each reaches its own learner only), and their metrics:
        the function torch.func.grad differentiates (fastbdm.seed_batch)."""
        terms, metrics = self.critic_side_terms(b, noise, frozen)
        return sum((t.loss for t in terms[1:]), terms[0].loss), metrics

    def critic_side_terms(self, b: Batch, noise: UpdateNoise, frozen: FrozenOutputs = None
                          ) -> Tuple[List[LossTerm], Dict[str, torch.Tensor]]:
        """The losses of the learners stepped on every update (critics; for td3sbc D and E too) as
        LossTerms (loss_terms.backward steps back from them without summing), and their detached metrics:
        critic_term's and bdm_terms'. frozen: this update's FrozenOutputs (a', Q'(s', a') and the BDM chain's
        samples; computed here when None)."""
        if frozen is None:
            frozen = self.frozen_outputs([(b, noise)], actor_last=False)[0]
        critic, metrics = self.critic_term(b, frozen)
        terms, bdm_metrics = self.bdm_terms(b, noise, frozen)
        return [critic, *terms], {**metrics, **bdm_metrics}

    def critic_term(self, b: Batch, frozen: FrozenOutputs) -> Tuple[LossTerm, Dict[str, torch.Tensor]]:
        """The critic loss as a LossTerm on frozen's a' and Q'(s', a'), and its metrics (critic_loss, q_mean)."""
        with phase("critic"):
            critic, q_mean = self.critic_loss_term(b, frozen.next_action, frozen.q_target)
        return critic, {"critic_loss": critic.loss.detach(), "q_mean": q_mean}

    def bdm_terms(self, b: Batch, noise: UpdateNoise, frozen: FrozenOutputs
                  ) -> Tuple[List[LossTerm], Dict[str, torch.Tensor]]:
        """td3sbc: the BDM TD loss of D and the data denoiser's loss (one row launch and one loss launch) as
        LossTerms, and their metrics (bdm_loss, data_loss); none for the baselines."""
        if self.bdm is None:
            return [], {}
        with phase("bdm"):  # and the data denoiser's loss, in the same row and loss launches
            bdm, data = self.bdm.td_loss_terms(b.obs, b.actions, b.next_obs, frozen.next_action, b.dones,
                                               noise.bdm_t, noise.bdm_eps, noise.bdm_z, noise.bdm_chain,
                                               frozen.samples, self.data_denoising(b, noise))
        return [bdm, data], {"bdm_loss": bdm.loss.detach(), "data_loss": data.loss.detach()}

    def target_side(self, steps: Sequence[Tuple[Batch, UpdateNoise]]) -> TargetSide:
        """pi' and Q' once over the next states of consecutive updates `steps` (batch, noise), no graph."""
        rows = [b.next_obs.shape[-2] for b, _ in steps]
        with torch.no_grad(), phase("critic"):
            next_obs = concat_rows([b.next_obs for b, _ in steps])
            actions, q = self.target_values(next_obs, concat_rows([n.policy for _, n in steps]))
        return TargetSide(next_obs, actions, actions.split(rows, -2), q.split(rows, -1))

    def frozen_outputs(self, steps: Sequence[Tuple[Batch, UpdateNoise]], actor_last: bool,
                       targets=True) -> List[FrozenOutputs]:
        """FrozenOutputs of consecutive updates `steps` (batch, noise), of which only the last steps the
        actor (when actor_last), evaluated together before any of them: pi' and Q' once over all their
        next states (target_side), and one reverse chain of D' over the BDM target rows of every update and
        the SBC rows of the last (ordered [update 1's B; ...; SBC's 2B], each with its own z and chain noise).
        Valid because pi', Q', D' move only at the actor step's end and pi only at its step.
        targets: True (evaluated here), the steps' TargetSide when the caller evaluated it, or False (the SBC
        part only: next_action and q_target None)."""
        target = self.target_side(steps) if targets is True else (targets or None)
        # the chain's s and a in row segments (the targets', the SBC's: read where they are, not concatenated);
        # its start noise z and DDPM noise per part (each update's target rows, the SBC rows), sizes their rows
        chain_s, chain_a, chain_z, chain_noise, sizes = [], [], [], [], []
        next_action = q_target = [None] * len(steps)
        if target is not None:
            next_action, q_target = target.next_action, target.q_target
            if self.bdm is not None:
                chain_s.append(target.next_obs)
                chain_a.append(target.actions)
                chain_z += [n.bdm_z for _, n in steps]
                chain_noise += [n.bdm_chain for _, n in steps]
                sizes += [b.next_obs.shape[-2] for b, _ in steps]
        S = A = policy = None
        if actor_last and self.bdm is not None:
            b, noise = steps[-1]
            with phase("actor"):
                S = self.sbc_states(b.obs, noise.sbc_normal)
                policy = self.actor.saved_forward(S)  # Triton: with the activations actor_gradients reads
                A = self.actor(S) if policy is None else policy.out.squeeze(-3)
            chain_s.append(S)
            chain_a.append(A.detach())
            chain_z.append(noise.sbc_z)
            chain_noise.append(noise.sbc_chain)
            sizes.append(S.shape[-2])
        samples, sbc_samples = [None] * len(steps), None
        if chain_s:
            with phase("chain"):  # z (and the DDPM noise) one view of the pair's draws: noise_layout
                noise = None if chain_noise[0] is None else concat_rows(chain_noise)
                x0 = self.bdm.sample(chain_s, chain_a, concat_rows(chain_z), noise=noise)
                parts = list(x0.split(sizes, -2))
                if S is not None:
                    sbc_samples = parts.pop()
                if target is not None:
                    samples = parts
        outputs = [FrozenOutputs(a, q, x) for a, q, x in zip(next_action, q_target, samples)]
        if S is not None:
            outputs[-1] = outputs[-1]._replace(sbc_states=S, sbc_actions=A, sbc_samples=sbc_samples, sbc_policy=policy)
        return outputs

    def update(self, b: Batch, noise: UpdateNoise = None) -> Dict[str, torch.Tensor]:
        """One update of config.algo; the actor and the targets move on every policy_freq-th call.
        noise: this update's random numbers (drawn from torch's global generator when None).
        Returns detached scalar metric tensors (no host synchronisation); the terms an algorithm does
        not have (bdm_loss, data_loss, sbc) are absent."""
        if noise is None:
            actor_step = (self.num_updates + 1) % self.config.policy_freq == 0
            noise = self.draw_noise(b.obs.shape[0], b.obs.device, actor_step)
        return self._updates([(b, noise)])[0]

    def update_pair(self, batches: Sequence[Batch], noises: Sequence[UpdateNoise]) -> List[Dict[str, torch.Tensor]]:
        """The two updates of one actor period (policy_freq 2, starting after an even number of updates):
        the critic-side update on batches[0], noises[0], then the critic-side and actor update on
        batches[1], noises[1] (UpdateNoise with the actor's draws), learning as two `update` calls (up
        to the float rounding of merged matmuls), with the frozen networks evaluated once for both
        (frozen_outputs: one reverse chain of T levels instead of three). Returns each update's metrics."""
        if self.config.policy_freq != 2 or self.num_updates % 2:
            raise ValueError(f"update_pair needs policy_freq 2 and an even update count (policy_freq "
                             f"{self.config.policy_freq}, {self.num_updates} updates done): call update()")
        return self._updates(list(zip(batches, noises)))

    def _updates(self, steps: Sequence[Tuple[Batch, UpdateNoise]]) -> List[Dict[str, torch.Tensor]]:
        """Consecutive updates on (batch, noise) of which only the last may step the actor. With two streams
        (self.branches) each update's critic forward, loss and backward run beside its BDM work, the first
        update's beside the pair's SBC states, pi(S) and reverse chain too; the host issues the same work in
        the same order with one."""
        freq, opt = self.config.policy_freq, self.optimizers["learners"]
        actor_steps = [(self.num_updates + k + 1) % freq == 0 for k in range(len(steps))]
        assert not any(actor_steps[:-1]), "the actor moves only at the last of the updates"
        opt.zero_grad(set_to_none=True)
        target = self.target_side(steps)
        first = FrozenOutputs(target.next_action[0], target.q_target[0])
        critic = self._critic_branch(steps[0][0], first)  # needs only the target side, not the chain
        frozen = self.frozen_outputs(steps, actor_last=actor_steps[-1], targets=target)
        all_metrics = []
        for k, ((b, noise), outputs, actor_step) in enumerate(zip(steps, frozen, actor_steps)):
            self.num_updates += 1
            if k:
                opt.zero_grad(set_to_none=True)  # the last step's gradients are spent
                critic = self._critic_branch(b, outputs)
            terms, bdm_metrics = self.bdm_terms(b, noise, outputs)
            if terms:
                with phase("backward"):
                    loss_terms.backward(terms)  # no gradient reaches the actor: Adam steps the critic side only
            fork, metrics = critic
            fork.join([metrics, [p.grad for p in self.critic.parameters()]])
            metrics.update(bdm_metrics)
            with phase("optimizers"):
                opt.step()
            if actor_step:
                with phase("actor"):
                    grads, terms = self.actor_gradients(b, noise, outputs)
                    opt.zero_grad(set_to_none=True)  # the critic side's gradients are spent
                    for p, g in zip(self.actor.parameters(), grads):
                        p.grad = g
                with phase("optimizers"):
                    opt.step()
                with phase("targets"):
                    self.update_targets()
                metrics.update(terms)
            all_metrics.append(metrics)
        return all_metrics

    def _critic_branch(self, b: Batch, frozen: FrozenOutputs) -> Tuple[Fork, Dict[str, torch.Tensor]]:
        """The critic's loss on frozen's a' and Q' and its backward (the critic's .grad), forked onto the side
        stream where the update has other work to run beside it (td3sbc); (the fork to join, the metrics)."""
        fork = self.branches.fork(b.obs, [b, frozen.next_action, frozen.q_target], parallel=self.bdm is not None)
        with fork.side():
            term, metrics = self.critic_term(b, frozen)
            with phase("backward"):
                loss_terms.backward([term])
        return fork, metrics

    @torch.no_grad()
    def update_targets(self) -> None:
        """Soft update of pi', Q1', Q2' (and D' for td3sbc) by tau in one foreach lerp."""
        pairs = [(self.actor_target, self.actor), (self.critic_target, self.critic)]
        if self.bdm is not None:
            pairs.append((self.bdm.target_denoiser, self.bdm.denoiser))
        targets = [p for t, _ in pairs for p in t.parameters()]
        online = [p for _, o in pairs for p in o.parameters()]
        torch._foreach_lerp_(targets, online, self.config.tau)

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic action for raw (unnormalised) observations (N, n) -> (N, m)."""
        return self.actor(normalize_states(obs, self.obs_mean, self.obs_std))

    def cpu_policy(self) -> NormalizedPolicy:
        """`act` as a snapshot on the CPU that later updates do not change (a copy of the actor: on a GPU,
        one host sync); picklable, so it can be evaluated in another process."""
        actor = copy.deepcopy(self.actor).cpu().requires_grad_(False)
        actor.backend = "torch"  # the module's own torch code on the CPU, whatever the training backend
        return NormalizedPolicy(actor, self.obs_mean.to("cpu", copy=True), self.obs_std.to("cpu", copy=True))
