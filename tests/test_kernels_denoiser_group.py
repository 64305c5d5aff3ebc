"""The denoiser group forward (kernels/denoiser_mlp.py mlp_forward_group, fastbdm.ops.denoiser_forwards): up to
three denoisers of the same hidden and output widths, each with its own rows, row count, input width and
weights, in one launch, against the reference (reference.denoiser_forwards) on fresh random inputs, in the
CPU interpreter (tl.dot exact fp32: precision "ieee"; tolerances as test_kernels_forward.py).

The group as the critic side runs it: D' (the SSM denoiser's 2n+1+m input columns, no grad), D (the same
widths, train) and E (the data denoiser's n+1 columns, train), with odd row counts that differ per network
(masked rows in every network's last block, blocks past the smaller networks' rows), at S = 1 (2-D calls and a
stacked seed axis of 1) and S = 3. A network's results must equal, bitwise, its own one-network launch: a
program that read another network's (or seed's) pointers, widths or row count would differ.
"""
import pytest
import torch
from torch.func import grad, vmap

from fastbdm import ops, reference as ref
from fastbdm.kernels.denoiser_mlp import mlp_forward, mlp_forward_group
from fastbdm.launch_count import LaunchCounter
from test_kernels_forward import assert_close_scaled, denoiser_weights, nan_like, torch_activations

N, M, HIDDEN = 11, 3, (48, 40)
ROWS = (29, 53, 19)  # D' (target rows), D (online rows), E (data rows)
CONDITIONAL = (True, True, False)  # E: [x_t, c(t)] input rows, n+1 columns
BLOCKS = dict(block_m=16, block_n=64, block_k=64)  # R 53: four row blocks, E's 19 rows two
KERNEL = ("other", "triton::_mlp_forward_kernel")


def group_inputs(seeds):
    """[(rows, weights)] of D', D and E: 2-D for seeds None, else stacked (S, ...) with distinct seeds."""
    networks = []
    for rows, conditional in zip(ROWS, CONDITIONAL):
        singles = [denoiser_weights(N, M, HIDDEN, conditional) for _ in range(seeds or 1)]
        weights = singles[0] if seeds is None else tuple(torch.stack(ws) for ws in zip(*singles))
        networks.append((torch.randn(*(() if seeds is None else (seeds,)), rows, weights[0].shape[-1]), weights))
    return networks


def stacked_activations(rows, weights):
    """torch_activations of each seed of rows (S, R, D), stacked (S, ...); of rows (R, D) as they are."""
    if rows.dim() == 2:
        return torch_activations(rows, weights)
    per_seed = [torch_activations(rows[k], [w[k] for w in weights]) for k in range(rows.shape[0])]
    return tuple(torch.stack(xs) for xs in zip(*per_seed))


@pytest.mark.parametrize("seeds", [None, 1, 3])
def test_group_forward_matches_the_reference_and_each_networks_own_launch(seeds):
    networks = group_inputs(seeds)
    save = (False, True, True)  # D' no grad, D and E train
    results = mlp_forward_group(networks, save, "ieee", **BLOCKS)
    for (rows, weights), keep, result in zip(networks, save, results):
        out = result[0] if keep else result
        assert out.shape == (*rows.shape[:-1], N)
        assert_close_scaled(out, ref.denoiser_forward(rows, weights))
        alone = mlp_forward(rows, weights, save_activations=keep, precision="ieee", **BLOCKS)
        if keep:
            for saved, expected, own in zip(result[1], stacked_activations(rows, weights), alone[1]):
                assert saved.shape == expected.shape
                assert_close_scaled(saved, expected)
                assert torch.equal(saved, own)
            alone = alone[0]
        assert torch.equal(out, alone)


def test_a_block_past_a_networks_rows_writes_nothing():
    """E's 19 rows and D''s 29 in a grid of D's 53: their outputs (views at the head of NaN buffers one block
    longer) are written in their rows and nowhere after them."""
    networks = group_inputs(None)
    buffers = [nan_like((rows + BLOCKS["block_m"], N)) for rows in ROWS]
    outs = mlp_forward_group(networks, (False, False, False), "ieee", outs=[b[:r] for b, r in zip(buffers, ROWS)],
                             **BLOCKS)
    for out, buffer, rows in zip(outs, buffers, ROWS):
        assert out.data_ptr() == buffer.data_ptr() and torch.isfinite(out).all()
        assert buffer[rows:].isnan().all()


def leaves(networks, trainable):
    """[(rows, weights)] with fresh leaves where trainable[g] is "all" (rows and weights) or "rows"."""
    out = []
    for (rows, weights), train in zip(networks, trainable):
        rows = rows.clone().requires_grad_(train is not None)
        weights = [w.clone().requires_grad_(train == "all") for w in weights]
        out.append((rows if train else rows.detach(), weights))
    return out


