"""The seed axis (kernels/seed_axis.py): every Triton kernel, its reference and its op on S seeds
stacked (rows (S, R, width), weights (S, ...)), in the CPU interpreter at small sizes.

Two checks per kernel, at S = 1 and S = 3, odd row counts and widths (R = 37, n = 11, m = 3, hidden
48, 40: masked rows and columns in every program):
- against the reference on the same stacked inputs: the tolerances of test_kernels_forward.py /
  test_kernels_backward.py (fp32 summation order only; the interpreter's tl.dot is exact fp32);
- against S separate single-seed (2-D) calls: bitwise equal for what the Triton programs compute. A
  program of seed k runs exactly the instructions of the single-seed program on seed k's data, so any
  difference means a program read another seed's weights or rows, or wrote outside its seed. The
  backward's weight and input gradients are torch matmuls (batched over seeds), which a BLAS may block
  differently for S = 3 than for S = 1: those agree to 1e-6 relative (fp32 rounding of K <= 48 terms).
Seeds get distinct weights and data, so a seed reading seed 0's weights fails both checks.
"""
import pytest
import torch

from fastbdm import ops, reference as ref
from fastbdm.kernels.denoiser_backward import mlp_backward
from fastbdm.kernels.denoiser_mlp import mlp_forward
from fastbdm.kernels.noising import noised_rows
from fastbdm.kernels.reverse_chain import reverse_chain
from fastbdm.kernels.td_loss import td_loss_fwd_bwd
from fastbdm.schedule import DiffusionSchedule
from test_kernels_forward import assert_close_scaled, denoiser_weights

N, M, R, HIDDEN, STEPS = 11, 3, 37, (48, 40), 4
BLOCKS = dict(block_m=64, block_n=64, block_k=64)
SEEDS = [1, 3]
MATMUL_GRADS = {0, 1, 5, 9}  # rows, W1, W2, W_out in (grad rows, *weight grads): torch's matmuls


def stacked_weights(seeds, conditional=True):
    """Weights of `seeds` different denoisers, stacked (S, ...), and the per-seed tuples."""
    singles = [denoiser_weights(N, M, HIDDEN, conditional) for _ in range(seeds)]
    return tuple(torch.stack(ws) for ws in zip(*singles)), singles


def per_seed(fn, *stacked):
    """fn(seed k's slices) for each k, results stacked on a leading seed axis (tuples element-wise)."""
    results = [fn(*(None if x is None else x[k] for x in stacked)) for k in range(stacked[0].shape[0])]
    if isinstance(results[0], tuple):
        return tuple(None if r[0] is None else torch.stack(r) for r in zip(*results))
    return torch.stack(results)


def chain_args(sched):
    return (sched.sqrt_ab, sched.sqrt_one_minus_ab, sched.sqrt_ab_prev, sched.sqrt_one_minus_ab_prev,
            sched.coef_x0, sched.coef_xt, sched.posterior_std, sched.steps)


@pytest.mark.parametrize("seeds", SEEDS)
@pytest.mark.parametrize("conditional", [True, False])
def test_noised_rows_seed_axis(seeds, conditional):
    sched = DiffusionSchedule(STEPS)
    x0, eps, s = torch.randn(3, seeds, R, N)
    a, t = torch.randn(seeds, R, M), torch.randint(0, STEPS, (seeds, R))
    if not conditional:
        s = a = None
    got = noised_rows(x0, eps, t, s, a, sched.sqrt_ab, sched.sqrt_one_minus_ab, STEPS, block_m=64)
    if conditional:
        torch.testing.assert_close(got, ref.noised_rows(x0, eps, t, s, a, sched), rtol=1e-6, atol=1e-6)
    assert torch.equal(got, per_seed(lambda *xs: noised_rows(*xs, sched.sqrt_ab, sched.sqrt_one_minus_ab, STEPS,
                                                             block_m=64), x0, eps, t, s, a))


