"""The grouped denoiser backward (kernels/denoiser_backward.mlp_backward_group, the op
fastbdm::denoiser_backward_group): several networks with the same hidden and output widths, different input
widths and row counts, in one launch per hidden layer and one column-sum launch, against torch autograd of
reference.denoiser_forward per network and seed; the input gradient folded into the layer-1 launch against
the matmul it replaces. CPU interpreter: tl.dot is exact fp32, tolerances as tests/test_kernels_backward.py."""
import pytest
import torch

from fastbdm import ops, reference
from fastbdm.kernels import denoiser_backward
from fastbdm.kernels.denoiser_backward import mlp_backward, mlp_backward_group
from fastbdm.kernels.denoiser_mlp import mlp_forward
from fastbdm.launch_count import LaunchCounter
from fastbdm.networks import Denoiser

N, M, HIDDEN = 5, 2, 24
NAMES = ("W1", "b1", "g1", "beta1", "W2", "b2", "g2", "beta2", "W_out", "b_out")
TOL = dict(rtol=1e-4, atol=1e-4)


def seeded_weights(in_dim, seeds):
    """Denoiser weights for `seeds` seeds stacked (S, ...) with W1 (S, HIDDEN, in_dim) (2n+1+m: D, D'; n+1: E),
    LayerNorm gains and biases randomised (the default 1/0 would hide their gradients)."""
    nets = [Denoiser(N, M, hidden=(HIDDEN, HIDDEN)) for _ in range(seeds)]
    weights = [torch.stack(ws).detach() for ws in zip(*(net.weights() for net in nets))]
    weights[0] = torch.randn(seeds, HIDDEN, in_dim) / in_dim ** 0.5
    for k in (2, 6):
        weights[k].uniform_(0.5, 1.5)
        weights[k + 1].normal_(0.0, 0.3)
    return weights


def network(rows, in_dim, seeds):
    """(grad_out, rows, weights, acts) of a network on `rows` rows with the seed axis S = seeds."""
    weights = seeded_weights(in_dim, seeds)
    x = torch.randn(seeds, rows, in_dim)
    _, acts = mlp_forward(x, weights, save_activations=True, precision="ieee")
    return torch.randn(seeds, rows, N), x, weights, acts


def autograd(grad_out, x, weights):
    """(grad rows, *grad weights) of reference.denoiser_forward, seed by seed, stacked."""
    per_seed = []
    for k in range(x.shape[0]):
        leaves = [x[k].clone().requires_grad_(True), *(w[k].clone().requires_grad_(True) for w in weights)]
        out = reference.denoiser_forward(leaves[0], leaves[1:])
        per_seed.append(torch.autograd.grad(out, leaves, grad_out[k]))
    return [torch.stack(g) for g in zip(*per_seed)]


# (rows, input width, need_weight_grads, need_input_grad) per network: D on odd 2B-like rows with both
# gradients, E (n+1 columns) with weight gradients only, D' with its input gradient only (the actor step)
CONDITIONED = 2 * N + 1 + M
GROUP = [(37, CONDITIONED, True, True), (19, N + 1, True, False), (45, CONDITIONED, False, True)]


@pytest.mark.parametrize("seeds", [1, 3])
@pytest.mark.parametrize("count", [2, 3])
def test_group_matches_autograd_in_one_launch_per_layer(seeds, count):
    spec = GROUP[:count]
    nets = [network(rows, width, seeds) for rows, width, _, _ in spec]
    with LaunchCounter() as counter:
        results = mlp_backward_group([n[0] for n in nets], [n[1] for n in nets], [n[2] for n in nets],
                                     [n[3] for n in nets], [s[2] for s in spec], [s[3] for s in spec], "ieee")
    assert counter.ops["other", "triton::_ln_relu_bwd_kernel"] == 2  # one per hidden layer, every network
    assert counter.ops["other", "triton::_column_sum_kernel"] == 1  # every network's partial sums
    # the weight-gradient matmuls only, 3 per network that wants them: no input-gradient matmul
    assert counter.ops.get(("other", "aten::bmm"), 0) == 3 * sum(s[2] for s in spec)
    for (grad_out, x, weights, _), (_, _, weight_grads, input_grad), (grad_rows, grads) in zip(nets, spec, results):
        expected = autograd(grad_out, x, weights)
        if input_grad:
            torch.testing.assert_close(grad_rows, expected[0], **TOL)
        else:
            assert grad_rows is None
        for name, got, want in zip(NAMES, grads, expected[1:]):
            if weight_grads:
                torch.testing.assert_close(got, want, **TOL, msg=lambda m: f"{name}: {m}")
            else:
                assert got is None, name