@pytest.mark.parametrize("seeds", [None, 3])
@pytest.mark.parametrize("trainable", [(None, "all", "all"), (None, "rows", None)],
                         ids=["critic_side", "actor_step"])
def test_group_gradients_match_torch_autograd_on_the_reference(seeds, trainable):
    """ops.denoiser_forwards (its autograd.Function) against torch autograd through reference.denoiser_forwards:
    values, d loss / d rows and weights of the trained networks (the critic side: D and E, rows and weights; the
    actor step: D' to its rows only, with E and D' reordered as there), no graph on the others, one forward
    launch."""
    networks = group_inputs(seeds)
    if trainable[1] == "rows":  # the actor step: E (no grad), D' (to its rows)
        networks = [networks[2], networks[0]]
        trainable = (None, "rows")
    grad_outs = [torch.randn(*rows.shape[:-1], N) for rows, _ in networks]
    results = []
    for backend in (ops.with_precision("ieee"), ref):
        inputs = leaves(networks, trainable)
        with LaunchCounter() as counter:
            outs = backend.denoiser_forwards(*zip(*inputs))
        loss = sum((out * g).sum() for out, g in zip(outs, grad_outs))
        wrt = [x for (rows, weights), train in zip(inputs, trainable) if train for x in (rows, *weights)
               if x.requires_grad]
        results.append((outs, torch.autograd.grad(loss, wrt)))
        assert [out.requires_grad for out in outs] == [train is not None for train in trainable]
        if backend is not ref:
            assert counter.ops[KERNEL] == 1
    (got_outs, got_grads), (want_outs, want_grads) = results
    for got, want in zip(got_outs, want_outs):
        assert_close_scaled(got.detach(), want.detach())
    assert len(got_grads) == len(want_grads) > 0
    for got, want in zip(got_grads, want_grads):
        assert_close_scaled(got, want, rtol=1e-5)


def test_group_under_vmap_and_grad_as_seed_batch():
    """fastbdm.seed_batch's use: torch.func.grad of a seed's loss over D and E's weights and D''s rows, vmapped
    over 3 seeds with stacked weights (every network shares the seed axis): one forward launch for all seeds and
    networks, values and gradients as the reference backend's, every weight gradient contiguous."""
    seeds, (target, online, data) = 3, group_inputs(3)
    grad_outs = [torch.randn(seeds, rows, N) for rows in ROWS]

    def seed_loss(backend):
        def loss(trained, target_rows, target_weights, online_rows, data_rows, *grad_out):
            outs = backend.denoiser_forwards([target_rows, online_rows, data_rows],
                                             [target_weights, trained["online"], trained["data"]])
            return sum((out * g).sum() for out, g in zip(outs, grad_out))
        return loss

    trained = {"online": list(online[1]), "data": list(data[1])}
    args = (trained, target[0], list(target[1]), online[0], data[0], *grad_outs)
    results = []
    for backend in (ops.with_precision("ieee"), ref):
        with LaunchCounter() as counter:
            value = vmap(seed_loss(backend))(*args)
            grads = vmap(grad(seed_loss(backend), argnums=(0, 1)))(*args)
        results.append((value, grads))
        if backend is not ref:
            assert counter.ops[KERNEL] == 2  # one for the value, one for the gradients' forward
    (got_value, (got_weights, got_rows)), (want_value, (want_weights, want_rows)) = results
    assert got_value.shape == (seeds,)
    assert_close_scaled(got_value, want_value)
    assert_close_scaled(got_rows, want_rows)
    for key in trained:
        for got, want, weight in zip(got_weights[key], want_weights[key], trained[key]):
            assert got.shape == weight.shape
            assert got.is_contiguous()  # biases and gains too: SeedBatch's fused Adam takes them without a copy
            assert_close_scaled(got, want)


@pytest.mark.parametrize("case, message", [
    ("widths", "share their hidden and output widths"), ("seeds", "stack every network's seeds alike"),
    ("four", "1 to 3 networks"), ("layers", "exactly two hidden layers"), ("rows", "W1 takes")])
def test_a_group_that_cannot_run_in_one_launch_is_refused(case, message):
    networks = group_inputs(None)
    if case == "widths":
        networks[2] = (networks[2][0], denoiser_weights(N, 0, (48, 24), conditional=False))
    elif case == "seeds":
        networks[1] = (networks[1][0][None], tuple(w[None] for w in networks[1][1]))
    elif case == "four":
        networks.append(networks[0])
    elif case == "rows":  # E's rows given to D: on a GPU its W1 loads would run past W1
        networks[1] = (networks[2][0], networks[1][1])
    else:
        networks[0] = (networks[0][0], networks[0][1][:8])
    with pytest.raises(ValueError, match=message):
        ops.denoiser_forwards(*zip(*networks), precision="ieee")
