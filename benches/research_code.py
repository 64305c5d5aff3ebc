"""Re-creation of the research code's update structure (docs/ALGORITHM.md#departures-of-the-research-code; ReBRACSOMPolicy.learn of the
authors' OfflineRL-Kit fork and that kit's ReplayBuffer.sample): the "research" benchmark variant.

What it keeps, on purpose, because it is what the fused path removes:
- separate networks called separately: actor, critic1, critic2 (fastbdm TwinCritic with one member
  each), the SSM denoiser and the data denoiser, each with its own Adam and its own backward;
  the two online denoiser calls on x1 and x2 rows are two calls, not one batched 2B call;
- numpy batch sampling (fancy indexing, torch.tensor, .to(device)) for every key, every update;
- the sampler as a Python loop of 9 network calls on (T-1..1) with the scheduler coefficients as
  0-d tensors, the level column built on the host and copied, and the DDPM noise drawn and scaled
  then discarded at every level; under the actor step it runs with autograd on (mixed actions and
  the target network's parameters require grad) and its graph is dropped by .detach();
- host synchronisations: .item() on the two critic losses every update, on three actor-step losses
  and timesteps.cpu() for the SBC weights on actor steps;
- the actor loss back-propagates into critic1, the target denoiser and the data denoiser too;
- target updates one parameter at a time (o.copy_(o * (1 - tau) + n * tau)), including the data
  denoiser's unused target copy.
Its numerics are the research code's as docs/ALGORITHM.md#departures-of-the-research-code describes them (items 1-7). Networks are fastbdm's (same layers, same
initialisation), so FLOPs per call match the other variants.
"""
import copy

import numpy as np
import torch

from fastbdm.networks import Actor, Denoiser, TwinCritic
from fastbdm.schedule import DiffusionSchedule
from fastbdm.td3sbc import TD3SBCConfig

BATCH_KEYS = ("observations", "actions", "next_observations", "next_actions", "rewards", "terminals",
              "valid_next_actions")


class NumpyReplayBuffer:
    """Transitions in host numpy arrays; sample() copies a random batch to the device per key.
    rewards and terminals are (N, 1) as in OfflineRL-Kit; valid_next_actions is (N,)."""

    def __init__(self, arrays: dict, device):
        self.arrays = {k: np.ascontiguousarray(arrays[k], dtype=np.float32) for k in BATCH_KEYS}
        self.size = len(self.arrays["observations"])
        self.device = torch.device(device)

    def sample(self, batch_size: int) -> dict:
        idx = np.random.randint(0, self.size, size=batch_size)
        return {k: torch.tensor(v[idx]).to(self.device) for k, v in self.arrays.items()}


