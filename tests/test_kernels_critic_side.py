"""The critic side's fused losses (issue 14) against fastbdm.reference: kernels/td_loss.py's critic TD loss and
denoising loss with their gradients, kernels/noising.py's BDM TD rows; through fastbdm.ops under
torch.func.vmap + grad (the seed axis), and TD3SBC's critic-side losses on the triton backend against the torch
backend with the compat flags that touch them."""
import pytest
import torch
from torch.func import grad, vmap

from fastbdm import Batch, CompatFlags, TD3SBC, TD3SBCConfig
from fastbdm import loss_terms, ops, reference as ref
from fastbdm.launch_count import LaunchCounter
from fastbdm.kernels.noising import bdm_td_rows, smoothed_action
from fastbdm.kernels.td_loss import critic_td_loss_fwd_bwd, denoising_loss_fwd_bwd, td_loss_fwd_bwd
from fastbdm.schedule import PREDICTIONS, DiffusionSchedule

N, M, R, STEPS = 11, 3, 37, 5  # odd sizes: partial row blocks and column tiles
DEVICE = torch.empty(0).device  # the GPU with FASTBDM_TEST_DEVICE=cuda (conftest.py), else the CPU
SEEDS = [1, 3]


def critic_inputs(seeds, rows=R):
    """(q, q_target (S, 2, R), next_action, data_next_action, rewards, dones, valid) of `seeds` seeds."""
    dones, valid = (torch.rand(seeds, rows) < 0.3).float(), (torch.rand(seeds, rows) < 0.8).float()
    return (torch.randn(seeds, 2, rows), torch.randn(seeds, 2, rows), torch.rand(seeds, rows, M) * 2 - 1,
            torch.rand(seeds, rows, M) * 2 - 1, torch.randn(seeds, rows), dones, valid)


@pytest.mark.parametrize("seeds", SEEDS)
def test_critic_td_loss_kernel_matches_reference(seeds):
    q, *rest = critic_inputs(seeds)
    q = q.requires_grad_()
    term, q_mean = ref.critic_td_loss(q, *rest, 0.99, 0.3)
    term.loss.sum().backward()  # seed k's loss depends on seed k's q only
    loss, got_mean, got_grad = critic_td_loss_fwd_bwd(q.detach(), *rest, 0.99, 0.3, block_b=16)
    torch.testing.assert_close(loss, term.loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_mean, q_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, q.grad, rtol=1e-5, atol=1e-7)
    for k in range(seeds):  # the 2-D call is seed k's slice
        single = critic_td_loss_fwd_bwd(q[k].detach(), *(x[k] for x in rest), 0.99, 0.3, block_b=16)
        assert all(torch.equal(a, b[k]) for a, b in zip(single, (loss, got_mean, got_grad)))


