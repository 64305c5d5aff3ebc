"""fastbdm.seed_memory: the per-seed estimate's parts against counted bytes, and the seeds per batch."""
from types import SimpleNamespace

import pytest
import torch

from fastbdm import TD3SBC, TD3SBCConfig, seed_memory
from fastbdm.replay import TransitionBuffer
from fastbdm.seed_memory import SeedMemory, activation_bytes, dataset_bytes, seeds_per_batch
from fastbdm.td3sbc import Batch

N, M, B = 6, 3, 16


@pytest.mark.parametrize("algo", ["td3sbc", "rebrac", "td3bc"])
def test_parameters_adam_and_gradients_are_the_bytes_an_updated_agent_holds(algo):
    cfg = TD3SBCConfig.for_algo(algo, actor_hidden=(32, 32), critic_hidden=(32, 32), denoiser_hidden=(48, 48),
                                steps=4, backend="torch")
    agent = TD3SBC(N, M, config=cfg)
    estimate = seed_memory.seed_memory(agent, B)
    params = [p for opt in agent.optimizers.values() for group in opt.param_groups for p in group["params"]]
    graded = {}  # every learner's gradient as it was held: the critic side's after update 1, the actor's after 2
    for _ in range(2):  # the second update steps the actor: every learner then has moments and gradients
        agent.update(Batch(torch.randn(B, N), torch.rand(B, M), torch.randn(B), torch.randn(B, N), torch.rand(B, M),
                           torch.zeros(B), torch.ones(B)))
        graded.update({id(p): p.grad for p in params if p.grad is not None})
    counted = lambda tensors: sum(t.numel() * t.element_size() for t in tensors)  # noqa: E731
    moments = [s[k] for opt in agent.optimizers.values() for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq")]
    assert estimate.parameters == counted(agent.state_dict().values())
    assert estimate.adam == counted(moments) and len(moments) == 2 * len(params)
    assert len(graded) == len(params) and estimate.gradients == counted(graded.values())
    assert estimate.activations == activation_bytes(cfg, B) > 0
    assert estimate.total == estimate.parameters + estimate.adam + estimate.gradients + estimate.activations


def test_activations_grow_with_the_batch_and_the_state_bc_learners():
    cfg = TD3SBCConfig()
    assert activation_bytes(cfg, 2048) == 2 * activation_bytes(cfg, 1024)
    assert activation_bytes(cfg, 1024) > activation_bytes(TD3SBCConfig.for_algo("rebrac"), 1024)


class Transitions(SimpleNamespace):
    """A dataset's fields (fastbdm.data's Transitions) and its length."""

    def __len__(self):
        return self.observations.shape[0]


def test_dataset_bytes_count_the_buffer_on_the_device():
    rows = 50
    data = Transitions(observations=torch.randn(rows, N), next_observations=torch.randn(rows, N),
                       actions=torch.rand(rows, M), next_actions=torch.rand(rows, M), rewards=torch.randn(rows),
                       terminals=torch.zeros(rows), valid=torch.ones(rows), obs_mean=torch.zeros(N),
                       obs_std=torch.ones(N), obs_dim=N, act_dim=M)
    buffer = TransitionBuffer(data, "cpu")
    held = [buffer.obs, buffer.next_obs, buffer.actions, buffer.next_actions, buffer.rewards, buffer.dones,
            buffer.valid]
    assert dataset_bytes(data) == sum(t.numel() * t.element_size() for t in held)


def test_seeds_per_batch_from_free_memory(monkeypatch):
    per_seed, dataset = SeedMemory(100, 200, 100, 600), 1000  # 1000 bytes a seed
    monkeypatch.setattr(seed_memory, "free_memory", lambda device: int((dataset + 3.5 * per_seed.total) / 0.9))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert seeds_per_batch(8, None, per_seed, dataset, cuda) == 3  # CUDA: as many as fit
    assert seeds_per_batch(2, None, per_seed, dataset, cuda) == 2  # no more than the seeds
    assert seeds_per_batch(3, None, per_seed, dataset, cpu) == 3  # the CPU: all seeds, when they fit
    assert seeds_per_batch(8, 2, per_seed, dataset, cpu) == 2
    for seeds, requested, device in ((4, None, cpu), (8, 4, cuda)):
        with pytest.raises(ValueError, match="^4 seeds per batch need 0.00 GB on .* pass --seeds-per-batch 3$"):
            seeds_per_batch(seeds, requested, per_seed, dataset, device)
