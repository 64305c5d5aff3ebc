"""Triton backend: the functions of fastbdm.reference (noised_rows, denoiser_forward(s), reverse_chain,
td_loss, small_mlp) as torch.library custom ops ("fastbdm::*") over the kernels in fastbdm.kernels.

Each op has a fake (meta) implementation, so torch.compile traces through it and CUDA graphs capture
it; denoiser_forwards, small_mlp and the fused losses are differentiable through torch.autograd.Functions
over the ops (_DenoiserForwards, _SmallMLP, the losses' _loss_with_grads), the others are no-grad. Each op
has a vmap rule, its seed axis (kernels/seed_axis.py), so that torch.func.vmap over seeds runs one launch
for all of them.
Ops take tensors, lists of tensors and plain scalars/strings: weights go in as a list, the schedule as
its buffers.
"""
import functools
from types import SimpleNamespace
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .kernels import actor_terms as actor_terms_kernels, denoiser_backward, denoiser_mlp, noising, state_bc
from .kernels import small_mlp as small_mlp_kernels, td_loss as td_loss_kernels
from .kernels import reverse_chain as reverse_chain_kernels, weight_stationary_chain
from . import reference
from .loss_terms import LossTerm
from .schedule import PREDICTIONS, DiffusionSchedule

# Precision of the MLP kernels' matmuls (fastbdm.kernels.denoiser_mlp.PRECISIONS): "tf32" (default), "tf32x3" or
# "ieee" tl.dot input precision on fp32 data, or "bf16" (bf16 weights, activations and dot operands,
# GPU only). The CPU interpreter computes every fp32 tl.dot exactly.
DEFAULT_PRECISION = "tf32"


# --- noised_rows: no grad ----------------------------------------------------------------------

@torch.library.custom_op("fastbdm::noised_rows", mutates_args=())
def _noised_rows(x0: Tensor, eps: Tensor, t: Tensor, s: Optional[Tensor], a: Optional[Tensor],
                 sqrt_ab: Tensor, sqrt_1m_ab: Tensor, steps: int) -> Tensor:
    return noising.noised_rows(x0, eps, t, s, a, sqrt_ab, sqrt_1m_ab, steps)


@_noised_rows.register_fake
def _(x0, eps, t, s, a, sqrt_ab, sqrt_1m_ab, steps):
    width = x0.shape[-1] + 1 + (s.shape[-1] + a.shape[-1] if s is not None else 0)
    return x0.new_empty((*x0.shape[:-1], width), dtype=torch.float32)


def noised_rows(x0, eps, t, s, a, schedule: DiffusionSchedule) -> Tensor:
    """Denoiser input rows [q(x0, t, eps), s, c(t), a] (R, 2n+1+m); x0, eps, s (R, n), t (R,), a (R, m);
    or every argument and the result with a leading seed axis S (kernels/seed_axis.py)."""
    return _noised_rows(x0, eps, t, s, a, schedule.sqrt_ab, schedule.sqrt_one_minus_ab, schedule.steps)


# --- denoiser_forwards: a group of denoisers in one launch, differentiable in rows and weights -------

WEIGHTS = 10  # tensors per network in a group's flat weight list: Denoiser.weights() of two hidden layers


def _per_network(items: list, size: int = WEIGHTS) -> list:
    """A group's flat list of `size` items per network (weights: WEIGHTS tensors; needs: 1 + WEIGHTS bools),
    network-major, split by network."""
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


@torch.library.custom_op("fastbdm::denoiser_forwards", mutates_args=())
def _denoiser_forwards(rows: List[Tensor], weights: List[Tensor], save: List[bool], precision: str) -> List[Tensor]:
    """Network g: rows[g] (R_g, in_g), weights[WEIGHTS g:WEIGHTS (g + 1)] (denoiser_mlp.mlp_forward_group).
    [out_g (R_g, n) of every g, then pre1 (R_g, H1), pre2 (R_g, H2) (bf16 for precision "bf16") and stats
    (4, R_g) = mean1, rstd1, mean2, rstd2 of every g with save[g]]; with the seed axis each with a leading S
    (stats: after its 4)."""
    stats = [r.new_empty((4, *r.shape[:-1]), dtype=torch.float32) if keep else None for r, keep in zip(rows, save)]
    results = denoiser_mlp.mlp_forward_group(list(zip(rows, _per_network(weights))), save, precision, stats=stats)
    outs = [result[0] if keep else result for result, keep in zip(results, save)]
    acts = [(result[1][0], result[1][3], stat) for result, keep, stat in zip(results, save, stats) if keep]
    return outs + [x for act in acts for x in act]


@_denoiser_forwards.register_fake
def _(rows, weights, save, precision):
    f32, act = torch.float32, lambda ws: denoiser_mlp.matrix_dtype(precision, ws[0])  # noqa: E731 (each its W1's)
    outs = [r.new_empty((*r.shape[:-1], ws[-1].shape[-1]), dtype=f32) for r, ws in zip(rows, _per_network(weights))]
    acts = [(r.new_empty((*r.shape[:-1], ws[0].shape[-2]), dtype=act(ws)),
             r.new_empty((*r.shape[:-1], ws[4].shape[-2]), dtype=act(ws)), r.new_empty((4, *r.shape[:-1]), dtype=f32))
            for r, ws, keep in zip(rows, _per_network(weights), save) if keep]
    return outs + [x for a in acts for x in a]


@torch.library.custom_op("fastbdm::denoiser_backward_group", mutates_args=())
def _denoiser_backward_group(grad_outs: List[Tensor], rows: List[Tensor], weights: List[Tensor], pre1: List[Tensor],
                             pre2: List[Tensor], stats: List[Tensor], needs: List[bool], precision: str
                             ) -> List[Tensor]:
    """The backward of len(grad_outs) denoisers with the same hidden and output widths in one set of launches
    (denoiser_backward.mlp_backward_group): one entry per network in grad_outs, rows, pre1, pre2, stats; weights
    (len(Denoiser.weights()) per network) and needs (one bool for rows then one per weight, per network)
    concatenated. Returns, network by network, the gradients of rows and of the weights where needed, in that
    order, each contiguous (the biases' and gains' too: the fused Adam reads them as they are)."""
    weights, needs = _per_network(weights), _per_network(needs, 1 + WEIGHTS)
    acts = [(p1, st[0], st[1], p2, st[2], st[3]) for p1, p2, st in zip(pre1, pre2, stats)]
    results = denoiser_backward.mlp_backward_group(grad_outs, rows, weights, acts, [n[1:] for n in needs],
                                                   [n[0] for n in needs], precision)
    return [g for (grad_rows, net_grads), n in zip(results, needs) for g, need in zip((grad_rows, *net_grads), n)
            if need]


