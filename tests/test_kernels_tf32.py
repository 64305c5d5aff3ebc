"""The shipped configuration: the MLP kernels at the default precision ("tf32") and their default block
sizes, at the paper's width (hidden 512), against a float64 reference, with tolerances derived from
TF32's 10-bit mantissa.

Derivation (norm-wise: ||got - exact||_F / ||exact||_F, over every element of a result):

1. One K-term dot product s = sum_k a_k b_k on the tensor cores: the operands are rounded to TF32,
   a_k (1 + d_k), b_k (1 + e_k), the products of two 11-bit significands are exact in fp32 and summed
   in fp32. Rounding to nearest, |d| <= u = 2^-11; truncation (the low 13 bits dropped, which the
   hardware does with raw fp32 registers) |d| < 2^-10 with mean -2^-11 at most. Worst case,
   |s_hat - s| <= (2^-9 + gamma_K) sum_k |a_k b_k| (gamma_K = K 2^-24): for K = 512 and incoherent signs
   sum |a_k b_k| ~ sqrt(K) |s|, a 4% bound that no precision would fail. The tests use the
   statistical size instead: the error sum_k a_k b_k (d_k + e_k) is a sum of K independent terms, its
   rms is sqrt(E (d + e)^2) ||a o b||_2 with E (d + e)^2 <= 2 (2^-10)^2 / 3 + 2 (2^-11)^2 = (7/6) 2^-20
   (truncation; to nearest gives (2/3) 2^-22), and E s^2 = ||a o b||_2^2 for incoherent signs, so per
   layer  eps_1 = 2^-10 sqrt(7/6) + sqrt(K) 2^-24 = 1.06e-3  (K <= 2048; the fp32 sum adds 2.7e-6).
2. The MLP: three such layers; ReLU is 1-Lipschitz and LayerNorm rescales each row to unit variance,
   so a layer passes on its input's relative error with gain <= 1 and adds its own, independent:
   TOL_MLP = sqrt(3) eps_1 = 1.8e-3.
3. The reverse chain in sample mode (DDIM): x_{i-1} = sqrt(ab_{i-1}) x0hat + sqrt(1-ab_{i-1}) epshat;
   the last level returns its x0hat, so the result carries that evaluation's own error (TOL_MLP)
   plus the earlier levels' error in its input x, passed on with gain <= 1: TOL_CHAIN = 2 TOL_MLP.
4. The backward: weight and input gradients are products of the same kind (eps_1 each), but a
   gradient that crosses a ReLU gate also sees the gates the rounded forward flipped: a
   pre-activation within |delta pre| of 0, a fraction 2 rho_0 |delta pre| / std(pre) of them with
   rho_0 <= 1/sqrt(2 pi) (density of the standardised pre-activation at 0), and each flip moves its
   gradient entry by about the entries' rms. The relative error is then sqrt(fraction flipped):
   with layer k's pre-activation error sqrt(k) eps_1, TOL_GATED = sqrt(2 rho_0 eps_1 (1 + sqrt(2)))
   = 0.045 for the gradients behind a gate (rows, W1, b1, g1, beta1, W2, b2); those behind none
   (g2, beta2, W_out, b_out) get TOL_MLP.

Check of the derivation (test_tolerances_*, torch on the CPU, paper shapes): the reference with every
matmul operand rounded to TF32 (truncated and to nearest) is inside each tolerance; with the operands
rounded to bf16 (8 significant bits) outside. A plain fp16 rounding cannot be that outside witness:
fp16 keeps TF32's 10-bit mantissa (with less exponent range) and lands on the to-nearest TF32 error
(measured 6.2e-4 both, MLP at R = 1024).

The kernel tests run the Triton kernels themselves. Compiled on a GPU (FASTBDM_TEST_DEVICE=cuda,
profiling/gpu_checks.sh stage `kernels`) at R = 1024 and 2048 their dots are real TF32. In the CPU
interpreter tl.dot ignores input_precision and computes exact fp32, so there these tests show the
default-precision, default-block path is at least as accurate as the tolerances say, on 20 rows (one
partial block of each kernel) and a 2-level chain (the interpreter pays ~1.5 s per level and program at
width 512; the tolerance argument does not depend on the number of levels).
"""
import math
import os

import pytest
import torch

from fastbdm import reference as ref
from fastbdm.backends import torch_matmul_precision
from fastbdm.kernels.denoiser_backward import mlp_backward
from fastbdm.kernels.denoiser_mlp import mlp_forward
from fastbdm.kernels.reverse_chain import reverse_chain
from fastbdm.ops import DEFAULT_PRECISION
from fastbdm.schedule import DiffusionSchedule
from rounding import bf16_round, rounded_matmuls, tf32_round
from test_kernels_backward import NAMES, make_net

OBS, ACT, HIDDEN, STEPS = 17, 6, 512, 10  # halfcheetah shapes, the paper's denoiser
EPS_1 = 2.0 ** -10 * math.sqrt(7 / 6) + math.sqrt(2048) * 2.0 ** -24
TOL_MLP = math.sqrt(3) * EPS_1
TOL_CHAIN = 2 * TOL_MLP
TOL_GATED = math.sqrt(2 / math.sqrt(2 * math.pi) * EPS_1 * (1 + math.sqrt(2)))
UNGATED = {"g2", "beta2", "W_out", "b_out"}  # gradients no ReLU gate stands before
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
KERNEL_ROWS = (20,) if INTERPRETED else (1024, 2048)
KERNEL_STEPS = 2 if INTERPRETED else STEPS  # the interpreter: ~1.5 s per level and program at width 512
ROUNDINGS = {"tf32 truncated": tf32_round, "tf32 to nearest": lambda x: tf32_round(x, nearest=True)}


