"""Forward Triton kernels (noising, fused MLP, reverse chain, TD loss) vs fastbdm.reference.

Runs in Triton's CPU interpreter (tests/conftest.py) with few, large blocks. Outputs are poisoned
with NaN before the launch (`out=`), so a match also proves every element is written.

Tolerances: the interpreter computes in fp32 with tl.dot as an exact fp32 matmul ("ieee"), so the
kernels differ from torch only in summation order (LayerNorm statistics merged chunk by chunk
included): ~1e-6 relative on the MLP output (K <= 512 terms of O(1) products). Element-wise kernels (noising, TD loss) agree
to an ulp. The reverse chain compounds that over the levels; with "epsilon" the top levels divide
by sqrt(abar) ~ 5e-3, scaling the output and its error alike, hence an atol relative to the output's
magnitude.
"""
import os
import subprocess
import sys

import pytest
import torch

from fastbdm import reference as ref
from fastbdm.kernels.denoiser_mlp import mlp_forward
from fastbdm.kernels.noising import noised_rows
from fastbdm.kernels.reverse_chain import reverse_chain
from fastbdm.kernels.td_loss import td_loss_fwd_bwd
from fastbdm.networks import Denoiser
from fastbdm.schedule import DiffusionSchedule

STEPS = 10
BLOCKS = dict(block_m=64, block_n=64, block_k=64)  # few, large blocks: the interpreter pays per program


def nan_like(shape):
    return torch.full(shape, float("nan"))


def denoiser_weights(n, m, hidden, conditional=True, offset=0.0):
    """Weights of a real Denoiser with randomised LayerNorm gains and biases (so that they matter);
    `offset` is added to the first layer's bias (large: LayerNorm input with mean >> std)."""
    net = Denoiser(n, m, conditional=conditional, hidden=hidden)
    with torch.no_grad():
        net.linears[0].bias += offset
        for norm in net.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.3)
    return tuple(w.detach() for w in net.weights())


def assert_close_scaled(actual, expected, rtol=1e-5):
    """Every element finite and within rtol of the expected tensor's magnitude."""
    assert torch.isfinite(actual).all()
    scale = expected.abs().max().clamp_min(1.0)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("n, m, rows", [(11, 3, 37), (17, 6, 100)])
@pytest.mark.parametrize("conditional", [True, False])
def test_noised_rows(n, m, rows, conditional):
    sched = DiffusionSchedule(STEPS)
    x0, eps, s = torch.randn(3, rows, n)
    a = torch.randn(rows, m)
    t = torch.randint(0, STEPS, (rows,))
    if conditional:
        expected = ref.noised_rows(x0, eps, t, s, a, sched)
    else:
        expected = torch.cat([sched.q_sample(x0, t, eps), sched.time_input(t)], dim=-1)
        s = a = None
    out = nan_like(expected.shape)
    got = noised_rows(x0, eps, t, s, a, sched.sqrt_ab, sched.sqrt_one_minus_ab, STEPS, out=out, block_m=64)
    assert got is out
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)  # one fp32 FMA apart at most


@pytest.mark.parametrize("n, rows", [(11, 37), (17, 100)])
@pytest.mark.parametrize("done_dtype", [torch.bool, torch.float32])
def test_td_loss(n, rows, done_dtype):
    gamma = 0.99
    pred = torch.randn(2 * rows, n, requires_grad=True)
    target1, y2 = torch.randn(2, rows, n)
    done = (torch.rand(rows) < 0.3).to(done_dtype)
    expected = ref.td_loss(pred, target1, y2, done, gamma)
    expected.backward()
    grad = nan_like((2 * rows, n))
    loss, got_grad = td_loss_fwd_bwd(pred.detach(), target1, y2, done, gamma, grad_out=grad, block_m=64)
    assert got_grad is grad and loss.shape == ()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=0)  # partial sums: reordered fp32 sum
    torch.testing.assert_close(got_grad, pred.grad, rtol=1e-6, atol=1e-9)