@_denoiser_backward_group.register_fake
def _(grad_outs, rows, weights, pre1, pre2, stats, needs, precision):
    return [torch.empty_like(y, dtype=torch.float32) for x, w, n in
            zip(rows, _per_network(weights), _per_network(needs, 1 + WEIGHTS)) for y, need in zip([x, *w], n) if need]


def _backward_networks(grad_out: List[Tensor], rows: List[Tensor], weights: List[List[Tensor]], pre1: List[Tensor],
                       pre2: List[Tensor], stats: List[Tensor], needs: List[List[bool]], precision: str
                       ) -> List[Tuple[Optional[Tensor], List[Optional[Tensor]]]]:
    """The backward of a group's networks that got an output gradient, one list entry per network (its
    grad_out, rows, weights (WEIGHTS tensors), saved pre1, pre2, stats and needs (rows + WEIGHTS bools)), in
    one set of launches (_denoiser_backward_group) -> per network (grad rows or None, [grad per weight or None])."""
    grads = iter(_denoiser_backward_group(grad_out, rows, [w for ws in weights for w in ws], pre1, pre2, stats,
                                          [n for ns in needs for n in ns], precision))
    return [_network_grads(grads, ns) for ns in needs]


def _network_grads(grads, needs):
    """One network's (grad rows or None, [grad per weight or None]) from an iterator over
    _denoiser_backward_group's results standing at this network's first: it takes exactly this network's
    results, so one call per network, in order, reads a group's."""
    grad_rows = next(grads) if needs[0] else None
    return grad_rows, [next(grads) if need else None for need in needs[1:]]


class _DenoiserForwards(torch.autograd.Function):
    """(save, precision, *rows, *weights) -> _denoiser_forwards' results, network g's output differentiable in
    its rows and weights through _backward_networks where save[g] (its activations saved), without a graph
    elsewhere. An autograd.Function with setup_context and a generated vmap rule (the ops' own vmap rules
    below), not the op's register_autograd, so that torch.func.grad and vmap compose with it
    (fastbdm.seed_batch)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(save, precision, *tensors):
        rows, weights = tensors[:len(save)], tensors[len(save):]
        return tuple(_denoiser_forwards(list(rows), list(weights), list(save), precision))

    @staticmethod
    def setup_context(ctx, inputs, output):
        save, ctx.precision, *tensors = inputs
        networks = len(save)
        ctx.mark_non_differentiable(*output[networks:], *(out for out, keep in zip(output, save) if not keep))
        ctx.set_materialize_grads(False)  # no zero gradients allocated for the saved activations
        ctx.save = save
        kept = [g for g, keep in enumerate(save) if keep]
        weights = _per_network(tensors[networks:])
        ctx.save_for_backward(*(tensors[g] for g in kept), *(w for g in kept for w in weights[g]),
                              *output[networks:])

    @staticmethod
    def backward(ctx, *grad_outputs):
        networks, kept = len(ctx.save), [g for g, keep in enumerate(ctx.save) if keep]
        saved, count = ctx.saved_tensors, len(kept)
        rows, weights = saved[:count], _per_network(saved[count:count * (1 + WEIGHTS)])
        pre1, pre2, stats = (saved[count * (1 + WEIGHTS) + i::3] for i in range(3))
        needs = [[ctx.needs_input_grad[2 + g], *ctx.needs_input_grad[2 + networks + WEIGHTS * g:][:WEIGHTS]]
                 for g in kept]
        active = [k for k, g in enumerate(kept) if grad_outputs[g] is not None and any(needs[k])]
        pick = lambda xs: [xs[k] for k in active]  # noqa: E731 (the kept networks' entries that get a gradient)
        with torch.no_grad():  # once differentiable (no double backward); under torch.func.grad too
            grads = _backward_networks(pick([grad_outputs[g] for g in kept]), pick(rows), pick(weights), pick(pre1),
                                       pick(pre2), pick(stats), pick(needs), ctx.precision)
        grad_rows, grad_weights = [None] * networks, [None] * networks * WEIGHTS
        for k, (network_rows, network_weights) in zip(active, grads):
            g = kept[k]
            grad_rows[g], grad_weights[WEIGHTS * g:WEIGHTS * (g + 1)] = network_rows, network_weights
        return None, None, *grad_rows, *grad_weights


def denoiser_forwards(rows_list, weights_list, precision: str = DEFAULT_PRECISION) -> List[Tensor]:
    """Denoiser MLPs of the same hidden and output widths in one launch (kernels/denoiser_mlp.py's group,
    up to denoiser_mlp.MAX_NETWORKS): rows_list[g] (R_g, in_g) and weights_list[g] network g's
    Denoiser.weights() -> [(R_g, n)], or with the seed axis rows (S, R_g, in_g), weights stacked (S, ...) ->
    [(S, R_g, n)]. Each output differentiable in its network's rows and weights (gradients fp32, like the
    weights); activations are saved only for the networks with an input that requires grad."""
    weights_list = [list(weights) for weights in weights_list]
    denoiser_mlp.check_layers(weights_list)
    weights = [w for ws in weights_list for w in ws]
    grad = tuple(torch.is_grad_enabled() and (rows.requires_grad or any(w.requires_grad for w in ws))
                 for rows, ws in zip(rows_list, weights_list))
    if any(grad):
        return list(_DenoiserForwards.apply(grad, precision, *rows_list, *weights)[:len(rows_list)])
    return _denoiser_forwards(list(rows_list), weights, [False] * len(rows_list), precision)


def denoiser_forward(rows: Tensor, weights, precision: str = DEFAULT_PRECISION) -> Tensor:
    """Denoiser MLP: rows (R, in_dim) -> (R, n), or rows (S, R, in_dim) with weights stacked (S, ...)
    -> (S, R, n); denoiser_forwards' one-network group."""
    return denoiser_forwards([rows], [weights], precision)[0]


# --- reverse_chain: no grad ---------------------------------------------------------------------

_SCHEDULE_BUFFERS = ("sqrt_ab", "sqrt_one_minus_ab", "sqrt_ab_prev", "sqrt_one_minus_ab_prev", "coef_x0",
                     "coef_xt", "posterior_std")