@pytest.mark.parametrize("seeds", SEEDS)
def test_td_loss_seed_axis(seeds):
    gamma = 0.99
    pred = torch.randn(seeds, 2 * R, N, requires_grad=True)
    target1, y2 = torch.randn(2, seeds, R, N)
    done = torch.rand(seeds, R) < 0.3
    expected = ref.td_loss(pred, target1, y2, done, gamma)
    assert expected.shape == (seeds,)
    expected.sum().backward()  # seed k's loss depends on seed k's pred only: d sum / d pred_k = d loss_k / d pred_k
    loss, grad = td_loss_fwd_bwd(pred.detach(), target1, y2, done, gamma, block_m=16)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(grad, pred.grad, rtol=1e-6, atol=1e-9)
    single = per_seed(lambda *xs: td_loss_fwd_bwd(*xs, gamma, block_m=16), pred.detach(), target1, y2, done)
    assert torch.equal(loss, single[0]) and torch.equal(grad, single[1])


@pytest.mark.parametrize("seeds", SEEDS)
def test_mlp_forward_seed_axis(seeds):
    weights, singles = stacked_weights(seeds)
    rows = torch.randn(seeds, R, weights[0].shape[2])
    got, acts = mlp_forward(rows, weights, save_activations=True, precision="ieee", **BLOCKS)
    assert got.shape == (seeds, R, N) and [x.shape for x in acts] == [(seeds, R, 48), (seeds, R), (seeds, R),
                                                                      (seeds, R, 40), (seeds, R), (seeds, R)]
    assert_close_scaled(got, ref.denoiser_forward(rows, weights))
    for k in range(seeds):
        single, single_acts = mlp_forward(rows[k], singles[k], save_activations=True, precision="ieee", **BLOCKS)
        assert torch.equal(got[k], single), k
        assert all(torch.equal(x[k], y) for x, y in zip(acts, single_acts)), k
    assert torch.equal(mlp_forward(rows, weights, precision="ieee", **BLOCKS), got)


@pytest.mark.parametrize("seeds", SEEDS)
@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "posterior_mean"])
def test_reverse_chain_seed_axis(seeds, sampler):
    weights, singles = stacked_weights(seeds)
    sched = DiffusionSchedule(STEPS)
    s, z = torch.randn(2, seeds, R, N)
    a, noise = torch.randn(seeds, R, M), torch.randn(seeds, STEPS, R, N)
    blocks = dict(BLOCKS, block_m=32)  # two row blocks a seed
    got = reverse_chain(weights, s, a, z, *chain_args(sched), "epsilon", sampler, noise, precision="ieee", **blocks)
    assert_close_scaled(got, ref.reverse_chain(weights, s, a, z, sched, "epsilon", sampler, noise))
    for k in range(seeds):
        single = reverse_chain(singles[k], s[k], a[k], z[k], *chain_args(sched), "epsilon", sampler, noise[k],
                               precision="ieee", **blocks)
        assert torch.equal(got[k], single), k


@pytest.mark.parametrize("seeds", SEEDS)
def test_mlp_backward_seed_axis(seeds):
    """Against autograd of the stacked reference (test_kernels_backward.py's tolerance) and per seed."""
    weights, singles = stacked_weights(seeds)
    rows, grad_out = torch.randn(seeds, R, weights[0].shape[2]), torch.randn(seeds, R, N)
    leaves = [w.clone().requires_grad_(True) for w in weights]
    rows_leaf = rows.clone().requires_grad_(True)
    expected = torch.autograd.grad(ref.denoiser_forward(rows_leaf, leaves), [rows_leaf, *leaves], grad_out)
    _, acts = mlp_forward(rows, weights, save_activations=True, precision="ieee")
    grad_rows, grads = mlp_backward(grad_out, rows, weights, acts, precision="ieee")
    for i, (got, want) in enumerate(zip((grad_rows, *grads), expected)):
        assert got.shape == want.shape, i
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=lambda m: f"gradient {i}: {m}")
    for k in range(seeds):
        _, acts_k = mlp_forward(rows[k], singles[k], save_activations=True, precision="ieee")
        rows_k, grads_k = mlp_backward(grad_out[k], rows[k], singles[k], acts_k, precision="ieee")
        for i, (x, y) in enumerate(zip((grad_rows, *grads), (rows_k, *grads_k))):
            if i in MATMUL_GRADS:
                torch.testing.assert_close(x[k], y, rtol=1e-6, atol=1e-6)
            else:
                assert torch.equal(x[k], y), (k, i)


