"""fastbdm.launch_count: the rule that counts, on the CPU, the kernels code would launch on CUDA."""
import pytest
import torch
import triton
import triton.language as tl

from fastbdm import ops
from fastbdm.launch_count import MAX_BLOCKS, LaunchCounter, multi_tensor_launches
from fastbdm.networks import Denoiser
from fastbdm.nvtx_ranges import phase


@triton.jit
def _twice_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(x_ptr + offs, 2 * tl.load(x_ptr + offs, mask=mask), mask=mask)


def test_views_allocations_and_syncs_launch_nothing_other_ops_one_each():
    x = torch.randn(4, 3)
    with LaunchCounter() as counter:
        with phase("a"):
            y = x.t().unsqueeze(0)[0]  # views
            torch.empty(5)  # allocation
            z = x @ y  # mm: 1
        with phase("b"):
            z.sum().item()  # sum: 1; item: a sync, no kernel
            torch.cat([x, x])  # 1
    assert counter.ops == {("a", "aten::mm"): 1, ("b", "aten::sum"): 1, ("b", "aten::cat"): 1}
    assert counter.by_phase() == {"a": {"aten": 1, "triton": 0, "total": 1}, "b": {"aten": 2, "triton": 0, "total": 2}}
    assert counter.syncs == 1 and counter.total() == 3


def test_backward_counts_parts_of_composite_ops_once_and_slice_backward_twice():
    w = torch.randn(3, 4, 5, requires_grad=True)
    x = torch.randn(2, 6, 4)
    with LaunchCounter() as counter:
        torch.matmul(x, w[:2]).sum().backward()
    names = {op for _, op in counter.ops}
    assert "aten::matmul" not in names and "aten::bmm" in names
    assert counter.ops["other", "aten::slice_backward"] == 2  # zero fill + copy into the slice


def test_triton_launches_are_counted_once_without_the_interpreters_own_ops():
    x = torch.randn(10)
    with LaunchCounter() as counter:
        _twice_kernel[(1,)](x, 10, BLOCK=16)
        _twice_kernel[(1,)](x, 10, BLOCK=16)
    assert counter.ops == {("other", "triton::_twice_kernel"): 2}
    assert counter.launches == {("other", "triton"): 2}
    _twice_kernel[(1,)](x, 10, BLOCK=16)  # the launcher is restored on exit: nothing counted
    assert counter.total() == 2


def test_custom_ops_count_their_bodies():
    net = Denoiser(4, 2, hidden=(8, 8))
    rows = torch.randn(6, net.in_dim)
    with LaunchCounter() as counter, torch.no_grad():
        ops.denoiser_forward(rows, net.weights())  # the fastbdm::denoiser_forwards op: one MLP kernel
    assert counter.ops == {("other", "triton::_mlp_forward_kernel"): 1}
    with LaunchCounter() as counter:  # the training op: the kernel writes the LayerNorm statistics in place
        ops.denoiser_forward(rows, net.weights())
    assert counter.ops == {("other", "triton::_mlp_forward_kernel"): 1}


@torch.library.custom_op("fastbdm_test::matmul_then_add", mutates_args=())
def _matmul_then_add(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x @ w + 1


def test_composite_ops_inside_a_custom_op_count_their_parts():
    """matmul in a custom op's body reaches the mode below autograd: its bmm is a launch (once), the
    composite matmul none."""
    x, w = torch.randn(3, 4, 5), torch.randn(3, 5, 2)
    with LaunchCounter() as counter:
        _matmul_then_add(x, w)
    assert counter.ops == {("other", "aten::bmm"): 1, ("other", "aten::add"): 1}


@pytest.mark.parametrize("numels,depth,launches", [
    ([100] * 36, 4, 1), ([100] * 37, 4, 2), ([100] * 64, 2, 1), ([100] * 65, 2, 2),
    ([65536 * MAX_BLOCKS], 2, 1), ([65536 * MAX_BLOCKS + 1], 2, 2), ([0, 5], 4, 1)])
def test_multi_tensor_launches_follow_multi_tensor_apply(numels, depth, launches):
    assert multi_tensor_launches(numels, depth) == launches


def test_fused_adam_and_foreach_lerp_count_their_multi_tensor_launches():
    params = [torch.nn.Parameter(torch.randn(10)) for _ in range(40)]  # 40 > 36 tensors per fused-Adam launch
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)
    for p in params:
        p.grad = torch.ones_like(p)
    with LaunchCounter() as counter:
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_([p.detach() for p in params], [p.detach() * 0 for p in params], 0.5)
    assert counter.ops["other", "aten::_fused_adam_"] == 2
    assert counter.ops["other", "aten::_foreach_lerp_"] == 1


def _runner(seeds: int):
    """An UpdateRunner of one small td3sbc agent (seeds 1), or a SeedBatchRunner of `seeds`, on 40 rows."""
    from types import SimpleNamespace

    from fastbdm import TD3SBC, TD3SBCConfig
    from fastbdm.graphs import SeedBatchRunner, UpdateRunner
    from fastbdm.monitor import UpdateMonitor
    from fastbdm.replay import TransitionBuffer
    from fastbdm.seed_batch import SeedBatch

    n, m, rows = 5, 2, 40
    obs = torch.randn(rows, n)
    data = SimpleNamespace(observations=obs, next_observations=obs + 0.1, actions=torch.rand(rows, m),
                           next_actions=torch.rand(rows, m), rewards=torch.randn(rows), terminals=torch.zeros(rows),
                           valid=torch.ones(rows), obs_mean=obs.mean(0), obs_std=obs.std(0))
    cfg = TD3SBCConfig.for_algo("td3sbc", actor_hidden=(16, 16), critic_hidden=(16, 16), denoiser_hidden=(16, 16),
                                steps=2, backend="torch")
    agents = [TD3SBC(n, m, config=cfg) for _ in range(seeds)]
    generators = [torch.Generator().manual_seed(seed) for seed in range(seeds)]
    buffer, monitors = TransitionBuffer(data, "cpu"), [UpdateMonitor("cpu") for _ in range(seeds)]
    if seeds == 1:
        return UpdateRunner(agents[0], buffer, monitors[0], 8, generator=generators[0])
    return SeedBatchRunner(SeedBatch(agents, generators), buffer, monitors, 8)