@torch.library.custom_op("fastbdm::reverse_chain", mutates_args=())
def _reverse_chain(weights: List[Tensor], s: List[Tensor], a: List[Tensor], z: Tensor, schedule_buffers: List[Tensor],
                   steps: int, prediction: str, sampler: str, noise: Optional[Tensor], precision: str) -> Tensor:
    """s, a: one or two row segments each (reverse_chain.row_segments); schedule_buffers: the DiffusionSchedule
    buffers named in _SCHEDULE_BUFFERS, in that order. The kernel:
    weight_stationary_chain.chain_design (FASTBDM_CHAIN, else by device, shape and precision)."""
    seeds = z.shape[0] if z.dim() == 3 else 1
    design = weight_stationary_chain.chain_design(z.device, z.shape[-2], seeds, weights[4].shape[-1], precision)
    if design == "weight_stationary":
        kernel = weight_stationary_chain.weight_stationary_chain
    else:
        kernel = reverse_chain_kernels.reverse_chain
    return kernel(weights, s, a, z, *schedule_buffers, steps, prediction, sampler, noise, precision=precision)


@_reverse_chain.register_fake
def _(weights, s, a, z, schedule_buffers, steps, prediction, sampler, noise, precision):
    return torch.empty_like(z, dtype=torch.float32)


def reverse_chain(weights, s, a, z, schedule: DiffusionSchedule, prediction="sample", sampler="ddim", noise=None,
                  precision: str = DEFAULT_PRECISION):
    """The whole reverse sampler of the SSM denoiser (reference.reverse_chain): s (R, n), a (R, m),
    z (R, n) start noise, noise (steps, R, n) DDPM per-level noise (drawn when None) -> x0 (R, n). s and a may
    be lists of two row segments each ([head, tail], split alike): read in place, not concatenated.
    Seed axis: s, a, z, the result with a leading S, noise (S, steps, R, n), weights stacked (S, ...)."""
    if sampler == "ddpm" and noise is None:
        noise = torch.randn((*z.shape[:-2], schedule.steps, *z.shape[-2:]), device=z.device, dtype=z.dtype)
    buffers = [getattr(schedule, name) for name in _SCHEDULE_BUFFERS]
    s, a = ([x.detach() for x in reverse_chain_kernels.row_segments(rows)] for rows in (s, a))
    return _reverse_chain([w.detach() for w in weights], s, a, z.detach(), buffers,
                          schedule.steps, prediction, sampler, noise, precision)


# --- td_loss: differentiable in pred ------------------------------------------------------------

@torch.library.custom_op("fastbdm::td_loss", mutates_args=())
def _td_loss(pred: Tensor, target1: Tensor, y2: Tensor, done: Tensor, gamma: float) -> Tuple[Tensor, Tensor]:
    """(loss (), d loss / d pred (2R, n)); with the seed axis (loss (S,), d loss_k / d pred_k (S, 2R, n))."""
    return td_loss_kernels.td_loss_fwd_bwd(pred, target1, y2, done, gamma)


@_td_loss.register_fake
def _(pred, target1, y2, done, gamma):
    return pred.new_empty(pred.shape[:-2], dtype=torch.float32), torch.empty_like(pred, dtype=torch.float32)


def _loss_with_grads(name: str, wrt: Tuple[int, ...], values: int, of: Tuple[int, ...] = None):
    """The base of an autograd.Function over the op fastbdm::`name`, a loss kernel that writes the losses'
    gradients in its own launch: its forward (the subclass's, calling the op: torch.compile traces a
    module-level op, not one held in a closure) returns (values outputs, d loss_of[k] / d inputs[wrt[k]] for
    each k), of[k] the index among the values of the loss differentiated (default: all the first, the
    loss); each loss differentiable in its inputs (backward: the saved gradients scaled by the incoming
    one), the other values without a graph. generate_vmap_rule and setup_context, for torch.func.grad and
    vmap, as _DenoiserForwards."""
    of = of or (0,) * len(wrt)

    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(*(x for i, x in enumerate(output) if i not in of))
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*output[values:])
        ctx.input_count = len(inputs)

    def backward(ctx, *grad_values):
        if any(need and i not in wrt for i, need in enumerate(ctx.needs_input_grad)):
            raise RuntimeError(f"fastbdm::{name} is differentiable in inputs {list(wrt)} only: detach the others")
        grads = [None] * ctx.input_count
        for i, k, grad in zip(wrt, of, ctx.saved_tensors):
            grad_loss = grad_values[k]
            if ctx.needs_input_grad[i] and grad_loss is not None:
                grads[i] = grad_loss[(..., *[None] * (grad.dim() - grad_loss.dim()))] * grad
        return tuple(grads)

    methods = dict(setup_context=staticmethod(setup_context), backward=staticmethod(backward), generate_vmap_rule=True)
    return type(f"_{name}_base", (torch.autograd.Function,), methods)


class _TDLoss(_loss_with_grads("td_loss", wrt=(0,), values=1)):
    """_td_loss, differentiable in pred."""

    @staticmethod
    def forward(pred, target1, y2, done, gamma):
        return _td_loss(pred, target1, y2, done, gamma)


def td_loss(pred, target1, y2, done, gamma: float) -> Tensor:
    """BDM TD loss (reference.td_loss): pred (2R, n), target1, y2 (R, n), done (R,) -> scalar; with the
    seed axis pred (S, 2R, n), target1, y2 (S, R, n), done (S, R) -> (S,) losses."""
    return _TDLoss.apply(pred, target1, y2, done, float(gamma))[0]


# --- small_mlp (the actor, the twin critics): differentiable in both inputs and the weights ----------

def _small_mlp_shape(x1, weights, layout, members):
    """([S,] members, R, N_OUT) of small_mlp's output."""
    n_out = weights[-2].shape[-1] if layout == "ensemble" else weights[-2].shape[-2]
    return (*x1.shape[:-2], members, x1.shape[-2], n_out)


@torch.library.custom_op("fastbdm::small_mlp", mutates_args=())
def _small_mlp(x1: Tensor, x2: Optional[Tensor], weights: List[Tensor], layout: str, layer_norm: bool, members: int,
               out_scale: float, precision: str) -> Tensor:
    return small_mlp_kernels.small_mlp_forward(x1, x2, weights, layout, layer_norm, members, out_scale, precision)


@_small_mlp.register_fake
def _(x1, x2, weights, layout, layer_norm, members, out_scale, precision):
    return x1.new_empty(_small_mlp_shape(x1, weights, layout, members), dtype=torch.float32)


