"""Pre-flight for CUDA-graph capture without a GPU: runs the update's forward work on fake CUDA tensors
and reports every op that touches a CPU tensor (a host-to-device copy or a value frozen at capture).

Needs a CUDA-enabled torch build (torch.backends.cuda.is_built()); no GPU, driver or Triton compile:
FakeTensorMode propagates shapes and devices only, and fastbdm's custom ops use their fake kernels.
Audited, for the backend given: batch sampling, target action, critic loss, BDM TD loss (reverse chain
included), data-denoiser loss, actor loss, the target lerp, metric recording, and TD3SBC.act. Not
audited: backward passes (the autograd engine needs a CUDA context) and the fused Adam step (no fake
kernel in torch); tests/test_graph_safety.py covers those for host syncs on the CPU.

    python profiling/fake_cuda_audit.py --backend triton      # exit 1 if any op touches a CPU tensor
    python profiling/fake_cuda_audit.py --algo rebrac --backend torch    # the baselines: rebrac, td3bc
"""
import argparse
import copy
import types

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import fastbdm.bdm
import fastbdm.td3sbc
from fastbdm import TD3SBC, TD3SBCConfig
from fastbdm.monitor import UpdateMonitor
from fastbdm.presets import ALGOS
from fastbdm.replay import TransitionBuffer

OBS, ACT, ROWS, BATCH = 17, 6, 300, 64


class CpuTensorAudit(TorchDispatchMode):
    """Records each op with a CPU tensor among its inputs or outputs."""

    def __init__(self):
        super().__init__()
        self.ops, self.found = 0, []

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        self.ops += 1
        out = func(*args, **(kwargs or {}))
        cpu = [tuple(t.shape) for t in tree_leaves((args, kwargs, out))
               if isinstance(t, torch.Tensor) and t.device.type == "cpu"]
        if cpu:
            self.found.append(f"{func}: CPU tensors of shapes {cpu}")
        return out


def fake_friendly_construction(fake_mode):
    """Three construction steps that fake tensors cannot take as written, replaced by equivalents:
    Module.to swaps fake parameters (the agent is built on CUDA already), deepcopy would copy the fake
    mode itself, and Adam's constructor reads its tensor lr on the host (a harmless sync on a GPU)."""
    def to(module, *args, **kwargs):
        assert all(t.device.type == "cuda" for t in (*module.parameters(), *module.buffers()))
        return module

    def make_adam(params, lr, device):
        opt = torch.optim.Adam(params, lr=lr, fused=True, capturable=True)
        for group in opt.param_groups:
            group["lr"] = torch.tensor(lr, device=device)
        return opt

    torch.nn.Module.to = to
    fastbdm.td3sbc.make_adam = make_adam
    fastbdm.td3sbc.copy = fastbdm.bdm.copy = types.SimpleNamespace(
        deepcopy=lambda m: copy.deepcopy(m, memo={id(fake_mode): fake_mode}))


def forward_work(agent: TD3SBC, buffer: TransitionBuffer, monitor: UpdateMonitor, actor_step: bool) -> None:
    """One update's work outside backward and Adam, in TD3SBC.update's order."""
    b = buffer.sample(BATCH)
    next_action = agent.target_action(b.next_obs)
    critic, q_mean = agent.critic_loss(b, next_action)
    metrics = {"critic_loss": critic.detach(), "q_mean": q_mean}
    if agent.bdm is not None:
        bdm = agent.bdm.td_loss(b.obs, b.actions, b.next_obs, next_action, b.dones)
        metrics.update(bdm_loss=bdm.detach(), data_loss=agent.data_denoiser_loss(b).detach())
    if actor_step:
        _, terms = agent.actor_loss(b)
        metrics.update({k: v.detach() for k, v in terms.items()})
        agent.update_targets()
    monitor.record(metrics)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["torch", "triton"], default="triton")
    parser.add_argument("--algo", choices=ALGOS, default="td3sbc")
    args = parser.parse_args()
    if not torch.backends.cuda.is_built():
        raise SystemExit("fake_cuda_audit.py needs a CUDA-enabled torch build (this one is CPU-only)")
    torch.set_num_threads(1)
    torch.set_default_device("cuda")
    with FakeTensorMode() as fake_mode:
        fake_friendly_construction(fake_mode)
        obs = torch.randn(ROWS, OBS, device="cpu")
        transitions = types.SimpleNamespace(
            observations=obs, next_observations=obs + 0.1, actions=torch.rand(ROWS, ACT, device="cpu") * 2 - 1,
            next_actions=torch.rand(ROWS, ACT, device="cpu") * 2 - 1, rewards=torch.randn(ROWS, device="cpu"),
            terminals=torch.zeros(ROWS, device="cpu"), valid=torch.ones(ROWS, device="cpu"),
            obs_mean=obs.mean(0), obs_std=obs.std(0))
        config = TD3SBCConfig.for_algo(args.algo, actor_hidden=(32, 32), critic_hidden=(32, 32),
                                       denoiser_hidden=(64, 64), steps=4, backend=args.backend)
        agent = TD3SBC(OBS, ACT, config=config, device="cuda")
        buffer, monitor = TransitionBuffer(transitions, "cuda"), UpdateMonitor("cuda")
        forward_work(agent, buffer, monitor, False)  # the warm-up pair: monitor indices exist before capture
        forward_work(agent, buffer, monitor, True)
        with CpuTensorAudit() as audit:
            forward_work(agent, buffer, monitor, False)
            forward_work(agent, buffer, monitor, True)
            agent.act(torch.randn(10, OBS))
    print(f"{args.algo}, backend {args.backend}: {audit.ops} ops audited on fake CUDA tensors, {len(audit.found)} touch the CPU")
    for line in audit.found:
        print("  " + line)
    if audit.found:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
