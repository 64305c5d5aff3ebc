"""fastbdm.ops (the Triton backend's custom ops) against fastbdm.reference, in the CPU interpreter
(or compiled on a GPU, see conftest.py).

Two BellmanDiffusion models with identical weights, backend "triton" (precision "ieee") and "torch",
on injected t / eps / z. Both compute in fp32 (the interpreter's tl.dot is exact fp32), so the differences are
summation-order rounding: 1e-5 relative + 1e-5 absolute on O(0.1..1) losses, gradients and samples
(observed ~1e-7); the sampler chains 10 levels whose top level divides by sqrt(abar) ~ 5e-3 in
epsilon mode, so samples get 1e-4.
"""
import os

import pytest
import torch

import fastbdm
from fastbdm import ops, reference
from batches import bdm_batch

N, M, B, HIDDEN = 11, 3, 37, (64, 64)


def make_pair(prediction="sample", sampler="ddim"):
    triton_bdm = fastbdm.BellmanDiffusion(N, M, hidden=HIDDEN, prediction=prediction, sampler=sampler,
                                          backend="triton", precision="ieee")
    with torch.no_grad():  # online != target, LayerNorm gains/biases away from 1/0
        for p in triton_bdm.denoiser.parameters():
            p.add_(0.1 * torch.randn_like(p))
    torch_bdm = fastbdm.BellmanDiffusion(N, M, hidden=HIDDEN, prediction=prediction, sampler=sampler,
                                         backend="torch")
    torch_bdm.load_state_dict(triton_bdm.state_dict())
    return triton_bdm, torch_bdm


def batch():
    return bdm_batch(B, N, M, done_rows=(1, 4, 30))


def test_backend_resolves_to_ops_at_its_precision():
    triton_bdm, torch_bdm = make_pair()
    bound = triton_bdm.ops(torch.zeros(1))
    assert bound.td_loss is ops.td_loss and bound.noised_rows is ops.noised_rows
    for fn in (bound.denoiser_forward, bound.reverse_chain):
        assert fn.keywords == {"precision": "ieee"}
    assert bound.denoiser_forward.func is ops.denoiser_forward and bound.reverse_chain.func is ops.reverse_chain
    assert torch_bdm.ops(torch.zeros(1)) is reference


def test_bad_precisions_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        fastbdm.BellmanDiffusion(N, M, hidden=HIDDEN, precision="fp16")
    s, a = batch()[:2]
    with pytest.raises(ValueError, match="use backend 'triton'"):
        fastbdm.BellmanDiffusion(N, M, hidden=HIDDEN, backend="torch", precision="bf16").sample(s, a)
    triton_bf16 = fastbdm.BellmanDiffusion(N, M, hidden=HIDDEN, backend="triton", precision="bf16")
    if os.environ.get("TRITON_INTERPRET") == "1":
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            triton_bf16.sample(s, a)
    else:  # compiled on a GPU: it runs
        assert torch.isfinite(triton_bf16.sample(s, a)).all()