@torch.library.custom_op("fastbdm::small_mlp_train", mutates_args=())
def _small_mlp_train(x1: Tensor, x2: Optional[Tensor], weights: List[Tensor], layout: str, layer_norm: bool,
                     members: int, out_scale: float, precision: str) -> List[Tensor]:
    """[out ([S,] members, R, N_OUT), stats ([S,] 2L, members, R), pre_1 .. pre_L ([S,] members, R, H_l)]."""
    out, (stats, pres) = small_mlp_kernels.small_mlp_forward(x1, x2, weights, layout, layer_norm, members, out_scale,
                                                              precision, save_activations=True)
    return [out, stats, *pres]


@_small_mlp_train.register_fake
def _(x1, x2, weights, layout, layer_norm, members, out_scale, precision):
    lead, rows = x1.shape[:-2], x1.shape[-2]
    matrices = small_mlp_kernels.split_weights(weights, layer_norm)[0]
    hidden = small_mlp_kernels.widths(matrices, layout)[1:-1]
    return [x1.new_empty(_small_mlp_shape(x1, weights, layout, members), dtype=torch.float32),
            x1.new_empty((*lead, 2 * len(hidden), members, rows), dtype=torch.float32),
            *(x1.new_empty((*lead, members, rows, h), dtype=torch.float32) for h in hidden)]


@torch.library.custom_op("fastbdm::small_mlp_backward", mutates_args=())
def _small_mlp_backward(grad_out: Tensor, x1: Tensor, x2: Optional[Tensor], weights: List[Tensor], out: Tensor,
                        stats: Tensor, pres: List[Tensor], layout: str, layer_norm: bool, members: int,
                        out_scale: float, needs: List[bool], precision: str) -> List[Tensor]:
    """[grad x1 if needs[0], grad x2 if needs[1], every weight's gradient if needs[2]] (two launches)."""
    gx1, gx2, grads = small_mlp_kernels.small_mlp_backward(
        grad_out, x1, x2, weights, out, (stats, pres), layout, layer_norm, members, out_scale, needs[0], needs[1],
        needs[2], precision)
    return [g for g in (gx1, gx2) if g is not None] + list(grads or ())


@_small_mlp_backward.register_fake
def _(grad_out, x1, x2, weights, out, stats, pres, layout, layer_norm, members, out_scale, needs, precision):
    inputs = [torch.empty_like(x, dtype=torch.float32) for x, need in ((x1, needs[0]), (x2, needs[1])) if need]
    return inputs + ([torch.empty_like(w, dtype=torch.float32) for w in weights] if needs[2] else [])


class _SmallMLP(torch.autograd.Function):
    """(x1, x2, layout, layer_norm, members, out_scale, precision, *weights) -> _small_mlp_train's results,
    differentiable in x1, x2 and the weights through _small_mlp_backward; an autograd.Function for
    torch.func.grad and vmap, as _DenoiserForwards."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x1, x2, layout, layer_norm, members, out_scale, precision, *weights):
        return tuple(_small_mlp_train(x1, x2, list(weights), layout, layer_norm, members, out_scale, precision))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x1, x2, *config = inputs[:7]
        ctx.config = config
        out, stats, *pres = output
        ctx.mark_non_differentiable(stats, *pres)
        ctx.set_materialize_grads(False)
        ctx.pres = len(pres)
        ctx.save_for_backward(x1, x2, out, stats, *pres, *inputs[7:])

    @staticmethod
    def backward(ctx, grad_out, *_grad_acts):
        x1, x2, out, stats, *rest = ctx.saved_tensors
        pres, weights = rest[:ctx.pres], rest[ctx.pres:]
        layout, layer_norm, members, out_scale, precision = ctx.config
        needs = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], any(ctx.needs_input_grad[7:])]
        if grad_out is None:
            return (None,) * (7 + len(weights))
        with torch.no_grad():
            grads = iter(_small_mlp_backward(grad_out, x1, x2, weights, out, stats, pres, layout, layer_norm,
                                             members, out_scale, needs, precision))
        gx1, gx2 = (next(grads) if need else None for need in needs[:2])
        return (gx1, gx2, None, None, None, None, None,
                *(next(grads) if needs[2] else None for _ in weights))


def small_mlp(x1, x2, weights, layout, layer_norm, members=1, out_scale=0.0, precision: str = DEFAULT_PRECISION):
    """The actor's or the twin critics' MLP (reference.small_mlp) fused: x1 (R, D1), x2 (R, D2) or None ->
    (members, R, N_OUT); seed axis: x1, x2 (S, R, .), weights stacked (S, ...) -> (S, members, R, N_OUT).
    Differentiable in x1, x2 and the weights (one forward launch, two backward launches)."""
    weights = list(weights)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (x1, x2, *weights)):
        return _SmallMLP.apply(x1, x2, layout, layer_norm, members, float(out_scale), precision, *weights)[0]
    return _small_mlp(x1, x2, weights, layout, layer_norm, members, float(out_scale), precision)



class SavedForward(NamedTuple):
    """A small MLP's fused forward with what its backward reads (small_mlp_forward(save_activations=True)):
    out ([S,] members, R, N_OUT), stats ([S,] 2L, members, R), pres ([S,] members, R, H_l) per hidden layer."""

    out: Tensor
    stats: Tensor
    pres: Tuple[Tensor, ...]


def small_mlp_saved(x1, x2, weights, layout, layer_norm, members=1, out_scale=0.0,
                    precision: str = DEFAULT_PRECISION) -> SavedForward:
    """small_mlp with its saved activations (the same one launch): out differentiable as small_mlp's when an
    input requires grad (the activations are the autograd node's own), else no graph."""
    weights = list(weights)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (x1, x2, *weights)):
        out, stats, *pres = _SmallMLP.apply(x1, x2, layout, layer_norm, members, float(out_scale), precision, *weights)
    else:
        out, stats, *pres = _small_mlp_train(x1, x2, weights, layout, layer_norm, members, float(out_scale), precision)
    return SavedForward(out, stats, tuple(pres))


@torch.library.custom_op("fastbdm::target_values", mutates_args=())
def _target_values(s: Tensor, normal: Tensor, actor_weights: List[Tensor], critic_weights: List[Tensor],
                   layer_norm: bool, members: int, max_action: float, policy_noise: float, noise_clip: float,
                   precision: str) -> Tuple[Tensor, Tensor]:
    return small_mlp_kernels.target_values(s, normal, actor_weights, critic_weights, layer_norm, members, max_action,
                                           policy_noise, noise_clip, precision)


@_target_values.register_fake
def _(s, normal, actor_weights, critic_weights, layer_norm, members, max_action, policy_noise, noise_clip, precision):
    lead, rows = s.shape[:-2], s.shape[-2]
    return (s.new_empty((*lead, rows, actor_weights[-2].shape[-2]), dtype=torch.float32),
            s.new_empty((*lead, members, rows), dtype=torch.float32))


