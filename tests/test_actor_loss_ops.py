"""The actor loss's kernels (kernels/state_bc.py, kernels/actor_terms.py) and their ops (fastbdm.ops) against
fastbdm.reference: fresh random inputs of odd sizes, without and with the seed axis (S = 1 and 3), the
gradients each launch writes, and the ops under torch.func.vmap + torch.func.grad (fastbdm.seed_batch)."""
import pytest
import torch
from torch.func import grad, vmap

from fastbdm import ops, reference as ref
from fastbdm.kernels import actor_terms as actor_terms_kernels, state_bc
from fastbdm.schedule import DiffusionSchedule

N, M, B, STEPS = 11, 3, 37, 7  # R = 2B rows for the SBC term
SEEDS = [1, 3]


def sbc_inputs(seeds=None):
    """x0, eps, s (2B, n), t (2B,), a (2B, m), e_out, d_out (2B, n); a leading seed axis when seeds."""
    lead = () if seeds is None else (seeds,)
    x0, eps, s, e_out, d_out = torch.randn(5, *lead, 2 * B, N)
    return x0, eps, torch.randint(0, STEPS, (*lead, 2 * B)), s, torch.rand(*lead, 2 * B, M) * 2 - 1, e_out, d_out


@pytest.mark.parametrize("seeds", [None, *SEEDS])
@pytest.mark.parametrize("standardised", [False, True])
def test_sbc_states_match_reference(seeds, standardised):
    lead = () if seeds is None else (seeds,)
    s = (torch.randn(*lead, B, N + 4) * 3 + 1)[..., 2:2 + N]  # a batch's column view: read in place
    normal = None if standardised else torch.randn(*lead, B, N)
    got = state_bc.sbc_states(s, normal, block_m=16, block_n=8)  # several row and column blocks
    assert got.shape == (*lead, 2 * B, N)
    torch.testing.assert_close(got, ref.sbc_states(s, normal), rtol=1e-5, atol=1e-5)
    assert torch.equal(got[..., :B, :], s)