def relative_error(got, exact):
    assert torch.isfinite(got).all()
    return ((got.double() - exact).norm() / exact.norm()).item()


def paper_problem(rows):
    """Weights (randomised LayerNorm parameters), input rows, output gradient, chain inputs (s, a, z)."""
    net = make_net(OBS, ACT, HIDDEN)
    weights = [w.detach() for w in net.weights()]
    return (weights, torch.randn(rows, net.in_dim), torch.randn(rows, OBS), torch.randn(rows, OBS),
            torch.rand(rows, ACT) * 2 - 1, torch.randn(rows, OBS))


def forward_and_grads(weights, rows, grad_out):
    """(out, grad rows, *grad weights) of reference.denoiser_forward in the inputs' dtype."""
    leaves = [w.clone().requires_grad_(True) for w in weights]
    x = rows.clone().requires_grad_(True)
    out = ref.denoiser_forward(x, leaves)
    return (out.detach(), *torch.autograd.grad(out, [x, *leaves], grad_out))


def chain(weights, s, a, z, sched):
    return ref.reverse_chain(weights, s, a, z, sched, "sample", "ddim")


def assert_within(name, got, exact, tolerance):
    error = relative_error(got, exact)
    assert error <= tolerance, f"{name}: relative error {error:.2e} > {tolerance:.2e}"


def gradient_tolerance(name):
    return TOL_MLP if name in UNGATED else TOL_GATED


@pytest.mark.parametrize("rows", [1024, 2048])
def test_tolerances_hold_for_tf32_operands_and_fail_for_bf16(rows):
    """The derivation above, checked with torch: forward and gradients at R = 1024 and 2048."""
    weights, x, grad_out, *_ = paper_problem(rows)
    exact = forward_and_grads([w.double() for w in weights], x.double(), grad_out.double())
    names = ("out", "rows", *NAMES)
    for rounding in ROUNDINGS.values():
        with rounded_matmuls(rounding):
            got = forward_and_grads(weights, x, grad_out)
        assert_within("out", got[0], exact[0], TOL_MLP)
        for name, g, e in zip(names[1:], got[1:], exact[1:]):
            assert_within(name, g, e, gradient_tolerance(name))
    with rounded_matmuls(bf16_round):
        got = forward_and_grads(weights, x, grad_out)
    assert relative_error(got[0], exact[0]) > TOL_MLP
    for group, tolerance in ((UNGATED - {"b_out"}, TOL_MLP), (set(NAMES) - UNGATED, TOL_GATED)):
        # b_out = column sums of grad_out: no matmul, exact at any precision
        worst = max(relative_error(g, e) for name, g, e in zip(names[1:], got[1:], exact[1:]) if name in group)
        assert worst > tolerance, f"bf16 operands inside the tolerance {tolerance:.2e} of {sorted(group)}"


def test_chain_tolerance_holds_for_tf32_operands_and_fails_for_bf16():
    """The sample-mode DDIM chain, T = 10, R = 1024 (2048 runs compiled, in the kernel test)."""
    weights, _, _, s, a, z = paper_problem(1024)
    sched = DiffusionSchedule(STEPS)
    exact = chain([w.double() for w in weights], s.double(), a.double(), z.double(), sched.double())
    for rounding in ROUNDINGS.values():
        with rounded_matmuls(rounding):
            assert_within("chain", chain(weights, s, a, z, sched), exact, TOL_CHAIN)
    with rounded_matmuls(bf16_round):
        assert relative_error(chain(weights, s, a, z, sched), exact) > TOL_CHAIN


@pytest.mark.parametrize("rows", KERNEL_ROWS)
def test_kernels_at_the_default_precision_and_blocks(rows):
    """mlp_forward (saving activations, as training does), mlp_backward with torch's matmuls at the
    trainer's setting for that precision, and the sample-mode DDIM reverse chain, all at their default
    precision and block sizes, against float64."""
    assert DEFAULT_PRECISION == "tf32"
    weights, x, grad_out, s, a, z = paper_problem(rows)
    exact = forward_and_grads([w.double() for w in weights], x.double(), grad_out.double())
    out, acts = mlp_forward(x, weights, save_activations=True, precision=DEFAULT_PRECISION)
    assert_within("out", out, exact[0], TOL_MLP)
    with torch_matmul_precision(DEFAULT_PRECISION):
        grad_rows, grads = mlp_backward(grad_out, x, weights, acts, precision=DEFAULT_PRECISION)
    for name, g, e in zip(("rows", *NAMES), (grad_rows, *grads), exact[1:]):
        assert_within(name, g, e, gradient_tolerance(name))

    sched = DiffusionSchedule(KERNEL_STEPS)
    want = chain([w.double() for w in weights], s.double(), a.double(), z.double(), sched.double())
    got = reverse_chain(weights, s, a, z, sched.sqrt_ab, sched.sqrt_one_minus_ab, sched.sqrt_ab_prev,
                        sched.sqrt_one_minus_ab_prev, sched.coef_x0, sched.coef_xt, sched.posterior_std, KERNEL_STEPS,
                        prediction="sample", sampler="ddim", precision=DEFAULT_PRECISION)
    assert_within("chain", got, want, TOL_CHAIN)