def target_values(s, normal, actor_weights, critic_weights, layer_norm: bool, members: int, max_action: float,
                  policy_noise: float, noise_clip: float, precision: str = DEFAULT_PRECISION) -> Tuple[Tensor, Tensor]:
    """reference.target_values in one launch (no grad): the target actor (Actor's layout) and critics (TwinCritic's)
    at s (R, n) with the smoothing draws normal (R, m) -> (a' (R, m), Q' (members, R)); seed axis: a leading S."""
    return _target_values(s.detach(), normal.detach(), [w.detach() for w in actor_weights],
                          [w.detach() for w in critic_weights], bool(layer_norm), int(members), float(max_action),
                          float(policy_noise), float(noise_clip), precision)


@torch.library.custom_op("fastbdm::policy_value_grads", mutates_args=())
def _policy_value_grads(grad_q: Tensor, grad_a: Tensor, s: Tensor, actor_weights: List[Tensor], a: Tensor,
                        actor_stats: Tensor, actor_pres: List[Tensor], critic_weights: List[Tensor],
                        critic_stats: Tensor, critic_pres: List[Tensor], layer_norm: bool, max_action: float,
                        precision: str) -> List[Tensor]:
    """The actor's weights' gradients (two launches: small_mlp_kernels.policy_value_backward)."""
    return list(small_mlp_kernels.policy_value_backward(grad_q, grad_a, s, actor_weights, a, (actor_stats, actor_pres),
                                                        critic_weights, (critic_stats, critic_pres), layer_norm,
                                                        max_action, precision))


@_policy_value_grads.register_fake
def _(grad_q, grad_a, s, actor_weights, a, actor_stats, actor_pres, critic_weights, critic_stats, critic_pres,
      layer_norm, max_action, precision):
    return [torch.empty_like(w, dtype=torch.float32) for w in actor_weights]


def policy_value_grads(grad_q, grad_a, s, actor_weights, actor: SavedForward, critic_weights, critic: SavedForward,
                       layer_norm: bool, max_action: float, precision: str = DEFAULT_PRECISION) -> List[Tensor]:
    """reference.policy_value_grads in two launches (no add of Q1's action gradient to grad_a, no launch of the
    actor's own deltas): grad_q (R,) d loss / d Q1(s, a), grad_a (R, m) d loss / d a, s (R, n); actor, critic the
    SavedForwards of a = pi(s) (Actor's layout) and of Q1(s, a) (TwinCritic's, members 1) -> the gradients of the
    actor's weights (its weights' order). Seed axis: a leading S on every tensor, weights stacked."""
    detached = lambda ws: [w.detach() for w in ws]  # noqa: E731
    return _policy_value_grads(grad_q.detach(), grad_a.detach(), s.detach(), detached(actor_weights),
                               actor.out.detach().squeeze(-3), actor.stats, detached(actor.pres),
                               detached(critic_weights), critic.stats, detached(critic.pres), bool(layer_norm),
                               float(max_action), precision)

# --- vmap over seeds: each op's batching rule is its seed axis (kernels/seed_axis.py) -----------------

def _seed_first(x, dim, seeds):
    """x with its vmapped dimension `dim` first, or expanded to `seeds` copies when unbatched (dim None)."""
    if x is None:
        return None
    return x.expand(seeds, *x.shape) if dim is None else x.movedim(dim, 0)


def _register_seed_vmap(op, seeded, out_dims):
    """torch.func.vmap of `op` calls it once with every `seeded` argument (by position; a list: each
    tensor) given a leading seed axis; the other arguments (schedule buffers, flags, scalars) must not be
    vmapped. out_dims: where the results' seed axis is (an int, also for each tensor of a list result, or a
    tuple: one per result), or a function of the op's arguments giving a list, one per tensor of its list result."""

    def rule(info, in_dims, *args):
        args = list(args)
        for i, dim in enumerate(in_dims):
            if i in seeded:
                args[i] = ([_seed_first(x, d, info.batch_size) for x, d in zip(args[i], dim or [None] * len(args[i]))]
                           if isinstance(args[i], list) else _seed_first(args[i], dim, info.batch_size))
            elif dim is not None and any(d is not None for d in (dim if isinstance(dim, list) else [dim])):
                raise ValueError(f"{op}: argument {i} cannot vary over the vmapped (seed) axis")
        result = op(*args)
        if callable(out_dims):
            return result, out_dims(*args)
        return result, [out_dims] * len(result) if isinstance(result, list) else out_dims

    torch.library.register_vmap(op, rule)


_register_seed_vmap(_noised_rows, {0, 1, 2, 3, 4}, 0)
_register_seed_vmap(_denoiser_forwards, {0, 1},  # outputs, then (pre1, pre2, stats) of each saving network
                    lambda rows, weights, save, precision: [0] * len(rows) + [0, 0, 1] * sum(save))
_register_seed_vmap(_reverse_chain, {0, 1, 2, 3, 8}, 0)
_register_seed_vmap(_td_loss, {0, 1, 2, 3}, (0, 0))
_register_seed_vmap(_small_mlp, {0, 1, 2}, 0)
_register_seed_vmap(_small_mlp_train, {0, 1, 2}, 0)
_register_seed_vmap(_small_mlp_backward, {0, 1, 2, 3, 4, 5, 6}, 0)
_register_seed_vmap(_target_values, {0, 1, 2, 3}, (0, 0))
_register_seed_vmap(_policy_value_grads, set(range(10)), 0)


def _denoiser_backward_group_vmap(info, in_dims, grad_outs, rows, weights, pre1, pre2, stats, needs, precision):
    """Every network's tensors with the seed axis first; stats arrive as (4, R) per seed (vmapped at
    in_dims[5]), the op takes (4, S, R)."""
    S = info.batch_size

    def seeded(xs, dims):
        return [_seed_first(x, d, S) for x, d in zip(xs, dims or [None] * len(xs))]

    stats = [st.unsqueeze(1).expand(4, S, st.shape[-1]) if d is None else st.movedim(d, 1)
             for st, d in zip(stats, in_dims[5] or [None] * len(stats))]
    grads = _denoiser_backward_group(seeded(grad_outs, in_dims[0]), seeded(rows, in_dims[1]),
                                     seeded(weights, in_dims[2]), seeded(pre1, in_dims[3]), seeded(pre2, in_dims[4]),
                                     stats, needs, precision)
    return grads, [0] * len(grads)


torch.library.register_vmap(_denoiser_backward_group, _denoiser_backward_group_vmap)