class ResearchCode:
    """The research code's learners and learn(batch) -> dict of Python floats."""

    def __init__(self, obs_dim: int, act_dim: int, config: TD3SBCConfig = None, device="cpu",
                 max_action: float = 1.0):
        cfg = self.config = config or TD3SBCConfig()
        dev = self.device = torch.device(device)
        self.max_action = max_action
        self.actor = Actor(obs_dim, act_dim, max_action, cfg.actor_hidden).to(dev)
        self.critic1 = TwinCritic(obs_dim, act_dim, cfg.critic_hidden, members=1).to(dev)
        self.critic2 = TwinCritic(obs_dim, act_dim, cfg.critic_hidden, members=1).to(dev)
        self.diffusion_model = Denoiser(obs_dim, act_dim, True, cfg.denoiser_hidden).to(dev)
        self.data_diffusion_model = Denoiser(obs_dim, 0, False, cfg.denoiser_hidden).to(dev)
        # deepcopy without requires_grad_(False), as in the research code
        self.actor_old, self.critic1_old, self.critic2_old, self.diffusion_model_old, self.data_diffusion_model_old = (
            copy.deepcopy(m) for m in (self.actor, self.critic1, self.critic2, self.diffusion_model,
                                       self.data_diffusion_model))
        self.optims = {name: torch.optim.Adam(getattr(self, name).parameters(), lr=cfg.lr)
                       for name in ("actor", "critic1", "critic2", "diffusion_model", "data_diffusion_model")}
        self.steps = cfg.steps
        sch = DiffusionSchedule(cfg.steps)  # host-side scheduler tensors, like diffusers'
        self.betas, self.alphas, self.posterior_std = sch.betas, sch.alphas, sch.posterior_std
        self.alphas_cumprod = sch.alphas_cumprod.to(dev)  # add_noise moves it to the device
        self.one = torch.tensor(1.0)
        self.cnt = 0
        self.last_actor = {"loss/actor": 0.0, "loss/bc": 0.0, "loss/state_bc": 0.0}

    def map_i(self, t):
        return -1 + 2 * t / self.steps

    def critic(self, net, obs, actions):
        """(B, 1) values of a one-member TwinCritic."""
        return net(obs, actions).view(-1, 1)

    def add_noise(self, x0, noise, timesteps):
        ab = self.alphas_cumprod[timesteps.to(x0.device)].flatten().unsqueeze(-1)
        return ab**0.5 * x0 + (1 - ab) ** 0.5 * noise

    def diff_step(self, model_output, timestep: int, sample):
        """DDPM posterior mean at level timestep (0-d scheduler tensors); noise drawn and dropped."""
        ab_t = self.alphas_cumprod[timestep]
        ab_prev = self.alphas_cumprod[timestep - 1] if timestep > 0 else self.one
        coef_x0 = ab_prev**0.5 * self.betas[timestep] / (1 - ab_t)
        coef_xt = self.alphas[timestep] ** 0.5 * (1 - ab_prev) / (1 - ab_t)
        prev = coef_x0 * model_output + coef_xt * sample
        if timestep > 0:
            _ = self.posterior_std[timestep] * torch.randn(model_output.shape, device=model_output.device)
        return prev

    def predict(self, model, noise, obs, a):
        x = noise
        ones = torch.ones((obs.shape[0], 1))  # host tensor, copied at every level
        for i in range(self.steps - 1, 0, -1):
            out = model(x, self.map_i(ones * i).to(obs.device), obs, a)
            x = self.diff_step(out, i - 1, x)
        return x

    def get_eta(self, timesteps):
        t = timesteps.cpu()
        alpha, alpha_prod = self.alphas[t].to(timesteps.device), self.alphas_cumprod[t].to(timesteps.device)
        eta = (1 - alpha) ** 2 * alpha * (1 - alpha_prod)
        return eta / eta.mean()

    def update_diffusion(self, batch, next_actions):
        obss, actions, next_obss = batch["observations"], batch["actions"], batch["next_observations"]
        with torch.no_grad():
            diff_steps = torch.randint(0, self.steps, (obss.shape[0], 1)).long().to(obss.device)
            noise = torch.randn(obss.shape, device=obss.device)
            noised_obss = self.add_noise(next_obss, noise, diff_steps)
            next_diff_obss = self.predict(self.diffusion_model_old, noise, next_obss, next_actions).detach()
            noised_obss = self.add_noise(next_obss, noise, diff_steps)
            next_noised_obss = self.add_noise(next_diff_obss, noise, diff_steps)
            next_target = self.diffusion_model_old(next_noised_obss, self.map_i(diff_steps), next_obss,
                                                   next_actions).detach()
        current = self.diffusion_model(noised_obss, self.map_i(diff_steps), obss, actions)
        nxt = self.diffusion_model(next_noised_obss, self.map_i(diff_steps), obss, actions)
        gamma = self.config.gamma
        loss = ((1 - gamma) * (current - next_obss) ** 2 + gamma * (nxt - next_target) ** 2).mean()
        loss = torch.stack([loss]).mean()
        self.optims["diffusion_model"].zero_grad()
        loss.backward()
        self.optims["diffusion_model"].step()

        data_prediction = self.data_diffusion_model(noised_obss, self.map_i(diff_steps))
        data_loss = ((data_prediction - obss) ** 2).mean()
        self.optims["data_diffusion_model"].zero_grad()
        data_loss.backward()
        self.optims["data_diffusion_model"].step()
        return next_diff_obss, loss

    def state_bc(self, obss, a):
        cfg = self.config
        diff_steps = torch.randint(0, self.steps, (obss.shape[0], 1)).long().to(obss.device)
        eta = self.get_eta(diff_steps)
        noise = torch.randn(obss.shape, device=obss.device)
        pred_obss = self.predict(self.diffusion_model_old, noise, obss, a).detach()
        noised = self.add_noise(pred_obss, noise, diff_steps)
        obs_prediction = self.diffusion_model_old(noised, self.map_i(diff_steps), obss, a)
        data_prediction = self.data_diffusion_model(noised, self.map_i(diff_steps))
        # (2B, 1) weights times (2B,) errors: a (2B, 2B) product, as in the research code (compat item 7)
        return cfg.w_rel * cfg.w_actor_bc * (eta * ((data_prediction - obs_prediction) ** 2).sum(-1)).mean()

    def rand_like(self, x):
        _ = torch.rand(x.shape, device=x.device)
        return (x - x.mean(0)) / x.std(0)

    @torch.no_grad()
    def sync_weight(self):
        tau = self.config.tau
        for old, new in ((self.actor_old, self.actor), (self.critic1_old, self.critic1),
                         (self.critic2_old, self.critic2), (self.data_diffusion_model_old, self.data_diffusion_model),
                         (self.diffusion_model_old, self.diffusion_model)):
            for o, n in zip(old.parameters(), new.parameters()):
                o.data.copy_(o.data * (1.0 - tau) + n.data * tau)

    def learn(self, batch: dict) -> dict:
        cfg = self.config
        obss, actions, next_obss = batch["observations"], batch["actions"], batch["next_observations"]
        rewards, terminals = batch["rewards"], batch["terminals"]
        with torch.no_grad():
            noise = (torch.randn_like(actions) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            next_actions = (self.actor_old(next_obss) + noise).clamp(-self.max_action, self.max_action)
        q1, q2 = self.critic(self.critic1, obss, actions), self.critic(self.critic2, obss, actions)
        with torch.no_grad():
            next_q = torch.min(self.critic(self.critic1_old, next_obss, next_actions),
                               self.critic(self.critic2_old, next_obss, next_actions))
            bc_penalty = cfg.w_critic_bc * batch["valid_next_actions"] * (
                (next_actions - batch["next_actions"]) ** 2).sum(-1)
            target_q = rewards + cfg.gamma * (1 - terminals) * (next_q - bc_penalty)
        critic1_loss = ((q1 - target_q).pow(2)).mean()
        critic2_loss = ((q2 - target_q).pow(2)).mean()
        for name, loss in (("critic1", critic1_loss), ("critic2", critic2_loss)):
            self.optims[name].zero_grad()
            loss.backward()
            self.optims[name].step()

        self.update_diffusion(batch, next_actions)

        if self.cnt % cfg.policy_freq == 0:
            a = self.actor(obss)
            bc = cfg.w_actor_bc * ((a - actions).pow(2).sum(-1)).mean()
            rand_obss = self.rand_like(obss)
            mixed_obss = torch.cat([obss, rand_obss], 0)
            mixed_a = torch.cat([a, self.actor(rand_obss)], 0)
            sbc = self.state_bc(mixed_obss, mixed_a)
            q = self.critic(self.critic1, obss, a)
            actor_loss = -(1 / q.abs().mean().detach()) * q.mean() + bc + sbc
            self.optims["actor"].zero_grad()
            actor_loss.backward()
            self.optims["actor"].step()
            self.last_actor = {"loss/actor": actor_loss.item(), "loss/bc": bc.item(), "loss/state_bc": sbc.item()}
            self.sync_weight()
        self.cnt += 1
        return {**self.last_actor, "loss/critic1": critic1_loss.item(), "loss/critic2": critic2_loss.item()}
