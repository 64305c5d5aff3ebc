"""The update can be captured in a CUDA graph: no host synchronisation, no data-dependent Python
control flow, no allocation from host data inside it. Proven on the CPU."""
import types

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastbdm import Batch, TD3SBC, TD3SBCConfig
from fastbdm.graphs import GraphCaptureError, UpdateRunner
from fastbdm.monitor import UpdateMonitor
from fastbdm.replay import TransitionBuffer
from fastbdm.update_draws import draw_updates

N, M, B = 5, 2, 16
aten = torch.ops.aten
# ops that read tensor values on the host or whose output shape depends on tensor values
SYNCING = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten.unique_consecutive,
           aten._unique2, aten.repeat_interleave}
# tensors made from host data (torch.tensor, as_tensor, from_numpy): on a GPU a pageable
# host-to-device copy, which fails during capture
FROM_HOST_DATA = {aten.lift_fresh, aten.lift_fresh_copy}


class HostSyncDetector(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in SYNCING:
            self.found.append(str(func))
        if func.overloadpacket in FROM_HOST_DATA:
            self.found.append("tensor from host data")
        if func.overloadpacket is aten.index and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None):
            self.found.append("boolean-mask indexing")
        return func(*args, **kwargs)


def small_agent(backend="auto", algo="td3sbc"):
    cfg = TD3SBCConfig.for_algo(algo, actor_hidden=(32, 32), critic_hidden=(32, 32), denoiser_hidden=(32, 32),
                                steps=3, backend=backend, precision="ieee")
    return TD3SBC(N, M, config=cfg)


def fake_transitions(rows=64):
    obs = torch.randn(rows, N)
    return types.SimpleNamespace(
        observations=obs, next_observations=obs + 0.1, actions=torch.rand(rows, M) * 2 - 1,
        next_actions=torch.rand(rows, M) * 2 - 1, rewards=torch.randn(rows), terminals=torch.zeros(rows),
        valid=torch.ones(rows), obs_mean=obs.mean(0), obs_std=obs.std(0))


def batch():
    return Batch(torch.randn(B, N), torch.rand(B, M), torch.randn(B), torch.randn(B, N), torch.rand(B, M),
                 (torch.rand(B) < 0.2).float(), torch.ones(B))


@pytest.mark.parametrize("backend,algo", [("torch", "td3sbc"), ("triton", "td3sbc"), ("torch", "rebrac"),
                                          ("torch", "td3bc")])
def test_update_and_batch_sampling_never_sync_with_the_host(backend, algo):
    """With "triton" the custom ops are opaque to the detector: it checks the autograd and wrapper
    code around them (kernels/ launchers take only tensors, shapes and constant floats)."""
    agent = small_agent(backend, algo)
    runner = UpdateRunner(agent, TransitionBuffer(fake_transitions(), "cpu"), UpdateMonitor("cpu"), B)
    runner.step()  # the first pair builds the monitor's index tensors, as the warm-up pairs do on a GPU
    runner.step()
    with HostSyncDetector() as detector:
        runner.step()
        runner.step()
    assert agent.num_updates == 4
    assert detector.found == []


def test_detector_catches_host_syncs_and_host_data():
    with HostSyncDetector() as detector:
        x = torch.arange(4.0) - 1
        if x.sum() > 0:
            x = x[x > 0]
    assert detector.found == ["aten._local_scalar_dense.default", "boolean-mask indexing"]
    with HostSyncDetector() as detector:
        torch.randn(4) * torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert detector.found == ["tensor from host data"]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_all_losses_compile_as_one_graph(backend):
    """torch.compile(fullgraph=True) fails on any graph break: data-dependent control flow, .item(),
    Python-side reads of tensors. The optimiser calls are outside (dynamo does not trace zero_grad).
    "triton": the losses through the custom ops (fastbdm::*, traced by their fake implementations)."""
    agent, b = small_agent(backend), batch()

    def losses(b):
        next_action = agent.target_action(b.next_obs)
        critic, _ = agent.critic_loss(b, next_action)
        bdm = agent.bdm.td_loss(b.obs, b.actions, b.next_obs, next_action, b.dones)
        actor, _ = agent.actor_loss(b)
        return critic + bdm + agent.data_denoiser_loss(b) + actor

    assert torch.isfinite(torch.compile(losses, fullgraph=True, backend="eager")(b))