# --- the critic side fused (issue 14): BDM TD rows, critic TD loss, denoising loss, target action ----------

@torch.library.custom_op("fastbdm::bdm_td_rows", mutates_args=())
def _bdm_td_rows(s: Tensor, a: Tensor, s_next: Tensor, a_next: Tensor, samples: Tensor, done: Tensor, t: Tensor,
                 eps: Tensor, sqrt_ab: Tensor, sqrt_1m_ab: Tensor, steps: int, prediction: int, mask_done: bool,
                 data_x0: Optional[Tensor], data_t: Optional[Tensor], data_eps: Optional[Tensor]
                 ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(online rows, target rows, target1, the data denoiser's rows ((.., 0, n+1) without data_x0))."""
    return noising.bdm_td_rows(s, a, s_next, a_next, samples, done, t, eps, sqrt_ab, sqrt_1m_ab, steps, prediction,
                               mask_done, data_x0, data_t, data_eps)


@_bdm_td_rows.register_fake
def _(s, a, s_next, a_next, samples, done, t, eps, sqrt_ab, sqrt_1m_ab, steps, prediction, mask_done, data_x0, data_t,
      data_eps):
    *lead, rows, n = s.shape
    width = 2 * n + 1 + a.shape[-1]
    return (s.new_empty((*lead, 2 * rows, width)), s.new_empty((*lead, rows, width)), s.new_empty((*lead, rows, n)),
            s.new_empty((*lead, rows if data_x0 is not None else 0, n + 1)))


def bdm_td_rows(s, a, s_next, a_next, samples, done, t, eps, schedule: DiffusionSchedule, prediction: str,
                mask_done: bool = True, data: Tuple[Tensor, Tensor, Tensor] = None):
    """reference.bdm_td_rows in one launch (no grad): (online rows (2R, 2n+1+m), target rows (R, 2n+1+m),
    target1 (R, n), the data denoiser's rows (R, n+1) from data = (x0, t, eps), None without data); every
    argument and result may have a leading seed axis S."""
    *rows, data_rows = _bdm_td_rows(s, a, s_next, a_next, samples, done, t, eps, schedule.sqrt_ab,
                                    schedule.sqrt_one_minus_ab, schedule.steps, PREDICTIONS.index(prediction),
                                    mask_done, *(data or (None,) * 3))
    return (*rows, None if data is None else data_rows)


def td_loss_term(pred, target1, y2, done, gamma: float) -> LossTerm:
    """td_loss as a LossTerm with d loss / d pred."""
    loss, grad = _TDLoss.apply(pred, target1, y2, done, float(gamma))
    return LossTerm(loss, pred, grad)


@torch.library.custom_op("fastbdm::td_and_denoising_loss", mutates_args=())
def _td_and_denoising_loss(pred: Tensor, target1: Tensor, y2: Tensor, done: Tensor, out: Tensor, x0: Tensor,
                           eps: Tensor, t: Tensor, sqrt_ab: Tensor, sqrt_1m_ab: Tensor, gamma: float, prediction: int
                           ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(td loss, denoising loss, d td loss / d pred, d denoising loss / d out); with the seed axis a leading S."""
    td, grad_pred, data, grad_out = td_loss_kernels.td_loss_fwd_bwd(
        pred, target1, y2, done, gamma, data=(out, x0, eps, t, sqrt_ab, sqrt_1m_ab, prediction))
    return td, data, grad_pred, grad_out


@_td_and_denoising_loss.register_fake
def _(pred, target1, y2, done, out, x0, eps, t, sqrt_ab, sqrt_1m_ab, gamma, prediction):
    return (pred.new_empty(pred.shape[:-2]), pred.new_empty(pred.shape[:-2]), torch.empty_like(pred),
            torch.empty_like(out))


class _TDAndDenoisingLoss(_loss_with_grads("td_and_denoising_loss", wrt=(0, 4), values=2, of=(0, 1))):
    """_td_and_denoising_loss, the TD loss differentiable in pred, the denoising loss in out."""

    @staticmethod
    def forward(pred, target1, y2, done, out, x0, eps, t, sqrt_ab, sqrt_1m_ab, gamma, prediction):
        return _td_and_denoising_loss(pred, target1, y2, done, out, x0, eps, t, sqrt_ab, sqrt_1m_ab, gamma, prediction)


def td_and_denoising_terms(pred, target1, y2, done, gamma: float, out, x0, eps, t, schedule: DiffusionSchedule,
                           prediction: str) -> Tuple[LossTerm, LossTerm]:
    """(td_loss_term, denoising_loss) in one launch: the BDM TD loss and the data denoiser's, each with its
    gradient w.r.t. its network's output."""
    td, data, grad_pred, grad_out = _TDAndDenoisingLoss.apply(
        pred, target1, y2, done, out, x0, eps, t, schedule.sqrt_ab, schedule.sqrt_one_minus_ab, float(gamma),
        PREDICTIONS.index(prediction))
    return LossTerm(td, pred, grad_pred), LossTerm(data, out, grad_out)


@torch.library.custom_op("fastbdm::critic_td_loss", mutates_args=())
def _critic_td_loss(q: Tensor, q_target: Tensor, next_action: Tensor, data_next_action: Tensor, rewards: Tensor,
                    dones: Tensor, valid: Tensor, gamma: float, w_bc: float) -> Tuple[Tensor, Tensor, Tensor]:
    """(loss (), q mean (), d loss / d q (members, B)); with the seed axis a leading S on each."""
    return td_loss_kernels.critic_td_loss_fwd_bwd(q, q_target, next_action, data_next_action, rewards, dones, valid,
                                                  gamma, w_bc)


@_critic_td_loss.register_fake
def _(q, q_target, next_action, data_next_action, rewards, dones, valid, gamma, w_bc):
    lead = q.shape[:-2]
    return q.new_empty(lead), q.new_empty(lead), torch.empty_like(q)


class _CriticTDLoss(_loss_with_grads("critic_td_loss", wrt=(0,), values=2)):
    """_critic_td_loss, differentiable in q."""

    @staticmethod
    def forward(q, q_target, next_action, data_next_action, rewards, dones, valid, gamma, w_bc):
        return _critic_td_loss(q, q_target, next_action, data_next_action, rewards, dones, valid, gamma, w_bc)


def critic_td_loss(q, q_target, next_action, data_next_action, rewards, dones, valid, gamma: float, w_bc: float,
                   broadcast_penalty: bool = False):
    """reference.critic_td_loss in one launch, with d loss / d q in its LossTerm -> (LossTerm, q mean);
    the compat broadcast_penalty through the reference."""
    if broadcast_penalty:
        return reference.critic_td_loss(q, q_target, next_action, data_next_action, rewards, dones, valid, gamma, w_bc,
                                        broadcast_penalty)
    loss, q_mean, grad = _CriticTDLoss.apply(q, q_target, next_action, data_next_action, rewards, dones, valid,
                                             float(gamma), float(w_bc))
    return LossTerm(loss, q, grad), q_mean


@torch.library.custom_op("fastbdm::denoising_loss", mutates_args=())
def _denoising_loss(out: Tensor, x0: Tensor, eps: Tensor, t: Tensor, sqrt_ab: Tensor, sqrt_1m_ab: Tensor,
                    prediction: int) -> Tuple[Tensor, Tensor]:
    """(loss (), d loss / d out (R, n)); with the seed axis a leading S on each."""
    return td_loss_kernels.denoising_loss_fwd_bwd(out, x0, eps, t, sqrt_ab, sqrt_1m_ab, prediction)


@_denoising_loss.register_fake
def _(out, x0, eps, t, sqrt_ab, sqrt_1m_ab, prediction):
    return out.new_empty(out.shape[:-2]), torch.empty_like(out)


class _DenoisingLoss(_loss_with_grads("denoising_loss", wrt=(0,), values=1)):
    """_denoising_loss, differentiable in out."""

    @staticmethod
    def forward(out, x0, eps, t, sqrt_ab, sqrt_1m_ab, prediction):
        return _denoising_loss(out, x0, eps, t, sqrt_ab, sqrt_1m_ab, prediction)


def denoising_loss(out, x0, eps, t, schedule: DiffusionSchedule, prediction: str) -> LossTerm:
    """reference.denoising_loss in one launch, with d loss / d out in its LossTerm."""
    loss, grad = _DenoisingLoss.apply(out, x0, eps, t, schedule.sqrt_ab, schedule.sqrt_one_minus_ab,
                                      PREDICTIONS.index(prediction))
    return LossTerm(loss, out, grad)


@torch.library.custom_op("fastbdm::smoothed_action", mutates_args=())
def _smoothed_action(action: Tensor, normal: Tensor, policy_noise: float, noise_clip: float, max_action: float
                     ) -> Tensor:
    return noising.smoothed_action(action, normal, policy_noise, noise_clip, max_action)


@_smoothed_action.register_fake
def _(action, normal, policy_noise, noise_clip, max_action):
    return torch.empty_like(action, dtype=torch.float32)


def smoothed_action(action, normal, policy_noise: float, noise_clip: float, max_action: float) -> Tensor:
    """reference.smoothed_action in one launch (no grad)."""
    return _smoothed_action(action.detach(), normal, float(policy_noise), float(noise_clip), float(max_action))


_register_seed_vmap(_bdm_td_rows, set(range(8)) | {13, 14, 15}, (0, 0, 0, 0))
_register_seed_vmap(_td_and_denoising_loss, set(range(8)), (0, 0, 0, 0))
_register_seed_vmap(_smoothed_action, {0, 1}, 0)
_register_seed_vmap(_critic_td_loss, set(range(7)), (0, 0, 0))
_register_seed_vmap(_denoising_loss, {0, 1, 2, 3}, (0, 0))


# === the actor loss's terms (issue 14: kernels/state_bc.py, kernels/actor_terms.py) ==================

@torch.library.custom_op("fastbdm::sbc_states", mutates_args=())
def _sbc_states(s: Tensor, normal: Optional[Tensor]) -> Tensor:
    return state_bc.sbc_states(s, normal)


@_sbc_states.register_fake
def _(s, normal):
    return s.new_empty((*s.shape[:-2], 2 * s.shape[-2], s.shape[-1]), dtype=torch.float32)


def sbc_states(s: Tensor, normal: Optional[Tensor]) -> Tensor:
    """reference.sbc_states in one launch: s (B, n), normal (B, n) or None (standardised) -> (2B, n);
    seed axis (S, B, n) -> (S, 2B, n). No grad."""
    return _sbc_states(s.detach(), normal)


@torch.library.custom_op("fastbdm::sbc_rows", mutates_args=())
def _sbc_rows(x0: Tensor, eps: Tensor, t: Tensor, s: Tensor, a: Tensor, sqrt_ab: Tensor, sqrt_1m_ab: Tensor,
              steps: int) -> Tuple[Tensor, Tensor]:
    return state_bc.sbc_rows(x0, eps, t, s, a, sqrt_ab, sqrt_1m_ab, steps)


@_sbc_rows.register_fake
def _(x0, eps, t, s, a, sqrt_ab, sqrt_1m_ab, steps):
    n, m = x0.shape[-1], a.shape[-1]
    return (x0.new_empty((*x0.shape[:-1], n + 1), dtype=torch.float32),
            x0.new_empty((*x0.shape[:-1], 2 * n + 1 + m), dtype=torch.float32))


class _SBCRows(torch.autograd.Function):
    """_sbc_rows, differentiable in a (D''s rows' action columns); an autograd.Function for torch.func.grad
    and vmap, as _DenoiserForwards."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x0, eps, t, s, a, sqrt_ab, sqrt_1m_ab, steps):
        return _sbc_rows(x0, eps, t, s, a, sqrt_ab, sqrt_1m_ab, steps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[0])
        ctx.set_materialize_grads(False)
        ctx.action_column = 2 * inputs[0].shape[-1] + 1

    @staticmethod
    def backward(ctx, _grad_e_rows, grad_d_rows):
        if any(ctx.needs_input_grad[:4]):
            raise RuntimeError("fastbdm::sbc_rows is differentiable in a only: detach x0, eps and s")
        grad_a = None if grad_d_rows is None else grad_d_rows[..., ctx.action_column:]
        return None, None, None, None, grad_a, None, None, None


def sbc_rows(x0, eps, t, s, a, schedule: DiffusionSchedule) -> Tuple[Tensor, Tensor]:
    """reference.sbc_rows in one launch: x0, eps, s (R, n), t (R,), a (R, m) -> (E's rows (R, n+1), D''s
    rows (R, 2n+1+m)), differentiable in a; seed axis: a leading S on every argument and result."""
    args = (x0, eps, t, s, a, schedule.sqrt_ab, schedule.sqrt_one_minus_ab, schedule.steps)
    if torch.is_grad_enabled() and a.requires_grad:
        return _SBCRows.apply(*args)
    return _sbc_rows(*args)


@torch.library.custom_op("fastbdm::sbc_loss", mutates_args=())
def _sbc_loss(e_out: Tensor, d_out: Tensor, t: Tensor, eta: Tensor, scale: float, broadcast: bool
              ) -> Tuple[Tensor, Tensor]:
    """(loss (), d loss / d d_out (R, n)); with the seed axis (loss (S,), grad (S, R, n))."""
    return state_bc.sbc_loss(e_out, d_out, t, eta, scale, broadcast)


@_sbc_loss.register_fake
def _(e_out, d_out, t, eta, scale, broadcast):
    return d_out.new_empty(d_out.shape[:-2], dtype=torch.float32), torch.empty_like(d_out, dtype=torch.float32)


class _SBCLoss(_loss_with_grads("sbc_loss", wrt=(1,), values=1)):
    """_sbc_loss, differentiable in d_out."""

    @staticmethod
    def forward(e_out, d_out, t, eta, scale, broadcast):
        return _sbc_loss(e_out, d_out, t, eta, scale, broadcast)


def sbc_loss(e_out, d_out, t, schedule: DiffusionSchedule, scale: float, broadcast: bool) -> Tensor:
    """reference.sbc_loss in one launch, its gradient w.r.t. d_out written by the same launch: e_out,
    d_out (R, n), t (R,) -> scalar; seed axis (S, R, n), t (S, R) -> (S,)."""
    return sbc_loss_term(e_out, d_out, t, schedule, scale, broadcast).loss


def sbc_loss_term(e_out, d_out, t, schedule: DiffusionSchedule, scale: float, broadcast: bool) -> LossTerm:
    """sbc_loss as a LossTerm with d loss / d d_out."""
    loss, grad = _SBCLoss.apply(e_out, d_out, t, schedule.eta, float(scale), bool(broadcast))
    return LossTerm(loss, d_out, grad)


@torch.library.custom_op("fastbdm::actor_terms", mutates_args=())
def _actor_terms(a: Tensor, actions: Tensor, q1: Tensor, other_loss: Optional[Tensor], other_grad: Optional[Tensor],
                 alpha: float, w_bc: float, mean_squared: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, bc, lambda, d loss / d a, d loss / d q1); the scalars (S,) with the seed axis."""
    return actor_terms_kernels.actor_terms(a, actions, q1, alpha, w_bc, mean_squared, other_loss, other_grad)


@_actor_terms.register_fake
def _(a, actions, q1, other_loss, other_grad, alpha, w_bc, mean_squared):
    scalar = lambda: q1.new_empty(q1.shape[:-1], dtype=torch.float32)  # noqa: E731
    return (scalar(), scalar(), scalar(), torch.empty_like(a, dtype=torch.float32),
            torch.empty_like(q1, dtype=torch.float32))


class _ActorTerms(_loss_with_grads("actor_terms", wrt=(0, 2), values=3)):
    """_actor_terms, the loss differentiable in a and q1; bc and lambda values (metrics)."""

    @staticmethod
    def forward(a, actions, q1, alpha, w_bc, mean_squared):
        return _actor_terms(a, actions, q1, None, None, alpha, w_bc, mean_squared)


def actor_terms(a, actions, q1, alpha: float, w_bc: float, mean_squared: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """reference.actor_terms in one launch, which also writes the loss's gradients w.r.t. a and q1:
    (loss, bc, lambda), the loss differentiable in a and q1, bc and lambda values without a graph."""
    args = (a, actions, q1, float(alpha), float(w_bc), bool(mean_squared))
    if torch.is_grad_enabled() and (a.requires_grad or q1.requires_grad):
        return _ActorTerms.apply(*args)[:3]
    return _actor_terms(a, actions, q1, None, None, *args[3:])[:3]


def actor_terms_grads(a, actions, q1, alpha: float, w_bc: float, mean_squared: bool, other: LossTerm = None
                      ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """actor_terms plus another term of the actor loss, no graph: (loss, bc, lambda, d loss / d a, d loss / d q1)
    with other.loss added into the loss and other.grad, its gradient w.r.t. a (a column view is read in
    place), into d loss / d a by the same launch, so that backward starts at a with one gradient."""
    other_loss, other_grad = (None, None) if other is None else (other.loss.detach(), other.grad)
    return _actor_terms(a.detach(), actions, q1.detach(), other_loss, other_grad, float(alpha), float(w_bc),
                        bool(mean_squared))


_register_seed_vmap(_sbc_states, {0, 1}, 0)
_register_seed_vmap(_sbc_rows, {0, 1, 2, 3, 4}, (0, 0))
_register_seed_vmap(_sbc_loss, {0, 1, 2}, (0, 0))
_register_seed_vmap(_actor_terms, {0, 1, 2, 3, 4}, (0, 0, 0, 0, 0))


# One namespace per precision, made once: torch.compile traces the lookup below, but not the
# construction of a SimpleNamespace (a graph break under fullgraph=True).
_AT_PRECISION = {
    precision: SimpleNamespace(noised_rows=noised_rows, td_loss=td_loss, td_loss_term=td_loss_term,
                               bdm_td_rows=bdm_td_rows, critic_td_loss=critic_td_loss, denoising_loss=denoising_loss,
                               td_and_denoising_terms=td_and_denoising_terms,
                               smoothed_action=smoothed_action,
                               sbc_states=sbc_states, sbc_rows=sbc_rows, sbc_loss=sbc_loss, sbc_loss_term=sbc_loss_term,
                               actor_terms=actor_terms, actor_terms_grads=actor_terms_grads,
                               denoiser_forward=functools.partial(denoiser_forward, precision=precision),
                               denoiser_forwards=functools.partial(denoiser_forwards, precision=precision),
                               small_mlp=functools.partial(small_mlp, precision=precision),
                               small_mlp_saved=functools.partial(small_mlp_saved, precision=precision),
                               target_values=functools.partial(target_values, precision=precision),
                               policy_value_grads=functools.partial(policy_value_grads, precision=precision),
                               reverse_chain=functools.partial(reverse_chain, precision=precision))
    for precision in denoiser_mlp.PRECISIONS
}


def with_precision(precision: str) -> SimpleNamespace:
    """This module's kernel functions (noised_rows, denoiser_forward(s), reverse_chain, td_loss, small_mlp, and the
    actor loss's sbc_states, sbc_rows, sbc_loss, actor_terms)
    with the MLP kernels' precision fixed, the interface of fastbdm.reference; and the Triton backend's own
    small_mlp_saved, target_values, policy_value_grads (TD3SBC's target side and actor backward)."""
    denoiser_mlp.check_precision(precision)
    return _AT_PRECISION[precision]