@pytest.mark.parametrize("seeds", [None, *SEEDS])
def test_sbc_rows_match_reference(seeds):
    sched = DiffusionSchedule(STEPS)
    x0, eps, t, s, a, _, _ = sbc_inputs(seeds)
    e_rows, d_rows = state_bc.sbc_rows(x0, eps, t, s, a, sched.sqrt_ab, sched.sqrt_one_minus_ab, STEPS)
    e_want, d_want = ref.sbc_rows(x0, eps, t, s, a, sched)
    assert e_rows.shape == e_want.shape and d_rows.shape == d_want.shape == (*t.shape, 2 * N + 1 + M)
    torch.testing.assert_close(e_rows, e_want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(d_rows, d_want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seeds", [None, *SEEDS])
@pytest.mark.parametrize("broadcast", [False, True])
def test_sbc_loss_and_its_gradient_match_reference(seeds, broadcast):
    sched = DiffusionSchedule(STEPS)
    _, _, t, _, _, e_out, d_out = sbc_inputs(seeds)
    d_out.requires_grad_(True)
    want = ref.sbc_loss(e_out, d_out, t, sched, 0.3, broadcast)
    want.sum().backward()  # seed k's loss depends on seed k's d_out only
    loss, grad_d = state_bc.sbc_loss(e_out, d_out.detach(), t, sched.eta, 0.3, broadcast, block_m=16)
    assert loss.shape == want.shape
    torch.testing.assert_close(loss, want.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad_d, d_out.grad, rtol=1e-5, atol=1e-8)


def test_sbc_loss_weights_levels_unless_compat():
    """The level weighting eta_t reaches the loss (one row's level moved changes it), but not under compat."""
    sched = DiffusionSchedule(STEPS)
    _, _, t, _, _, e_out, d_out = sbc_inputs()
    moved = t.clone()
    moved[0] = (t[0] + 1) % STEPS
    for broadcast, changes in ((False, True), (True, False)):
        losses = [state_bc.sbc_loss(e_out, d_out, levels, sched.eta, 1.0, broadcast)[0] for levels in (t, moved)]
        assert bool(losses[0] != losses[1]) == changes


@pytest.mark.parametrize("seeds", [None, *SEEDS])
@pytest.mark.parametrize("mean_squared", [False, True])
@pytest.mark.parametrize("rows", [B, 2 * B])
def test_actor_terms_and_their_gradients_match_reference(seeds, mean_squared, rows):
    """a, q1 on B rows (rebrac, td3bc) or 2B (td3sbc's (S, pi(S)), the batch's first): the rows past B get zero
    gradient."""
    lead = () if seeds is None else (seeds,)
    a = (torch.rand(*lead, rows, M) * 2 - 1).requires_grad_(True)
    actions = (torch.rand(*lead, B, M + 3) * 2 - 1)[..., 1:1 + M]  # a batch's column view: read in place
    q1 = (torch.randn(*lead, rows) * 5).requires_grad_(True)
    want = ref.actor_terms(a, actions, q1, 2.5, 0.7, mean_squared)
    want[0].sum().backward()
    got = actor_terms_kernels.actor_terms(a.detach(), actions, q1.detach(), 2.5, 0.7, mean_squared, block_m=16)
    for g, w in zip(got[:3], want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[3], a.grad, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(got[4], q1.grad, rtol=1e-5, atol=1e-8)
    assert not got[3][..., B:, :].any() and not got[4][..., B:].any()


@pytest.mark.parametrize("seeds", [None, *SEEDS])
@pytest.mark.parametrize("rows", [B, 2 * B])
def test_actor_terms_add_the_other_term_into_loss_and_gradient(seeds, rows):
    """The other term (TD3-SBC's state-BC: its loss and d / d a, here D''s rows' action columns read in place)
    lands in the loss and d loss / d a; lambda, bc and d loss / d q1 are actor_terms' own."""
    lead = () if seeds is None else (seeds,)
    a = (torch.rand(*lead, rows, M) * 2 - 1).requires_grad_(True)
    actions = torch.rand(*lead, B, M) * 2 - 1
    q1 = (torch.randn(*lead, rows) * 5).requires_grad_(True)
    other_loss = torch.randn(lead)
    other_grad = torch.randn(*lead, rows, 2 * N + 1 + M)[..., 2 * N + 1:]  # a column view
    want = ref.actor_terms(a, actions, q1, 1.0, 0.3, False)
    want[0].sum().backward()
    got = actor_terms_kernels.actor_terms(a.detach(), actions, q1.detach(), 1.0, 0.3, False, other_loss, other_grad,
                                          block_m=16)
    torch.testing.assert_close(got[0], want[0].detach() + other_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], want[1].detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[2], want[2].detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[3], a.grad + other_grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got[4], q1.grad, rtol=1e-5, atol=1e-8)


def test_actor_terms_refuse_an_other_term_that_does_not_fit():
    with pytest.raises(ValueError, match="loss and its gradient w.r.t. a together"):
        actor_terms_kernels.actor_terms(torch.zeros(4, M), torch.zeros(4, M), torch.zeros(4), 1.0, 1.0, False,
                                        other_loss=torch.zeros(()))
    with pytest.raises(ValueError, match=r"other_grad has shape \(4, 2\)"):
        actor_terms_kernels.actor_terms(torch.zeros(4, M), torch.zeros(4, M), torch.zeros(4), 1.0, 1.0, False,
                                        torch.zeros(()), torch.zeros(4, 2))


@pytest.mark.parametrize("seeds", SEEDS)
def test_actor_terms_grads_under_vmap(seeds):
    """ops.actor_terms_grads (the op's seed-axis vmap rule with the other term) per seed equals the kernel."""
    a, actions, q1 = torch.rand(seeds, 2 * B, M), torch.rand(seeds, B, M), torch.randn(seeds, 2 * B)
    other = ref.LossTerm(torch.randn(seeds), None, torch.randn(seeds, 2 * B, M))
    got = vmap(lambda *x: ops.actor_terms_grads(*x[:3], 1.0, 0.3, True, ref.LossTerm(x[3], None, x[4])))(
        a, actions, q1, other.loss, other.grad)
    want = actor_terms_kernels.actor_terms(a, actions, q1, 1.0, 0.3, True, other.loss, other.grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("a_rows,q_rows", [(3, 3), (5, 4)])
def test_actor_terms_refuse_rows_that_do_not_fit(a_rows, q_rows):
    with pytest.raises(ValueError, match="need the same count, at least the batch's 4"):
        actor_terms_kernels.actor_terms(torch.zeros(a_rows, M), torch.zeros(4, M), torch.zeros(q_rows), 1.0, 1.0,
                                        False)


def actor_step_loss(backend, sched, a, x0, eps, t, s, actions, q_weight, e_out, d_weight):
    """A stand-in for the actor loss through every op: the terms on (a, Q1 = a q_weight), the SBC rows of
    (S, a), D''s output = its rows d_weight (a linear stand-in for the denoiser), the SBC loss; each loss
    scaled (the ops' backward scales the gradients their launch wrote by the incoming one)."""
    loss, bc, lam = backend.actor_terms(a, actions, (a @ q_weight).squeeze(-1), 2.5, 0.7, False)
    _, d_rows = backend.sbc_rows(x0, eps, t, s, a, sched)
    return 0.5 * loss + 2.0 * backend.sbc_loss(e_out, d_rows @ d_weight, t, sched, 0.3, False), (bc, lam)


@pytest.mark.parametrize("seeds", SEEDS)
def test_ops_under_vmap_and_grad_match_reference(seeds):
    """torch.func.grad of a loss through every op, vmapped over seeds (as SeedBatch runs the actor loss),
    against the reference per seed; sbc_states under vmap."""
    sched = DiffusionSchedule(STEPS)
    x0, eps, t, s, a, e_out, _ = sbc_inputs(seeds)
    actions = torch.rand(seeds, B, M) * 2 - 1
    q_weight, d_weight = torch.randn(seeds, M, 1), torch.randn(seeds, 2 * N + 1 + M, N) * 0.3
    results = []
    for backend in (ops, ref):
        step = grad(lambda a_, *rest: actor_step_loss(backend, sched, a_, *rest), has_aux=True)
        results.append(vmap(step)(a, x0, eps, t, s, actions, q_weight, e_out, d_weight))
    (grad_ops, (bc_ops, lam_ops)), (grad_ref, (bc_ref, lam_ref)) = results
    assert grad_ops.shape == a.shape and grad_ops[:, B:].abs().sum() > 0  # the SBC term reaches all 2B rows
    torch.testing.assert_close(grad_ops, grad_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bc_ops, bc_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lam_ops, lam_ref, rtol=1e-5, atol=1e-6)
    states, normal = torch.randn(seeds, B, N), torch.randn(seeds, B, N)
    torch.testing.assert_close(vmap(ops.sbc_states)(states, normal), ref.sbc_states(states, normal),
                               rtol=1e-5, atol=1e-5)


def test_ops_refuse_gradients_they_do_not_give():
    sched = DiffusionSchedule(STEPS)
    x0, eps, t, s, a, e_out, d_out = sbc_inputs()
    with pytest.raises(RuntimeError, match="differentiable in a only"):
        ops.sbc_rows(x0.requires_grad_(True), eps, t, s, a.requires_grad_(True), sched)[1].sum().backward()
    with pytest.raises(RuntimeError, match=r"sbc_loss is differentiable in inputs \[1\] only"):
        ops.sbc_loss(e_out.requires_grad_(True), d_out.requires_grad_(True), t, sched, 1.0, False).backward()


def test_opcheck():
    """Schema, fake tensors and AOT dispatch of the four ops, with and without the seed axis."""
    sched = DiffusionSchedule(STEPS)
    for seeds in (None, 3):
        x0, eps, t, s, a, e_out, d_out = sbc_inputs(seeds)
        actions, q1 = a[..., :B, :] * 0.5, torch.randn(t.shape)
        for op, args in [
            (ops._sbc_states, (s[..., :B, :], eps[..., :B, :])),
            (ops._sbc_states, (s[..., :B, :], None)),
            (ops._sbc_rows, (x0, eps, t, s, a, sched.sqrt_ab, sched.sqrt_one_minus_ab, STEPS)),
            (ops._sbc_loss, (e_out, d_out, t, sched.eta, 0.3, False)),
            (ops._actor_terms, (a, actions, q1, None, None, 2.5, 0.7, True)),
            (ops._actor_terms, (a, actions, q1, torch.randn(q1.shape[:-1]), torch.randn(a.shape), 2.5, 0.7, False)),
        ]:
            torch.library.opcheck(op, args)