def test_group_of_two_dimensional_networks_and_a_subset_of_weights():
    """Rows (R, D) without the seed axis; one network asks for a subset of its weight gradients."""
    nets = [network(rows, width, 1) for rows, width in ((21, CONDITIONED), (33, N + 1))]
    wanted = [i % 3 == 0 for i in range(len(NAMES))]
    results = mlp_backward_group([n[0][0] for n in nets], [n[1][0] for n in nets],
                                 [[w[0] for w in n[2]] for n in nets], [[a[0] for a in n[3]] for n in nets],
                                 [wanted, True], [False, True], "ieee")
    for (grad_out, x, weights, _), flags, (grad_rows, grads) in zip(nets, (wanted, [True] * 10), results):
        expected = [g[0] for g in autograd(grad_out, x, weights)]
        assert (grad_rows is None) == (flags is wanted)
        if grad_rows is not None:
            torch.testing.assert_close(grad_rows, expected[0], **TOL)
        for name, want_it, got, want in zip(NAMES, flags, grads, expected[1:]):
            if want_it:
                torch.testing.assert_close(got, want, **TOL, msg=lambda m: f"{name}: {m}")
            else:
                assert got is None, name


@pytest.mark.parametrize("seeds", [1, 3])
@pytest.mark.parametrize("width, rows", [(CONDITIONED, 45), (N + 1, 19), (2 * 17 + 1 + 6, 33)])
def test_folded_input_gradient_matches_the_matmul(monkeypatch, seeds, width, rows):
    """d rows = dz1 @ W1 inside the layer-1 launch (BLOCK_D 16, 32, 64 here) against the torch matmul it
    replaces (FOLD_MAX_WIDTH 0: every input gradient by the matmul), input gradient only and with weights."""
    grad_out, x, weights, acts = network(rows, width, seeds)
    for need_weights in (False, True):
        with LaunchCounter() as counter:
            folded, _ = mlp_backward(grad_out, x, weights, acts, need_weight_grads=need_weights, precision="ieee")
        assert counter.ops.get(("other", "aten::bmm"), 0) == 3 * need_weights
        monkeypatch.setattr(denoiser_backward, "FOLD_MAX_WIDTH", 0)
        with LaunchCounter() as counter:
            matmul, _ = mlp_backward(grad_out, x, weights, acts, need_weight_grads=need_weights, precision="ieee")
        assert counter.ops["other", "aten::bmm"] == 3 * need_weights + 1
        monkeypatch.undo()
        torch.testing.assert_close(folded, matmul, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(folded, autograd(grad_out, x, weights)[0], **TOL)


def test_inputs_wider_than_the_fold_take_the_matmul():
    grad_out, x, weights, acts = network(9, denoiser_backward.FOLD_MAX_WIDTH + 3, 1)
    with LaunchCounter() as counter:
        grad_rows, _ = mlp_backward(grad_out, x, weights, acts, need_weight_grads=False, precision="ieee")
    assert counter.ops["other", "aten::bmm"] == 1
    torch.testing.assert_close(grad_rows, autograd(grad_out, x, weights)[0], **TOL)


def test_group_rejects_networks_of_other_output_widths():
    a, b = network(5, N + 1, 1), network(5, N + 1, 1)
    b_weights = [*b[2][:8], torch.randn(1, N + 1, HIDDEN), torch.randn(1, N + 1)]
    with pytest.raises(ValueError, match="hidden or output widths"):
        mlp_backward_group([a[0], b[0]], [a[1], b[1]], [a[2], b_weights], [a[3], b[3]], [True, True], [True, True])


def test_group_rejects_rows_of_another_width_than_w1():
    a, b = network(5, N + 1, 1), network(5, CONDITIONED, 1)
    with pytest.raises(ValueError, match="network 1: rows of width 6 for a W1 that takes"):
        mlp_backward_group([a[0], b[0]], [a[1], a[1]], [a[2], b[2]], [a[3], b[3]], [True, True], [True, True])


def test_one_row_with_any_stride_of_its_row_axis():
    """A (S, 1, n) gradient whose row stride is not n (torch calls it contiguous: vmap's movedim gives such
    layouts) is read by the seed and row strides of the dense buffers, not its own (a GPU would read out of
    bounds): the same gradients as from the plain layout."""
    grad_out, x, weights, acts = network(1, CONDITIONED, 3)
    odd = torch.empty_strided(grad_out.shape, (N, 1000, 1)).copy_(grad_out)
    assert odd.is_contiguous() and odd.stride(1) != N
    got, want = (mlp_backward(g, x, weights, acts, precision="ieee") for g in (odd, grad_out))
    for g, w in zip((got[0], *got[1]), (want[0], *want[1])):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def op_inputs(seeds, spec):
    """The op's arguments for networks `spec` (rows, width, need weights, need rows) on the seed axis."""
    grad_outs, rows, weights, pre1, pre2, stats, needs = [], [], [], [], [], [], []
    for count, width, weight_grads, input_grad in spec:
        grad_out, x, w, acts = network(count, width, seeds)
        grad_outs.append(grad_out)
        rows.append(x)
        weights += w
        pre1.append(acts[0])
        pre2.append(acts[3])
        stats.append(torch.stack([acts[1], acts[2], acts[4], acts[5]]))
        needs += [input_grad, *[weight_grads] * len(w)]
    return grad_outs, rows, weights, pre1, pre2, stats, needs


def test_op_returns_each_networks_denoiser_backward_and_passes_opcheck():
    """Network by network exactly what the op returns for that network alone, for mixed needs."""
    args = op_inputs(3, GROUP)
    got = ops._denoiser_backward_group(*args, "ieee")
    want = []
    for i in range(len(GROUP)):
        want += ops._denoiser_backward_group([args[0][i]], [args[1][i]], args[2][10 * i : 10 * i + 10], [args[3][i]],
                                             [args[4][i]], [args[5][i]], args[6][11 * i : 11 * i + 11], "ieee")
    assert len(got) == len(want) == 11 + 10 + 1  # D: rows and its 10 weights; E: its 10 weights; D': rows
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)
    torch.library.opcheck(ops._denoiser_backward_group, (*args, "ieee"))