def torch_activations(rows, weights):
    """(pre1, mean1, rstd1, pre2, mean2, rstd2) of the saved-activation contract, computed with torch."""
    w1, b1, g1, beta1, w2, b2, _, _, _, _ = weights
    pre1 = torch.relu(torch.nn.functional.linear(rows, w1, b1))
    var1, mean1 = torch.var_mean(pre1, dim=-1, correction=0)
    h1 = (pre1 - mean1[:, None]) * torch.rsqrt(var1[:, None] + 1e-5) * g1 + beta1
    pre2 = torch.relu(torch.nn.functional.linear(h1, w2, b2))
    var2, mean2 = torch.var_mean(pre2, dim=-1, correction=0)
    return pre1, mean1, torch.rsqrt(var1 + 1e-5), pre2, mean2, torch.rsqrt(var2 + 1e-5)


@pytest.mark.parametrize(
    "n, m, rows, hidden, conditional, offset, block_k",
    [
        (11, 3, 37, (64, 64), True, 0.0, 64),
        (17, 6, 100, (64, 64), True, 0.0, 64),
        (17, 0, 100, (64, 64), False, 0.0, 64),
        (11, 3, 37, (96, 40), True, 0.0, 16),  # widths not multiples of the blocks: masked N and K chunks
        (11, 3, 37, (128, 64), True, 100.0, 64),  # LayerNorm input mean ~100, std ~0.6
        (17, 6, 37, (512, 512), True, 0.0, 64),
    ],
)
def test_mlp_forward(n, m, rows, hidden, conditional, offset, block_k):
    weights = denoiser_weights(n, m, hidden, conditional, offset)
    # With offset the LayerNorm input ~100 is itself known only to an fp32 ulp (~8e-6) against a std
    # ~0.6: ~1e-5 relative per normalised element in any fp32 implementation, torch's included, hence
    # 1e-4. A one-pass E[y^2] - E[y]^2 variance would be off by ~1e-2 there.
    rtol = 1e-4 if offset else 1e-5
    blocks = dict(BLOCKS, block_k=block_k)
    inputs = torch.randn(rows, weights[0].shape[1])
    out = nan_like((rows, n))
    got, acts = mlp_forward(inputs, weights, save_activations=True, precision="ieee", out=out, **blocks)
    assert got is out
    assert_close_scaled(got, ref.denoiser_forward(inputs, weights), rtol)
    for name, saved, expected in zip(("pre1", "mean1", "rstd1", "pre2", "mean2", "rstd2"), acts,
                                     torch_activations(inputs, weights)):
        assert saved.shape == expected.shape, name
        assert_close_scaled(saved, expected, rtol)
    assert_close_scaled(mlp_forward(inputs, weights, precision="ieee", **blocks), got, rtol=0)


def run_chain(weights, s, a, z, sched, prediction, sampler, noise, **blocks):
    out = nan_like(z.shape)
    got = reverse_chain(
        weights, s, a, z, sched.sqrt_ab, sched.sqrt_one_minus_ab, sched.sqrt_ab_prev,
        sched.sqrt_one_minus_ab_prev, sched.coef_x0, sched.coef_xt, sched.posterior_std, sched.steps,
        prediction=prediction, sampler=sampler, noise=noise, out=out, precision="ieee", **blocks,
    )
    assert got is out
    return got


def chain_inputs(n, m, rows):
    """Denoiser weights (hidden 64, 64), the schedule, states s and z (rows, n), actions a (rows, m)."""
    weights = denoiser_weights(n, m, (64, 64))
    s, z = torch.randn(2, rows, n)
    return weights, DiffusionSchedule(STEPS), s, z, torch.randn(rows, m)


@pytest.mark.parametrize("prediction", ["sample", "epsilon", "v"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "posterior_mean"])
@pytest.mark.parametrize("n, m, rows, block_k", [(11, 3, 37, 64), (17, 6, 100, 16)])
def test_reverse_chain(prediction, sampler, n, m, rows, block_k):
    weights, sched, s, z, a = chain_inputs(n, m, rows)
    noise = torch.randn(STEPS, rows, n)
    got = run_chain(weights, s, a, z, sched, prediction, sampler, noise, **dict(BLOCKS, block_k=block_k))
    assert_close_scaled(got, ref.reverse_chain(weights, s, a, z, sched, prediction, sampler, noise=noise))