def test_runner_without_graphs_is_the_plain_update_loop():
    transitions = fake_transitions()
    agents = [small_agent(), small_agent()]
    agents[1].load_state_dict(agents[0].state_dict())
    buffers = [TransitionBuffer(transitions, "cpu") for _ in agents]
    monitors = [UpdateMonitor("cpu") for _ in agents]
    torch.manual_seed(5)
    progress = []
    UpdateRunner(agents[0], buffers[0], monitors[0], B, graphs=False).run(5, progress.append)
    assert progress == [2, 2, 1]  # the progress bar moves with every pair (update_pair) and single update
    torch.manual_seed(5)
    for actor_steps in ([False, True], [False, True], [False]):  # a pair's numbers are drawn at once
        batches, noises = draw_updates(agents[1], buffers[1], B, actor_steps, [None], seed_axis=False)
        monitors[1].record(*(agents[1].update(b, noise) for b, noise in zip(batches, noises)))
    # a pair evaluates its frozen networks on 2B and 4B rows: the same up to float rounding
    # (tests/test_update_pair.py)
    for p, q in zip(agents[0].parameters(), agents[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    read = monitors[1].read()
    assert monitors[0].read() == pytest.approx(read, rel=1e-4, abs=1e-6)


class ReplayAsEager:
    """Stands in for a captured CUDA graph on the CPU: replay runs the two captured updates eagerly and,
    like a real replay, leaves the Python-side update counter to the runner."""

    def __init__(self, runner):
        self.runner = runner
        self.replays = 0

    def replay(self):
        for _ in range(self.runner.pairs_per_graph):
            self.runner.pair()
        self.runner.agent.num_updates -= 2 * self.runner.pairs_per_graph
        self.replays += 1


@pytest.mark.parametrize("chunks,pairs", [([1, 9, 3, 8], 1), ([7], 1), ([2, 2, 2, 2, 2, 2], 1),
                                          ([5, 12, 3, 9], 3)])
def test_graph_runner_bookkeeping(monkeypatch, chunks, pairs):
    """With graphs on, run(n) performs exactly n updates, keeps actor steps on even update numbers
    (captured pairs start at an even count), warms up eagerly before the first capture, and reports the
    updates to `done` as it issues them (eager ones, warm-up pairs, replays)."""
    agent = small_agent()
    monitor = UpdateMonitor("cpu")
    runner = UpdateRunner(agent, TransitionBuffer(fake_transitions(), "cpu"), monitor, B, graphs=True,
                          pairs_per_graph=pairs)
    actor_steps = []
    original = TD3SBC._updates

    def counted(self, steps):
        metrics = original(self, steps)
        actor_steps.extend("actor_loss" in m for m in metrics)
        return metrics

    monkeypatch.setattr(TD3SBC, "_updates", counted)

    def eager_warmup_pair():
        runner.pair()
        runner.warmup_pairs_left -= 1

    monkeypatch.setattr(runner, "_warmup_pair", eager_warmup_pair)
    monkeypatch.setattr(runner, "_capture", lambda: setattr(runner, "graph", ReplayAsEager(runner)))
    reported = []
    for n in chunks:
        counts = []
        runner.run(n, counts.append)
        assert sum(counts) == n  # done(k) reports every update issued, as it is issued
        reported += counts
    assert set(reported) <= {1, 2, 2 * pairs} and 2 * pairs in reported
    total = sum(chunks)
    assert agent.num_updates == total == len(actor_steps) == int(monitor.step)
    assert actor_steps == [(i + 1) % 2 == 0 for i in range(total)]
    assert runner.warmup_pairs_left == 0 and runner.graph.replays > 0


def test_failed_capture_leaves_the_runner_unchanged_and_says_no_graphs(monkeypatch):
    """An op CUDA refuses during capture raises; ending the capture then raises a second error on top.
    The runner restores its update count, keeps no graph, and raises one line that quotes the first
    error and names --no-graphs."""
    capturing = []

    class RejectedCapture:
        def __init__(self, graph):
            pass

        def __enter__(self):
            capturing.append(True)

        def __exit__(self, *exc):
            capturing.clear()
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())
    monkeypatch.setattr(torch.cuda, "graph", RejectedCapture)
    agent = small_agent()
    runner = UpdateRunner(agent, TransitionBuffer(fake_transitions(), "cpu"), UpdateMonitor("cpu"), B, graphs=True,
                          pairs_per_graph=2)
    eager_pair = runner.pair

    def pair():
        if capturing and agent.num_updates == 4:  # the graph's second pair
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nCUDA kernel errors ...")
        eager_pair()

    monkeypatch.setattr(runner, "pair", pair)
    runner.warmup_pairs_left = 0
    runner.run(2)
    with pytest.raises(GraphCaptureError) as failure:
        runner.run(4)
    assert str(failure.value) == ("CUDA graph capture of the update failed (CUDA error: operation not permitted "
                                  "when stream is capturing); train eagerly with --no-graphs")
    assert agent.num_updates == 2 and runner.graph is None