def test_op_under_vmap_over_seeds():
    """torch.func.vmap of the op over the seeds (as fastbdm.seed_batch runs the ops): one stacked call, every
    gradient contiguous; the stats vmapped at their seed dimension 1, one network's weights shared by every seed
    (unbatched)."""
    spec = GROUP[:2]
    grad_outs, rows, weights, pre1, pre2, stats, needs = op_inputs(3, spec)
    shared = [w[0] for w in weights[10:]]  # E's weights the same for each seed: not vmapped

    def per_seed(grad_outs, rows, own, pre1, pre2, stats):
        return ops._denoiser_backward_group(grad_outs, rows, own + shared, pre1, pre2, stats, needs, "ieee")

    # the activations of E under shared weights (recomputed), so that the expected call is consistent
    expanded = [w.expand(3, *w.shape) for w in shared]
    _, acts = mlp_forward(rows[1], expanded, save_activations=True, precision="ieee")
    pre1[1], pre2[1] = acts[0], acts[3]
    stats[1] = torch.stack([acts[1], acts[2], acts[4], acts[5]])
    got = torch.func.vmap(per_seed, in_dims=(0, 0, 0, 0, 0, 1))(grad_outs, rows, weights[:10], pre1, pre2, stats)
    want = ops._denoiser_backward_group(grad_outs, rows, weights[:10] + expanded, pre1, pre2, stats, needs, "ieee")
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)
    # every gradient (S, ...) contiguous, the biases' and gains' too: SeedBatch's fused Adam takes them uncopied
    assert all(g.is_contiguous() for g in got)
    expected = autograd(grad_outs[1], rows[1], expanded)
    torch.testing.assert_close(got[-10], expected[1], **TOL)  # E's W1 gradient (its first of 10), seed by seed