@pytest.mark.parametrize("seeds", [1, 3])
def test_a_pair_draws_in_2_seeds_launches_and_a_gather_and_records_metrics_in_seven(seeds):
    """fastbdm.update_draws: per seed one randint of both updates' batch rows and levels and one randn of
    their normals, then one gather of every seed's rows (the pair's draws one by one were 2 launches of
    sampling and 8 of noise per seed and update, plus a stack per field at S seeds; a separate randint of
    the levels one more per seed). On the triton backend the gather kernel reduces the draws to rows and
    levels (tests/test_gather_fields.py: one launch); on the torch backend of this runner two remainders
    do, before the index_select. Metrics: seven launches for the
    pair, for one seed or all seeds of a SeedBatchRunner at once (UpdateMonitor.record of both updates on
    the stacked monitors)."""
    runner = _runner(seeds)
    runner.pair()  # the monitor's index tensors exist before the counted pair
    with LaunchCounter() as counter:
        runner.pair()
    phases = counter.by_phase()
    assert phases["metrics"]["total"] == 7
    assert counter.ops["sample", "aten::randint"] == seeds and phases["sample"]["total"] == seeds + 3
    assert counter.ops["noise", "aten::normal_"] == seeds and phases["noise"]["total"] == seeds  # randn(out=)
    runner.step()  # single updates: their own draws, the same three kinds of launch
    runner.step()  # (the monitor's index tensors of both kinds of single update exist)
    with LaunchCounter() as counter:
        runner.step()
    assert {phase: row["total"] for phase, row in counter.by_phase().items() if phase in ("sample", "noise", "metrics")} \
        == {"sample": seeds + 3, "noise": seeds, "metrics": 7}


def test_the_actor_step_launches_the_fused_actor_loss_and_no_critic_weight_gradients():
    """td3sbc, triton: the actor phase of a pair (S = [s; s_rand], pi(S), Q1, the SBC rows, E and D', the
    losses, their backward to the actor's weights) is 11 launches (84 before the actor loss's kernels, 21 before
    its backward started at the networks' outputs, 15 before E and D' ran in one launch, D''s input gradient
    was folded into its layer-1 backward launch and the backward through Q1 and pi was fused): one
    weight-gradient launch (the actor's: the critic's weights are constants there), one launch of deltas back
    through Q1 and the actor (no add of pi(S)'s gradients from Q1 and actor_terms), no input-gradient matmul, no
    zero fills, no slice or select backward, no copy of the batch's column views, no seed gradient, no scaling of
    the kernels' gradients. The target side (pi'(s'), its smoothing, Q1', Q2') is one launch of the critic
    phase's five."""
    from fastbdm import Batch, TD3SBC, TD3SBCConfig

    n, m, rows = 5, 2, 24
    cfg = TD3SBCConfig.for_algo("td3sbc", actor_hidden=(16, 16), critic_hidden=(16, 16), denoiser_hidden=(16, 16),
                                steps=3, backend="triton")
    agent = TD3SBC(n, m, config=cfg)

    def pair():
        batches = [Batch(torch.randn(rows, n), torch.rand(rows, m), torch.randn(rows), torch.randn(rows, n),
                         torch.rand(rows, m), torch.zeros(rows), torch.ones(rows)) for _ in range(2)]
        noises = [agent.draw_noise(rows, "cpu", actor_step) for actor_step in (False, True)]
        agent.update_pair(batches, noises)

    pair()  # Adam's state exists before the counted pair
    with LaunchCounter() as counter:
        pair()
    actor = {op: count for (name, op), count in counter.ops.items() if name == "actor"}
    assert actor["triton::_weight_grads_kernel"] == actor["triton::_policy_value_deltas_kernel"] == 1
    assert "triton::_backward_deltas_kernel" not in actor
    assert not {"aten::zeros", "aten::slice_backward", "aten::select_backward", "aten::clone"} & set(actor)
    assert all(actor[f"triton::_{k}_kernel"] == 1 for k in ("sbc_states", "sbc_rows", "sbc_loss", "actor_terms"))
    assert not {"aten::ones_like", "aten::mul", "aten::add"} & set(actor)
    assert actor["triton::_mlp_forward_kernel"] == 1  # E and D', one denoiser group
    assert "aten::bmm" not in actor  # d rows = dz1 @ W1 of D' in the layer-1 kernel
    assert sum(actor.values()) == 11
    # the critic phase's kernels (its cats join this test's separate batches: a trainer's are views of one draw)
    critic = {op: count for (name, op), count in counter.ops.items() if name == "critic" and op.startswith("triton")}
    assert critic == {"triton::_target_values_kernel": 1, "triton::_forward_kernel": 2,
                      "triton::_critic_td_loss_kernel": 2}