def test_reference_seed_axis_is_each_seed_alone():
    """The stacked reference equals the single-seed reference seed by seed (batched vs single matmuls:
    the same fp32 products, summed in the same order on the CPU; 1e-6 allows a different blocking)."""
    weights, singles = stacked_weights(3)
    rows = torch.randn(3, R, weights[0].shape[2])
    sched = DiffusionSchedule(STEPS)
    s, z = torch.randn(2, 3, R, N)
    a, noise = torch.randn(3, R, M), torch.randn(3, STEPS, R, N)
    forward = ref.denoiser_forward(rows, weights)
    chain = ref.reverse_chain(weights, s, a, z, sched, "sample", "ddpm", noise)
    for k in range(3):
        torch.testing.assert_close(forward[k], ref.denoiser_forward(rows[k], singles[k]), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(chain[k], ref.reverse_chain(singles[k], s[k], a[k], z[k], sched, "sample", "ddpm",
                                                               noise[k]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fn", [ref.denoiser_forward, mlp_forward])
def test_unstacked_weights_for_stacked_rows_are_refused(fn):
    _, singles = stacked_weights(1)
    with pytest.raises(ValueError, match="weights stacked .* torch.stack"):
        fn(torch.randn(2, R, singles[0][0].shape[1]), singles[0])


def test_ops_seed_axis_with_autograd():
    """fastbdm.ops on stacked seeds: forward, per-seed TD losses and the gradients of their sum (seed k's
    parameters get seed k's gradient alone) against the reference; the chain; opcheck (fake shapes)."""
    weights, _ = stacked_weights(3)
    sched = DiffusionSchedule(STEPS)
    s, z = torch.randn(2, 3, R, N)
    a, t = torch.randn(3, R, M), torch.randint(0, STEPS, (3, R))
    done = torch.rand(3, R) < 0.3
    x = ops.noised_rows(torch.cat([s, z], 1), torch.cat([z, s], 1), t.repeat(1, 2), s.repeat(1, 2, 1),
                        a.repeat(1, 2, 1), sched)
    torch.testing.assert_close(x, ref.noised_rows(torch.cat([s, z], 1), torch.cat([z, s], 1), t.repeat(1, 2),
                                                  s.repeat(1, 2, 1), a.repeat(1, 2, 1), sched))
    results = []
    for backend in (ops.with_precision("ieee"), ref):
        leaves = [w.clone().requires_grad_(True) for w in weights]
        loss = backend.td_loss(backend.denoiser_forward(x, leaves), s, z, done, 0.9)
        results.append((loss, *torch.autograd.grad(loss.sum(), leaves)))
        results[-1] += (backend.reverse_chain(weights, s, a, z, sched, "sample", "ddim"),)
    assert results[0][0].shape == (3,)
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    out, pre1, pre2, stats = ops._denoiser_forwards([x], list(weights), [True], "ieee")
    torch.library.opcheck(ops._denoiser_forwards, ([x], list(weights), [True], "ieee"))
    torch.library.opcheck(ops._denoiser_backward_group, ([torch.randn_like(out)], [x], list(weights), [pre1], [pre2],
                                                         [stats], [True] * 11, "ieee"))
    torch.library.opcheck(ops._td_loss, (torch.randn(3, 2 * R, N), s, z, done, 0.9))