def test_reverse_chain_ddpm_draws_noise():
    """noise=None: the launcher draws (steps, R, n) normals like the reference does."""
    n, m, rows = 11, 3, 37
    weights, sched, s, z, a = chain_inputs(n, m, rows)
    torch.manual_seed(1)
    got = run_chain(weights, s, a, z, sched, "sample", "ddpm", None, **BLOCKS)
    torch.manual_seed(1)
    assert_close_scaled(got, ref.reverse_chain(weights, s, a, z, sched, "sample", "ddpm"))


def test_reverse_chain_ddpm_ignores_level0_noise():
    """The last DDPM level adds no noise (std 0): a NaN in noise[0] must not reach the samples (0 * NaN)."""
    n, m, rows = 11, 3, 37
    weights, sched, s, z, a = chain_inputs(n, m, rows)
    noise = torch.randn(STEPS, rows, n)
    noise[0] = float("nan")
    got = run_chain(weights, s, a, z, sched, "sample", "ddpm", noise, **BLOCKS)
    assert_close_scaled(got, ref.reverse_chain(weights, s, a, z, sched, "sample", "ddpm", noise=noise))


@pytest.mark.parametrize("sampler", ["ddim", "posterior_mean"])
def test_reverse_chain_hidden_512(sampler):
    """The production width on few rows and a short schedule (the interpreter is slow at 512)."""
    n, m, rows = 17, 6, 20
    weights = denoiser_weights(n, m, (512, 512))
    sched = DiffusionSchedule(3)
    s, z = torch.randn(2, rows, n)
    a = torch.randn(rows, m)
    got = run_chain(weights, s, a, z, sched, "v", sampler, None, block_m=32, block_n=64, block_k=64)
    assert_close_scaled(got, ref.reverse_chain(weights, s, a, z, sched, "v", sampler))


SM90_COMPILE = r"""
import re
from fastbdm.kernels.sm90_compile import compile_config, resources

table = resources()  # every kernel at its defaults; raises over a shared-memory limit
# the weight-stationary chain, every stage, tf32 and bf16: no register spills (no stack frame)
assert all(entry["stack"] == 0 for name, entry in table.items() if name.startswith("ws_chain")), table
# the denoiser backward, one network and grouped, with and without the folded input gradient: no spills either
backward = ("ln_relu_bwd", "column_sum")
assert all(entry["stack"] == 0 for name, entry in table.items() if name.startswith(backward)), table
for name in ("ws_chain_persistent", "ws_chain_persistent_bf16"):
    ttgir, ptx = (compile_config(name).asm[kind] for kind in ("ttgir", "ptx"))
    # the group barrier: one arrival per program (thread 0's release add), acquire polls, CTA barriers around
    assert re.search(r"@%p\d+ red\.global\.gpu\.release\.add", ptx) and "ld.global.gpu.acquire" in ptx, "barrier"
    held = re.search(r"ttg\.local_alloc %\w+ : \(tensor<512x64x", ttgir)
    assert held and held.start() < ttgir.index("scf.for %level"), "the W2 slice is not held across the levels"
"""


def test_kernels_compile_for_sm90(tmp_path):
    """Each kernel, forward and backward, at its H100 defaults compiles for sm_90 (tf32 tl.dot, and the
    MLP kernels also with precision "bf16"; shared memory < 200 KB, the weight-stationary chain < 227 KB
    with no spills and its W2 slice held in shared memory; fastbdm.kernels.sm90_compile, which also reads
    the registers off the cubin), offline: a subprocess without TRITON_INTERPRET, as the interpreter
    replaces the @triton.jit functions."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run([sys.executable, "-c", SM90_COMPILE], env=env, capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