@pytest.mark.parametrize("prediction", ["sample", "epsilon"])
def test_td_loss_and_grads_match_reference(prediction):
    triton_bdm, torch_bdm = make_pair(prediction)
    data = batch()
    t, eps, z = torch.randint(0, triton_bdm.steps, (B,)), torch.randn(B, N), torch.randn(B, N)
    losses = []
    for bdm in (triton_bdm, torch_bdm):
        loss = bdm.td_loss(*data, t=t, eps=eps, z=z)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(triton_bdm.denoiser.named_parameters(), torch_bdm.denoiser.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
    assert all(p.grad is None for p in triton_bdm.target_denoiser.parameters())


@pytest.mark.parametrize("prediction, sampler", [("sample", "ddpm"), ("epsilon", "ddim")])
def test_sample_matches_reference(prediction, sampler):
    triton_bdm, torch_bdm = make_pair(prediction, sampler)
    s, a, _, _, _ = batch()
    z, noise = torch.randn(B, N), torch.randn(triton_bdm.steps, B, N)
    torch.testing.assert_close(triton_bdm.sample(s, a, z, noise=noise), torch_bdm.sample(s, a, z, noise=noise),
                               rtol=1e-4, atol=1e-4)


def test_sbc_action_gradient_through_target_denoiser(monkeypatch):
    """d/dA of sum(w * D'(x_t, S, c, A)) with D' frozen: the actor's state-BC path (docs/ALGORITHM.md#state-behaviour-cloning);
    the backward computes the input gradient only."""
    calls = []
    original = ops.denoiser_backward.mlp_backward_group

    def spy(grad_outs, rows, weights, acts, need_weight_grads, need_input_grads, *args):
        calls.append((list(need_input_grads), [list(flags) for flags in need_weight_grads]))
        return original(grad_outs, rows, weights, acts, need_weight_grads, need_input_grads, *args)

    monkeypatch.setattr(ops.denoiser_backward, "mlp_backward_group", spy)
    triton_bdm, _ = make_pair()
    sch, weights = triton_bdm.schedule, triton_bdm.target_denoiser.weights()
    t = torch.randint(0, sch.steps, (B,))
    x_t, S = torch.randn(B, N), torch.randn(B, N)
    A = (torch.rand(B, M) * 2 - 1).requires_grad_(True)
    w = torch.randn(B, N)
    grads = []
    for backend in (triton_bdm.ops(x_t), reference):
        rows = torch.cat([x_t, S, sch.time_input(t), A], -1)
        out = backend.denoiser_forward(rows, weights)
        grads.append(torch.autograd.grad((w * out).sum(), A)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)
    assert calls == [([True], [[False] * len(weights)])]


def test_noised_rows_and_no_grad_forward_match_reference():
    triton_bdm, _ = make_pair()
    sch, (s, a, s_next, _, _) = triton_bdm.schedule, batch()
    t, eps = torch.randint(0, sch.steps, (B,)), torch.randn(B, N)
    rows = ops.noised_rows(s_next, eps, t, s, a, sch)
    torch.testing.assert_close(rows, reference.noised_rows(s_next, eps, t, s, a, sch))
    with torch.no_grad():
        out = ops.denoiser_forward(rows, triton_bdm.denoiser.weights(), precision="ieee")
    assert not out.requires_grad
    torch.testing.assert_close(out, reference.denoiser_forward(rows, triton_bdm.denoiser.weights()).detach(),
                               rtol=1e-5, atol=1e-5)


def test_compiled_loss_and_backward_match_eager():
    """torch.compile traces through the ops (fake impls + autograd formulas), no graph breaks."""
    triton_bdm, _ = make_pair()
    rows = torch.randn(B, 2 * N + M + 1)
    target = torch.randn(B // 2, N)
    done = torch.zeros(B // 2, dtype=torch.bool)
    done[0] = True
    weights = triton_bdm.denoiser.weights()

    def loss_fn(rows):
        pred = ops.denoiser_forward(rows, weights)[: 2 * (B // 2)]
        return ops.td_loss(pred, target, target.flip(0), done, 0.9)

    def grads(fn):
        for p in weights:
            p.grad = None
        fn(rows).backward()
        return [p.grad.clone() for p in weights]

    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(rows), loss_fn(rows))
    for got, want in zip(grads(compiled), grads(loss_fn)):
        torch.testing.assert_close(got, want)


def test_opcheck():
    """torch.library.opcheck: schema, fake tensors, AOT dispatch. The ops have no autograd registration
    (their autograd is ops._DenoiserForwards / ops._loss_with_grads, tested against the reference above and under
    torch.compile), so they are checked on inputs that require no grad."""
    triton_bdm, _ = make_pair()
    sch, R = triton_bdm.schedule, 20
    s, x0, eps = torch.randn(R, N), torch.randn(R, N), torch.randn(R, N)
    a, t = torch.rand(R, M), torch.randint(0, sch.steps, (R,))
    weights = [w.detach().clone().requires_grad_(True) for w in triton_bdm.denoiser.weights()]
    rows = torch.randn(R, 2 * N + M + 1, requires_grad=True)
    buffers = [getattr(sch, name) for name in ops._SCHEDULE_BUFFERS]
    out, pre1, pre2, stats = ops._denoiser_forwards([rows.detach()], [w.detach() for w in weights], [True], "ieee")
    pred = torch.randn(2 * R, N, requires_grad=True)
    done = torch.zeros(R, dtype=torch.bool)
    done[3] = True
    cases = [
        (ops._noised_rows, (x0, eps, t, s, a, sch.sqrt_ab, sch.sqrt_one_minus_ab, sch.steps)),
        (ops._noised_rows, (x0, eps, t, None, None, sch.sqrt_ab, sch.sqrt_one_minus_ab, sch.steps)),
        (ops._denoiser_forwards, ([rows.detach()], [w.detach() for w in weights], [False], "ieee")),
        (ops._denoiser_forwards, ([rows.detach()], [w.detach() for w in weights], [True], "ieee")),
        (ops._denoiser_backward_group, ([torch.randn_like(out)], [rows.detach()], [w.detach() for w in weights],
                                        [pre1], [pre2], [stats], [True] * 11, "ieee")),
        (ops._denoiser_backward_group, ([torch.randn_like(out)], [rows.detach()], [w.detach() for w in weights],
                                        [pre1], [pre2], [stats], [True] + [False] * 10, "ieee")),
        (ops._reverse_chain, ([w.detach() for w in weights], [s], [a], x0, buffers, sch.steps, "sample", "ddim",
                              None, "ieee")),
        (ops._reverse_chain, ([w.detach() for w in weights], [s[:5], s[5:]], [a[:5], a[5:]], x0, buffers, sch.steps,
                              "sample", "ddim", None, "ieee")),
        (ops._td_loss, (pred.detach(), x0, eps, done, 0.9)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_td3sbc_actor_loss_matches_reference():
    """The whole actor loss (SBC sampler + target-denoiser action gradient) and its actor gradients."""
    nets = dict(actor_hidden=(32, 32), critic_hidden=(32, 32), denoiser_hidden=HIDDEN)
    config = dict(w_actor_bc=1.0, w_rel=1.0, precision="ieee", **nets)
    models = [fastbdm.TD3SBC(N, M, config=fastbdm.TD3SBCConfig(backend=backend, **config),
                             device=torch.get_default_device()) for backend in ("triton", "torch")]
    models[1].load_state_dict(models[0].state_dict())
    s, a, s_next, a_next, done = batch()
    b = fastbdm.Batch(s, a, torch.randn(B), s_next, a_next, done, torch.ones(B))
    results = []
    for model in models:
        torch.manual_seed(1)
        loss, metrics = model.actor_loss(b)
        results.append((metrics["sbc"], torch.autograd.grad(loss, list(model.actor.parameters()))))
    (sbc_triton, grads_triton), (sbc_torch, grads_torch) = results
    assert sbc_torch > 0
    torch.testing.assert_close(sbc_triton, sbc_torch, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads_triton, grads_torch):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [0, 1, 2, 3])
def test_every_op_on_few_rows(rows):
    """Any row count >= 0, fewer than one block of every kernel included (the forward without saved
    activations once indexed its statistics in `out`'s rows): each op, and the backward through
    denoiser_forward and td_loss, against the reference. 0 rows: empty outputs, zero weight gradients
    and the loss of no rows, NaN (the mean of nothing), as the reference gives."""
    triton_bdm, _ = make_pair()
    sch, weights = triton_bdm.schedule, [w.detach() for w in triton_bdm.target_denoiser.weights()]
    s, a, s_next, _, _ = bdm_batch(rows, N, M, done_rows=())
    t, z = torch.randint(0, sch.steps, (rows,)), torch.randn(rows, N)
    noise = torch.randn(sch.steps, rows, N)
    x = ops.noised_rows(s_next, z, t, s, a, sch)
    torch.testing.assert_close(x, reference.noised_rows(s_next, z, t, s, a, sch))
    with torch.no_grad():
        torch.testing.assert_close(ops.denoiser_forward(x, weights, precision="ieee"),
                                   reference.denoiser_forward(x, weights), rtol=1e-5, atol=1e-5)
    for sampler in ("ddim", "ddpm"):
        torch.testing.assert_close(ops.reverse_chain(weights, s, a, z, sch, "sample", sampler, noise, precision="ieee"),
                                   reference.reverse_chain(weights, s, a, z, sch, "sample", sampler, noise),
                                   rtol=1e-4, atol=1e-4)
    done = torch.arange(rows) % 2 == 1
    results = []
    for backend in (ops.with_precision("ieee"), reference):
        leaves = [w.clone().requires_grad_(True) for w in weights]
        rows_in = x.clone().requires_grad_(True)
        pred = backend.denoiser_forward(torch.cat([rows_in, rows_in]), leaves)
        loss = backend.td_loss(pred, s_next, z, done, 0.9)
        results.append((loss, *torch.autograd.grad(loss, [rows_in, *leaves])))
    assert results[0][0].shape == () and results[0][1].shape == (rows, x.shape[1])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=rows == 0)


@pytest.mark.parametrize("rows", [0, 1, 2, 3])
def test_bellman_diffusion_on_few_rows(rows):
    """BellmanDiffusion.sample / denoise / td_loss (and its backward) on the triton backend against the
    torch backend at 0 to 3 rows."""
    triton_bdm, torch_bdm = make_pair()
    s, a, s_next, a_next, done = bdm_batch(rows, N, M, done_rows=[0] if rows else ())
    t, eps, z = torch.randint(0, triton_bdm.steps, (rows,)), torch.randn(rows, N), torch.randn(rows, N)
    results = []
    for bdm in (triton_bdm, torch_bdm):
        loss = bdm.td_loss(s, a, s_next, a_next, done, t=t, eps=eps, z=z)
        loss.backward()
        results.append([bdm.sample(s, a, z), bdm.denoise(s_next, s, a, t).detach(), loss.detach(),
                        *(p.grad for p in bdm.denoiser.parameters())])
    assert results[0][0].shape == results[0][1].shape == (rows, N)
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, equal_nan=rows == 0)
