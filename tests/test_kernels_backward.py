"""Triton denoiser backward (kernels/denoiser_backward.py) against torch autograd of
reference.denoiser_forward, in the CPU interpreter (tl.dot there is exact fp32, like input_precision="ieee").

Tolerances: every gradient is a sum of at most a few hundred fp32 products of O(1..10) terms, so
fp32 rounding leaves ~1e-6 relative error; 1e-4 relative + 1e-4 absolute (on gradients of size
up to ~50) leaves room for summation-order differences and still catches any wrong term (those are
O(1)). The float64 test shows the Triton error is of the order of torch fp32's own error.
"""
import pytest
import torch

from fastbdm import reference
from fastbdm.kernels.denoiser_backward import mlp_backward
from fastbdm.kernels.denoiser_mlp import mlp_forward
from fastbdm.networks import Denoiser

NAMES = ("W1", "b1", "g1", "beta1", "W2", "b2", "g2", "beta2", "W_out", "b_out")


def make_net(obs, act, hidden):
    """Denoiser with randomised LayerNorm gains/biases (the default 1/0 would hide their gradients)."""
    net = Denoiser(obs, act, hidden=(hidden, hidden))
    with torch.no_grad():
        for norm in net.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.3)
    return net


def torch_grads(net, rows, grad_out, dtype=torch.float32):
    """(grad rows, *grad weights) of reference.denoiser_forward by torch autograd in `dtype`."""
    weights = [w.detach().to(dtype).requires_grad_(True) for w in net.weights()]
    rows = rows.to(dtype).requires_grad_(True)
    out = reference.denoiser_forward(rows, weights)
    return torch.autograd.grad(out, [rows, *weights], grad_out.to(dtype))


def triton_grads(net, rows, grad_out, **flags):
    weights = [w.detach() for w in net.weights()]
    _, acts = mlp_forward(rows, weights, save_activations=True, precision="ieee")
    return mlp_backward(grad_out, rows, weights, acts, precision="ieee", **flags)


@pytest.mark.parametrize("obs, act, hidden, R", [(11, 3, 64, 77), (17, 6, 64, 45), (17, 6, 512, 20)])
def test_backward_matches_autograd(obs, act, hidden, R):
    net = make_net(obs, act, hidden)
    rows = torch.randn(R, net.in_dim)
    grad_out = torch.randn(R, obs)
    expected = torch_grads(net, rows, grad_out)
    grad_rows, grads = triton_grads(net, rows, grad_out)
    torch.testing.assert_close(grad_rows, expected[0], rtol=1e-4, atol=1e-4)
    for name, got, want in zip(NAMES, grads, expected[1:]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


def test_backward_error_is_fp32_rounding():
    """max |triton - float64| is within a small factor of max |torch fp32 - float64|, per gradient."""
    net = make_net(17, 6, 64)
    rows, grad_out = torch.randn(77, net.in_dim), torch.randn(77, 17)
    exact = torch_grads(net, rows, grad_out, torch.float64)
    fp32 = torch_grads(net, rows, grad_out)
    grad_rows, grads = triton_grads(net, rows, grad_out)
    for name, got, ref32, ref64 in zip(("rows", *NAMES), (grad_rows, *grads), fp32, exact):
        scale = ref64.abs().max().item()
        err_triton = (got.double() - ref64).abs().max().item() / scale
        err_torch = (ref32.double() - ref64).abs().max().item() / scale
        assert err_triton < 1e-5, name
        assert err_triton <= 4 * err_torch + 1e-7, f"{name}: triton {err_triton:.2e} vs torch fp32 {err_torch:.2e}"


def test_only_requested_gradients():
    """SBC path: input gradient alone (target weights frozen); and a subset of weight gradients."""
    net = make_net(11, 3, 64)
    rows, grad_out = torch.randn(40, net.in_dim), torch.randn(40, 11)
    expected = torch_grads(net, rows, grad_out)
    grad_rows, grads = triton_grads(net, rows, grad_out, need_weight_grads=False)
    assert all(g is None for g in grads)
    torch.testing.assert_close(grad_rows, expected[0], rtol=1e-4, atol=1e-4)

    wanted = [i % 3 == 0 for i in range(len(NAMES))]
    grad_rows, grads = triton_grads(net, rows, grad_out, need_weight_grads=wanted, need_input_grad=False)
    assert grad_rows is None
    for name, want_it, got, want in zip(NAMES, wanted, grads, expected[1:]):
        if want_it:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")
        else:
            assert got is None, name