@pytest.mark.parametrize("seeds", SEEDS)
def test_critic_td_loss_reads_a_column_slice_of_the_target_values_in_place(seeds):
    """q_target as TD3SBC.frozen_outputs hands it over (one update's columns of both updates' (S, 2, 2B)
    target values): read with its strides, no copy launched, the results of a contiguous copy exactly."""
    q, q_target, *rest = critic_inputs(seeds)
    both = torch.cat([q_target, torch.randn_like(q_target)], dim=-1)
    sliced = both[..., :q_target.shape[-1]]
    assert not sliced.is_contiguous()
    with LaunchCounter() as counter:
        got = critic_td_loss_fwd_bwd(q, sliced, *rest, 0.99, 0.3, block_b=16)
    assert "aten::clone" not in {op for _, op in counter.ops}
    want = critic_td_loss_fwd_bwd(q, q_target, *rest, 0.99, 0.3, block_b=16)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("seeds", SEEDS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_denoising_loss_kernel_matches_reference(seeds, prediction):
    sched = DiffusionSchedule(STEPS)
    out = torch.randn(seeds, R, N, requires_grad=True)
    x0, eps = torch.randn(2, seeds, R, N)
    t = torch.randint(0, STEPS, (seeds, R))
    ref.denoising_loss(out, x0, eps, t, sched, prediction).loss.sum().backward()
    loss, got = denoising_loss_fwd_bwd(out.detach(), x0, eps, t, sched.sqrt_ab, sched.sqrt_one_minus_ab,
                                       PREDICTIONS.index(prediction), block_m=16)
    torch.testing.assert_close(loss, ref.denoising_loss(out, x0, eps, t, sched, prediction).loss.detach(),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, out.grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("seeds", SEEDS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("mask_done", [True, False])
def test_bdm_td_rows_kernel_matches_reference(seeds, prediction, mask_done):
    sched = DiffusionSchedule(STEPS)
    s, s_next, samples, eps = torch.randn(4, seeds, R, N)
    a, a_next = torch.rand(2, seeds, R, M) * 2 - 1
    done = (torch.rand(seeds, R) < 0.3).float()
    t = torch.randint(0, STEPS, (seeds, R))
    args = (s, a, s_next, a_next, samples, done, t, eps)
    data = (torch.randn(seeds, R, N), torch.randint(0, STEPS, (seeds, R)), torch.randn(seeds, R, N))  # E's own
    expected = ref.bdm_td_rows(*args, sched, prediction, mask_done, data)
    got = bdm_td_rows(*args, sched.sqrt_ab, sched.sqrt_one_minus_ab, STEPS, PREDICTIONS.index(prediction),
                      mask_done, *data, block_m=16)
    assert len(got) == len(expected) == 4 and got[3].shape == (seeds, R, N + 1)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
    without = bdm_td_rows(*args, sched.sqrt_ab, sched.sqrt_one_minus_ab, STEPS, PREDICTIONS.index(prediction),
                          mask_done, block_m=16)
    assert all(torch.equal(a, b) for a, b in zip(without[:3], got)) and without[3].shape == (seeds, 0, N + 1)
    single = bdm_td_rows(*(x[-1] for x in args[:5]), done[-1].bool(), t[-1], eps[-1], sched.sqrt_ab,
                         sched.sqrt_one_minus_ab, STEPS, PREDICTIONS.index(prediction), mask_done,
                         *(x[-1] for x in data), block_m=16)
    assert all(torch.equal(a, b[-1]) for a, b in zip(single, got))  # a bool done reads as the float one
    with pytest.raises(ValueError, match="data_x0, data_t and data_eps together"):
        bdm_td_rows(*args, sched.sqrt_ab, sched.sqrt_one_minus_ab, STEPS, 0, mask_done, data[0])


@pytest.mark.parametrize("seeds", [None, *SEEDS])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_td_loss_kernel_with_the_data_denoisers_loss_matches_reference(seeds, prediction):
    """The BDM TD loss and the data denoiser's loss in one launch: each loss and gradient the reference's,
    and each the one its own launch gives, bit for bit."""
    sched, lead = DiffusionSchedule(STEPS), () if seeds is None else (seeds,)
    pred = torch.randn(*lead, 2 * R, N, requires_grad=True)
    out = torch.randn(*lead, R, N, requires_grad=True)
    target1, y2, x0, eps = torch.randn(4, *lead, R, N)
    done, t = (torch.rand(*lead, R) < 0.3).float(), torch.randint(0, STEPS, (*lead, R))
    td, data = ref.td_and_denoising_terms(pred, target1, y2, done, 0.99, out, x0, eps, t, sched, prediction)
    (td.loss.sum() + data.loss.sum()).backward()
    data_args = (out.detach(), x0, eps, t, sched.sqrt_ab, sched.sqrt_one_minus_ab, PREDICTIONS.index(prediction))
    got = td_loss_fwd_bwd(pred.detach(), target1, y2, done, 0.99, data=data_args, block_m=16, data_block_m=8)
    for g, w in zip(got, (td.loss, pred.grad, data.loss, out.grad)):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w.detach(), rtol=1e-5, atol=1e-7)
    alone = (*td_loss_fwd_bwd(pred.detach(), target1, y2, done, 0.99, block_m=16),
             *denoising_loss_fwd_bwd(*data_args, block_m=8))
    assert all(torch.equal(a, b) for a, b in zip(got, alone))


@pytest.mark.parametrize("seeds", SEEDS)
def test_smoothed_action_kernel_matches_reference(seeds):
    action = torch.rand(seeds, R, M) * 2.4 - 1.2  # some outside [-max, max] before the noise
    normal = torch.randn(seeds, R, M) * 3  # some clipped
    expected = ref.smoothed_action(action, normal, 0.2, 0.5, 1.1)
    assert (expected.abs() == 1.1).any() and ((normal * 0.2).abs() > 0.5).any()
    torch.testing.assert_close(smoothed_action(action, normal, 0.2, 0.5, 1.1, block=64), expected, rtol=0, atol=0)
    torch.testing.assert_close(vmap(lambda a, z: ops.smoothed_action(a, z, 0.2, 0.5, 1.1))(action, normal), expected,
                               rtol=0, atol=0)


def test_ops_under_vmap_and_grad_match_reference():
    """SeedBatch's use: vmap over seeds of torch.func.grad through the fused losses, and vmap of the rows op."""
    seeds, sched = 3, DiffusionSchedule(STEPS)
    q, *rest = critic_inputs(seeds)

    def critic(backend, q, *rest):
        return backend.critic_td_loss(q, *rest, 0.99, 0.3)[0].loss

    torch.testing.assert_close(vmap(grad(lambda *xs: critic(ops, *xs)))(q, *rest),
                               vmap(grad(lambda *xs: critic(ref, *xs)))(q, *rest), rtol=1e-5, atol=1e-7)
    out, x0, eps = torch.randn(3, seeds, R, N)
    t = torch.randint(0, STEPS, (seeds, R))

    def data(backend, out, x0, eps, t):
        return backend.denoising_loss(out * out, x0, eps, t, sched, "v").loss  # a graph before the loss

    torch.testing.assert_close(vmap(grad(lambda *xs: data(ops, *xs)))(out, x0, eps, t),
                               vmap(grad(lambda *xs: data(ref, *xs)))(out, x0, eps, t), rtol=1e-5, atol=1e-7)
    s, s_next, samples = torch.randn(3, seeds, R, N)
    a, a_next = torch.rand(2, seeds, R, M)
    done = (torch.rand(seeds, R) < 0.3).float()
    args = (s, a, s_next, a_next, samples, done, t, eps)
    got = vmap(lambda *xs: ops.bdm_td_rows(*xs[:8], sched, "epsilon", True, xs[8:]))(*args, x0, t, eps)
    for g, e in zip(got, ref.bdm_td_rows(*args, sched, "epsilon", True, (x0, t, eps))):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
    pred, target1, y2 = torch.randn(seeds, 2 * R, N), torch.randn(seeds, R, N), torch.randn(seeds, R, N)

    def td_and_data(backend, pred, out, target1, y2, done, x0, eps, t):  # a graph before each loss
        td, data = backend.td_and_denoising_terms(pred.sin(), target1, y2, done, 0.9, out * out, x0, eps, t, sched,
                                                  "v")
        return 2.0 * td.loss + 3.0 * data.loss

    inputs = (pred, out, target1, y2, done, x0, eps, t)
    want = vmap(grad(lambda *xs: td_and_data(ref, *xs), argnums=(0, 1)))(*inputs)
    for g, w in zip(vmap(grad(lambda *xs: td_and_data(ops, *xs), argnums=(0, 1)))(*inputs), want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
    with LaunchCounter() as counter:  # the seed-axis vmap rules: one launch for all seeds, not one per seed
        vmap(lambda *xs: critic(ops, *xs))(q, *rest)
        vmap(lambda *xs: data(ops, *xs))(out, x0, eps, t)
        vmap(lambda *xs: ops.bdm_td_rows(*xs, sched, "epsilon")[:3])(*args)  # no data: no data rows (None)
        vmap(lambda a, z: ops.smoothed_action(a, z, 0.2, 0.5, 1.0))(a, eps[..., :M])
        vmap(lambda *xs: td_and_data(ops, *xs))(*inputs)
    assert counter.by_phase()["other"]["triton"] == 5


def test_loss_term_backward_equals_the_summed_losses_backward():
    a, b = torch.randn(2, R, requires_grad=True), torch.randn(R, N, requires_grad=True)
    q, *rest = critic_inputs(1)
    sched, x0, eps = DiffusionSchedule(STEPS), torch.randn(R, N), torch.randn(R, N)
    t = torch.randint(0, STEPS, (R,))

    def terms():
        return [ops.critic_td_loss(a.exp(), *(x[0] for x in rest), 0.99, 0.3)[0],
                ops.denoising_loss(b.sin(), x0, eps, t, sched, "sample"),
                ref.denoising_loss(b.cos(), x0, eps, t, sched, "epsilon")]  # a reference term: from its loss

    sum(t.loss for t in terms()).backward()
    expected = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    loss_terms.backward(terms())
    torch.testing.assert_close(a.grad, expected[0], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(b.grad, expected[1], rtol=1e-6, atol=1e-8)


def make_batch(rows=R):
    dones = torch.zeros(rows)
    dones[:5] = 1
    valid = (torch.rand(rows) < 0.8).float()
    return Batch(torch.randn(rows, N), torch.rand(rows, M) * 2 - 1, torch.randn(rows), torch.randn(rows, N),
                 torch.rand(rows, M) * 2 - 1, dones, valid)


@pytest.mark.parametrize("prediction, compat", [
    ("sample", CompatFlags()),
    ("epsilon", CompatFlags(broadcast_critic_penalty=True, unmasked_terminals=True)),
    ("v", CompatFlags(mismatched_data_denoiser=True, shared_noise=True)),
])
def test_critic_side_terms_on_triton_match_the_torch_backend(prediction, compat):
    """Each loss and each learner's gradient of one update's critic side, triton backend (the fused kernels,
    backward through loss_terms.backward) against torch (the reference, the summed loss's backward)."""
    agents = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(1)
        cfg = TD3SBCConfig(actor_hidden=(16, 16), critic_hidden=(16, 16), denoiser_hidden=(24, 24), steps=STEPS,
                           prediction=prediction, compat=compat, backend=backend, precision="ieee")
        agents[backend] = TD3SBC(N, M, config=cfg, device=DEVICE)
    b = make_batch()
    noise = agents["torch"].draw_noise(R, DEVICE, actor_step=False)
    results = {}
    for backend, agent in agents.items():
        terms, metrics = agent.critic_side_terms(b, noise)
        if backend == "torch":
            sum(t.loss for t in terms).backward()
        else:
            assert all(t.grad is not None for t in terms) != compat.broadcast_critic_penalty
            loss_terms.backward(terms)
        results[backend] = metrics, [p.grad for p in agent.parameters() if p.requires_grad]
    (m_torch, g_torch), (m_triton, g_triton) = results["torch"], results["triton"]
    assert m_torch.keys() == m_triton.keys() == {"critic_loss", "q_mean", "bdm_loss", "data_loss"}
    for k in m_torch:
        torch.testing.assert_close(m_triton[k], m_torch[k], rtol=1e-4, atol=1e-6)
    assert len(g_torch) == len(g_triton)
    for gt, gr in zip(g_torch, g_triton):
        assert (gt is None) == (gr is None)
        if gt is not None:
            torch.testing.assert_close(gr, gt, rtol=1e-3, atol=1e-5)


def test_a_pairs_critic_side_launches_the_fused_kernels_and_no_glue():
    """Per update pair on the triton backend: the target action (pi' and its smoothing) and Q' in one launch
    on both updates' next states (their only torch ops the cats that merge these separate tensors; a pair drawn
    by fastbdm.update_draws merges them as views, tests/test_row_blocks.py), then per update the critic
    forward and its loss kernel, the BDM rows kernel (E's rows too), D', D and E forwards in one launch (a
    denoiser group) and the TD loss kernel (E's loss too); no launch summing the losses, and a backward of the networks' kernels (and the
    denoisers' weight-gradient matmuls) only."""
    agent = TD3SBC(N, M, config=TD3SBCConfig(actor_hidden=(16, 16), critic_hidden=(16, 16), denoiser_hidden=(16, 16),
                                             steps=2, backend="triton"), device=DEVICE)
    batches = [make_batch(), make_batch()]
    noises = [agent.draw_noise(R, DEVICE, actor_step) for actor_step in (False, True)]
    with LaunchCounter() as counter:
        agent.update_pair(batches, noises)
    phases = counter.by_phase()
    assert counter.ops["critic", "triton::_target_values_kernel"] == 1
    assert phases["critic"]["triton"] == 1 + 2 * 2 and phases["bdm"] == {"aten": 0, "triton": 2 * 3, "total": 6}
    assert counter.ops["bdm", "triton::_bdm_td_rows_kernel"] == counter.ops["bdm", "triton::_td_loss_kernel"] == 2
    assert counter.ops["bdm", "triton::_mlp_forward_kernel"] == 2
    assert "data_denoiser" not in phases
    assert {op for (phase, op) in counter.ops if phase == "critic" and op.startswith("aten::")} == {"aten::cat"}
    assert "other" not in phases  # the denoisers' weight-gradient matmuls are the backward's only torch ops
    assert {op for (phase, op) in counter.ops if phase == "backward" and op.startswith("aten::")} == {"aten::bmm"}


def test_opcheck_of_the_critic_side_ops():
    """torch.library.opcheck (schema, fake tensors, AOT dispatch) of the ops, 2-D and with the seed axis; on
    inputs that require no grad (their autograd is ops._loss_with_grads, tested above)."""
    sched = DiffusionSchedule(STEPS)
    buffers = (sched.sqrt_ab, sched.sqrt_one_minus_ab)
    for seeds in (1, 3):
        q, *rest = critic_inputs(seeds)
        s, s_next, samples, eps, out = torch.randn(5, seeds, R, N)
        a, a_next = torch.rand(2, seeds, R, M)
        done, t = (torch.rand(seeds, R) < 0.3).float(), torch.randint(0, STEPS, (seeds, R))
        lead = (lambda x: x[0]) if seeds == 1 else (lambda x: x)
        cases = [
            (ops._critic_td_loss, (*map(lead, (q, *rest)), 0.99, 0.3)),
            (ops._denoising_loss, (*map(lead, (out, s, eps, t)), *buffers, 2)),
            (ops._bdm_td_rows, (*map(lead, (s, a, s_next, a_next, samples, done, t, eps)), *buffers, STEPS, 1, True,
                                None, None, None)),
            (ops._bdm_td_rows, (*map(lead, (s, a, s_next, a_next, samples, done, t, eps)), *buffers, STEPS, 1, True,
                                *map(lead, (out, t.flip(-1), s_next)))),
            (ops._td_and_denoising_loss, (*map(lead, (torch.cat([s, out], -2), samples, s_next, done, out, s, eps, t)),
                                          *buffers, 0.99, 2)),
            (ops._smoothed_action, (lead(a), lead(a_next), 0.2, 0.5, 1.0)),
        ]
        for op, args in cases:
            torch.library.opcheck(op, args)


@pytest.mark.parametrize("compat", [CompatFlags(), CompatFlags(mismatched_data_denoiser=True)])
def test_the_data_denoisers_loss_in_the_bdm_launches_is_its_own_launches_loss(compat):
    """critic_side_terms runs E's rows and loss in the BDM TD loss's launches: its loss and d loss / d E's output
    are data_denoiser_term's (E's own rows, forward and loss launches) bit for bit; compat
    mismatched_data_denoiser noises s' there too (the target still of s)."""
    cfg = TD3SBCConfig(actor_hidden=(16, 16), critic_hidden=(16, 16), denoiser_hidden=(24, 24), steps=STEPS,
                       prediction="v", compat=compat, backend="triton")
    agent, b = TD3SBC(N, M, config=cfg, device=DEVICE), make_batch()
    noise = agent.draw_noise(R, DEVICE, actor_step=False)
    terms, metrics = agent.critic_side_terms(b, noise)
    alone = agent.data_denoiser_term(b, noise)
    assert torch.equal(terms[2].loss, alone.loss) and torch.equal(metrics["data_loss"], alone.loss.detach())
    assert torch.equal(terms[2].output, alone.output) and torch.equal(terms[2].grad, alone.grad)
    other = agent.data_denoiser_term(b._replace(next_obs=b.obs, obs=b.next_obs), noise)
    assert not torch.equal(terms[2].loss, other.loss)  # E's loss depends on which states it learns
