"""Two streams (fastbdm.branches, TD3SBC streams=2): the update's independent work forked onto a side stream
and joined back.

On the CPU the side work runs inline where it is issued, so what can be checked here is the structure: the
pair with two streams learns bit for bit as with one (the host issues the same work in the same order;
the critic's backward is a call of its own, on leaves no other term reaches), every fork is joined, and the
launch counter finds the launches the side stream takes off the serial path: each update's critic forward,
loss and backward beside its BDM work, the actor step's Q1 beside the SBC term.

GPU only (FASTBDM_TEST_DEVICE=cuda, stage seedgraphs of profiling/gpu_checks.sh; pending until a GPU machine
runs it): the side work runs on another stream (a pair's kernels on two streams in torch.profiler's
trace), eager two-stream updates equal one-stream ones (the same
kernels on the same inputs: atol 1e-6 leaves room for a reduction's order, far below the ~lr = 1e-3 a
different batch moves a parameter by), and graphed two-stream updates equal eager ones.
"""
import pytest
import torch
from conftest import ON_GPU

from test_seed_graphs import agent as gpu_agent, buffer as gpu_buffer
from test_update_pair import B, draws, make_agent

from fastbdm import branches
from fastbdm.branches import Branches
from fastbdm.graphs import UpdateRunner
from fastbdm.launch_count import LaunchCounter
from fastbdm.monitor import UpdateMonitor

gpu_only = pytest.mark.skipif(not ON_GPU, reason="CUDA streams need a GPU: FASTBDM_TEST_DEVICE=cuda (pending)")
cpu_only = pytest.mark.skipif(ON_GPU, reason="the CPU's inline side branch")


def test_streams_other_than_one_or_two_are_refused():
    with pytest.raises(ValueError, match="streams=3: choose 1"):
        Branches(3)


@cpu_only
def test_the_counter_takes_the_side_launches_that_overlap_the_current_streams_off_the_serial_path():
    x = torch.ones(4)
    with LaunchCounter() as counter:
        fork = Branches(2).fork(x, [x])
        with fork.side():
            y = x + 1
            y = y * 2
            y = y - 3  # 3 side launches
        z = x * 5  # 1 beside them
        fork.join(y)
        w = z + y  # after the join: serial
    assert (counter.total(), counter.serial()) == (5, 4)
    assert not branches.OPEN and not branches.SIDE
    torch.testing.assert_close(w, torch.full((4,), 6.0), rtol=0, atol=0)


@cpu_only
def test_one_stream_or_nothing_beside_the_side_keeps_every_launch_serial():
    x = torch.ones(4)
    for fork in (Branches(1).fork(x), Branches(2).fork(x, parallel=False)):
        with LaunchCounter() as counter:
            with fork.side():
                y = x + 1
            z = x * 2
            fork.join(y)
        assert (counter.total(), counter.serial()) == (2, 2)
        assert z.sum() == 8


@cpu_only
@pytest.mark.parametrize("algo,backend", [("td3sbc", "torch"), ("td3sbc", "triton"), ("rebrac", "triton")])
def test_a_pair_with_two_streams_learns_bit_for_bit_as_with_one(algo, backend):
    states, serial = [], []
    for streams in (1, 2):
        agent = make_agent(algo, backend)
        agent.branches = Branches(streams)
        g = torch.Generator().manual_seed(1)
        for pair in range(2):
            counter = LaunchCounter()
            with counter:
                agent.update_pair(*draws(agent, g))
            assert not branches.OPEN and not branches.SIDE, "every fork joined"
        states.append(agent.state_dict())
        serial.append((counter.total(), counter.serial()))
    for name, value in states[0].items():
        assert torch.equal(states[1][name], value), name
    (total_1, serial_1), (total_2, serial_2) = serial
    assert total_1 == total_2 == serial_1
    if algo == "td3sbc":  # the critic's launches of both updates and Q1 run beside other work
        assert serial_2 < total_2
    else:  # nothing to run beside the critic: no fork
        assert serial_2 == total_2


@gpu_only
def test_the_side_work_runs_on_another_stream_and_the_current_one_waits_for_it():
    x = torch.randn(1 << 20, device="cuda")
    main = torch.cuda.current_stream()
    fork = Branches(2).fork(x, [x])
    with fork.side():
        assert torch.cuda.current_stream() != main
        y = (x * 2).sum()
    fork.join(y)
    assert torch.cuda.current_stream() == main
    torch.testing.assert_close(y, (x * 2).sum())


def _runner_state(streams: int, graphs: bool):
    torch.manual_seed(0)
    model = gpu_agent(0)
    model.branches = Branches(streams)
    generator = torch.Generator("cuda").manual_seed(3)
    UpdateRunner(model, gpu_buffer(), UpdateMonitor("cuda"), B, graphs=graphs, pairs_per_graph=2,
                 generator=generator).run(12)
    torch.cuda.synchronize()
    return {k: v.clone() for k, v in model.state_dict().items()}


@gpu_only
@pytest.mark.parametrize("streams,graphs", [(2, False), (2, True)])
def test_two_stream_updates_eager_and_graphed_equal_one_stream_eager(streams, graphs):
    want, got = _runner_state(1, False), _runner_state(streams, graphs)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")


@gpu_only
def test_a_two_stream_pair_runs_kernels_on_two_streams(tmp_path):
    """The side work really leaves the current stream (a silent fall-back to one stream would pass the
    equality tests): the kernels of an eager pair, in torch.profiler's trace, on two CUDA streams."""
    import json

    from torch.profiler import ProfilerActivity, profile

    model = gpu_agent(0)
    model.branches = Branches(2)
    runner = UpdateRunner(model, gpu_buffer(), UpdateMonitor("cuda"), B, generator=torch.Generator("cuda").manual_seed(3))
    runner.run(4)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        runner.run(2)
        torch.cuda.synchronize()
    prof.export_chrome_trace(str(tmp_path / "trace.json"))
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    streams = {e["args"]["stream"] for e in events if e.get("cat") == "kernel" and "stream" in e.get("args", {})}
    assert len(streams) >= 2, f"kernels on streams {streams}"
