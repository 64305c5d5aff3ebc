"""CUDA graphs of the update draw from each seed's own generator, registered with the graph
(graphs.UpdateRunner's generator, graphs.SeedBatchRunner's per-seed generators): graphed updates equal
eager ones, which holds only if every replay advances each seed's stream (a replay that replayed the
captured draws would train on the same batches again). GPU only, FASTBDM_TEST_DEVICE=cuda (stage seeds
of profiling/gpu_checks.sh): pending until a GPU machine runs it.

Tolerance: graphed and eager run the same kernels on the same inputs; atol 1e-6 allows for a
reduction's order, far below the ~lr = 1e-3 a different batch moves a parameter by.
"""
from types import SimpleNamespace

import pytest
import torch
from conftest import ON_GPU

from fastbdm import TD3SBC, TD3SBCConfig
from fastbdm.graphs import SeedBatchRunner, UpdateRunner
from fastbdm.monitor import UpdateMonitor
from fastbdm.replay import TransitionBuffer
from fastbdm.seed_batch import SeedBatch
from fastbdm.seed_runs import update_generator

pytestmark = pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a GPU: FASTBDM_TEST_DEVICE=cuda (pending)")
N, M, B, UPDATES, ROWS = 6, 3, 64, 12, 500  # 12 updates: 2 warm-up pairs, then 2 replays of K = 2 pairs


def buffer():
    gen = torch.Generator("cuda").manual_seed(0)
    data = SimpleNamespace(observations=torch.randn(ROWS, N, generator=gen, device="cuda"),
                           next_observations=torch.randn(ROWS, N, generator=gen, device="cuda"),
                           actions=torch.rand(ROWS, M, generator=gen, device="cuda") * 2 - 1,
                           next_actions=torch.rand(ROWS, M, generator=gen, device="cuda") * 2 - 1,
                           rewards=torch.randn(ROWS, generator=gen, device="cuda"), terminals=torch.zeros(ROWS),
                           valid=torch.ones(ROWS), obs_mean=torch.zeros(N), obs_std=torch.ones(N))
    return TransitionBuffer(data, "cuda")


def agent(seed):
    torch.manual_seed(seed)
    cfg = TD3SBCConfig(actor_hidden=(32, 32), critic_hidden=(32, 32), denoiser_hidden=(32, 32), steps=4,
                       precision="ieee")
    return TD3SBC(N, M, config=cfg, device="cuda")


def test_a_graphed_seed_batch_advances_every_seeds_stream():
    data, states = buffer(), []
    for graphs in (False, True):
        generators = [update_generator(seed, torch.device("cuda")) for seed in range(3)]
        batch = SeedBatch([agent(seed) for seed in range(3)], generators)
        monitors = [UpdateMonitor("cuda") for _ in range(3)]
        SeedBatchRunner(batch, data, monitors, B, graphs=graphs, pairs_per_graph=2).run(UPDATES)
        states.append(([batch.agent_state(k) for k in range(3)], [g.get_state() for g in generators],
                       [m.read() for m in monitors]))
    (eager, eager_gens, eager_metrics), (graphed, graphed_gens, graphed_metrics) = states
    for k in range(3):
        assert torch.equal(eager_gens[k], graphed_gens[k]), f"seed {k}'s stream"
        for name, value in eager[k].items():
            torch.testing.assert_close(graphed[k][name], value, rtol=0, atol=1e-6,
                                       msg=lambda m: f"seed {k} {name}: {m}")
        assert eager_metrics[k].keys() == graphed_metrics[k].keys()


def test_a_graphed_single_seed_advances_its_stream():
    data, states = buffer(), []
    for graphs in (False, True):
        generator, learner = update_generator(1, torch.device("cuda")), agent(1)
        UpdateRunner(learner, data, UpdateMonitor("cuda"), B, graphs=graphs, pairs_per_graph=2,
                     generator=generator).run(UPDATES)
        states.append((learner.state_dict(), generator.get_state()))
    (eager, eager_gen), (graphed, graphed_gen) = states
    assert torch.equal(eager_gen, graphed_gen)
    for name, value in eager.items():
        torch.testing.assert_close(graphed[name], value, rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")
