"""The bf16 storage path of the MLP kernels (precision "bf16": bf16 weight matrices and hidden
activations, bf16 dot operands, fp32 accumulation and statistics), in the CPU interpreter.

The interpreter computes bf16 dot products wrongly, so precision "bf16" itself is refused there (and
compiled for sm_90 in test_kernels_forward); these tests run the same kernels with bf16 weight
matrices and activation buffers but exact fp32 dots ("ieee"). The reference is the fp32 network with
the same bf16 matrices (exact in fp32) and its post-ReLU activations rounded to bf16.

Tolerances: a bf16 value carries 8 significant bits. The interpreter rounds fp32 -> bf16 toward zero,
torch (and the GPU) to nearest, so a stored activation may differ from the reference's by one bf16
ulp: at most 2^-7 of its magnitude. Downstream, such one-ulp differences in some of the K = 64
activations of a row move the next layer's LayerNorm output and the network output by ~2^-8 of their
scale, compounded over the chain's 10 levels: 2e-2 of the output's scale (measured <= 8e-3 on 3 seeds).
"""
import os

import pytest
import torch

from fastbdm import reference as ref
from fastbdm.kernels.denoiser_backward import mlp_backward
from fastbdm.kernels.denoiser_mlp import mlp_forward
from fastbdm.kernels.reverse_chain import reverse_chain
from fastbdm.schedule import DiffusionSchedule
from test_kernels_forward import BLOCKS, assert_close_scaled, denoiser_weights, nan_like, run_chain

BF16_ULP = 2.0 ** -7
MATRICES = (0, 4, 8)


def bf16_weights(n, m, hidden):
    """(bf16-stored weights for the kernels, the same values in fp32 for the reference)."""
    weights = [w.clone() for w in denoiser_weights(n, m, hidden)]
    for i in MATRICES:
        weights[i] = weights[i].bfloat16()
    return weights, [w.float() for w in weights]


def to_bf16(x):
    """x rounded to bf16 (to nearest), in fp32; the rounding is the identity for autograd (straight through)."""
    return x + (x.bfloat16().float() - x).detach()


def rounded_forward(rows, weights):
    """reference.denoiser_forward with every post-ReLU activation rounded to bf16 -> (out, pre1, pre2)."""
    w1, b1, g1, beta1, w2, b2, g2, beta2, wo, bo = weights
    layer_norm = torch.nn.functional.layer_norm
    pre1 = to_bf16(torch.relu(rows @ w1.T + b1))
    pre2 = to_bf16(torch.relu(layer_norm(pre1, pre1.shape[-1:], g1, beta1) @ w2.T + b2))
    return layer_norm(pre2, pre2.shape[-1:], g2, beta2) @ wo.T + bo, pre1, pre2


@pytest.mark.parametrize("n, m, rows, hidden", [(11, 3, 37, (64, 64)), (17, 6, 100, (96, 40))])
def test_mlp_forward_stores_bf16_activations(n, m, rows, hidden):
    stored, exact = bf16_weights(n, m, hidden)
    inputs = torch.randn(rows, exact[0].shape[1])
    out = nan_like((rows, n))
    got, (pre1, mean1, rstd1, pre2, mean2, rstd2) = mlp_forward(
        inputs, stored, save_activations=True, precision="ieee", out=out, **dict(BLOCKS, block_k=16))
    want, want_pre1, want_pre2 = rounded_forward(inputs, exact)
    assert got is out and got.dtype == torch.float32
    assert pre1.dtype == pre2.dtype == torch.bfloat16
    # layer 1 sees only exact inputs: its stored activations are the reference's up to one bf16 ulp
    torch.testing.assert_close(pre1.float(), want_pre1, rtol=BF16_ULP, atol=1e-6)
    assert_close_scaled(pre2.float(), want_pre2, rtol=2e-2)
    # the statistics are those of the stored (rounded) activations
    var1, mean1_stored = torch.var_mean(pre1.float(), dim=-1, correction=0)
    torch.testing.assert_close(mean1, mean1_stored, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rstd1, torch.rsqrt(var1 + 1e-5), rtol=1e-4, atol=1e-6)
    assert torch.isfinite(mean2).all() and torch.isfinite(rstd2).all()
    assert_close_scaled(got, want, rtol=2e-2)


@pytest.mark.parametrize("prediction, sampler", [("sample", "ddim"), ("v", "ddpm"), ("epsilon", "posterior_mean")])
def test_reverse_chain_with_bf16_weights(prediction, sampler):
    n, m, rows = 11, 3, 37
    stored, exact = bf16_weights(n, m, (64, 64))
    sched = DiffusionSchedule(10)
    s, z = torch.randn(2, rows, n)
    a = torch.randn(rows, m)
    noise = torch.randn(10, rows, n)
    got = run_chain(stored, s, a, z, sched, prediction, sampler, noise, **BLOCKS)
    assert_close_scaled(got, ref.reverse_chain(exact, s, a, z, sched, prediction, sampler, noise=noise), rtol=2e-2)


def test_backward_reads_bf16_activations():
    """Gradients from bf16-saved activations: fp32, within the bf16 tolerance of autograd through the
    rounded reference (its rounding passes gradients straight through, as the kernels do).

    A one-ulp rounding difference upstream flips the ReLU gate of pre-activations within ~2^-8 of
    zero, which changes those few gradient entries by O(1): compared in relative L2 norm, 5e-2
    (measured 0.5-2e-2; torch's own rounded and unrounded gradients differ by 0.3-1.4e-2)."""
    n, m, rows = 17, 6, 45
    stored, exact = bf16_weights(n, m, (64, 64))
    inputs, grad_out = torch.randn(rows, exact[0].shape[1]), torch.randn(rows, n)
    _, acts = mlp_forward(inputs, stored, save_activations=True, precision="ieee", **BLOCKS)
    grad_rows, grads = mlp_backward(grad_out, inputs, stored, acts, precision="ieee")
    params = [w.clone().requires_grad_(True) for w in exact]
    x = inputs.clone().requires_grad_(True)
    want = torch.autograd.grad(rounded_forward(x, params)[0], [x, *params], grad_out)
    for name, g, w in zip(("rows", "W1", "b1", "g1", "beta1", "W2", "b2", "g2", "beta2", "W_out", "b_out"),
                          (grad_rows, *grads), want):
        assert g.dtype == torch.float32 and torch.isfinite(g).all(), name
        assert (g - w).norm() <= 5e-2 * w.norm(), name


COMPILED_ONLY = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="bf16 dot products run compiled on a CUDA GPU only (FASTBDM_TEST_DEVICE=cuda, see conftest.py); "
           "the storage path above runs everywhere")


@COMPILED_ONLY
def test_bf16_precision_matches_the_rounded_reference():
    """precision "bf16" end to end on the GPU: also the dot operands (inputs, LayerNorm outputs, chain
    state) are rounded to bf16, a further 2^-9 relative per operand: 3e-2 of the output's scale
    (the reference under torch's CPU bf16 autocast is off by <= 5e-3 forward, <= 9e-3 after the chain)."""
    n, m, rows = 17, 6, 300
    _, exact = bf16_weights(n, m, (512, 512))
    inputs = torch.randn(rows, exact[0].shape[1])
    got, acts = mlp_forward(inputs, exact, save_activations=True, precision="bf16")
    assert acts[0].dtype == torch.bfloat16
    assert_close_scaled(got, rounded_forward(inputs, exact)[0], rtol=3e-2)

    sched = DiffusionSchedule(10)
    s, z = torch.randn(2, rows, n)
    a = torch.randn(rows, m)
    chain = reverse_chain(exact, s, a, z, sched.sqrt_ab, sched.sqrt_one_minus_ab, sched.sqrt_ab_prev,
                          sched.sqrt_one_minus_ab_prev, sched.coef_x0, sched.coef_xt, sched.posterior_std,
                          sched.steps, precision="bf16")
    assert_close_scaled(chain, ref.reverse_chain(exact, s, a, z, sched), rtol=3e-2)

    grad_out = torch.randn(rows, n)
    grad_rows, grads = mlp_backward(grad_out, inputs, exact, acts, precision="bf16")
    params = [w.clone().requires_grad_(True) for w in exact]
    x = inputs.clone().requires_grad_(True)
    want = torch.autograd.grad(rounded_forward(x, params)[0], [x, *params], grad_out)
    for g, w in zip((grad_rows, *grads), want):
        assert (g - w).norm() <= 5e-2 * w.norm()
