"""Each BDM kernel, Triton (fastbdm.ops) against its pure-PyTorch reference (fastbdm.reference), on
size.rows rows: noising, denoiser forward (no grad), reverse chain (DDIM, T levels), TD loss
(forward + backward) and the denoiser backward (weight gradients, as in the TD update). Variants:
torch, triton (tf32 dots), triton-bf16 (precision "bf16", CUDA only; the MLP kernels only, as
noising and the TD loss have no matmul)."""
import pytest
import torch

from fastbdm.backends import kernel_ops
from fastbdm.networks import Denoiser
from fastbdm.schedule import DiffusionSchedule

from .workloads import ACT_DIM, OBS_DIM, bench_device, kernel_cost, kernel_variants, variant_kernels

KERNELS = ("noising", "denoiser_forward", "reverse_chain", "td_loss", "denoiser_backward")
MATMUL_KERNELS = ("denoiser_forward", "reverse_chain", "denoiser_backward")
CASES = [(kernel, variant) for kernel in KERNELS for variant in kernel_variants(bench_device())[0]
         if kernel in MATMUL_KERNELS or not variant.endswith("-bf16")]


def kernel_call(kernel: str, variant: str, size, device):
    """(fn, setup) for one kernel: fn(*setup()) is one call; setup is None when fn takes no args."""
    ops = kernel_ops(*variant_kernels(variant))
    r, n, m = size.rows, OBS_DIM, ACT_DIM
    gen = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(device)  # noqa: E731
    net = Denoiser(n, m, True, (size.hidden,) * 2).to(device)
    weights = net.weights()
    sch = DiffusionSchedule(size.steps).to(device)
    t = torch.randint(0, size.steps, (r,), generator=gen).to(device)
    x0, eps, s, a = rand(r, n), rand(r, n), rand(r, n), rand(r, m)
    if kernel == "noising":
        return lambda: ops.noised_rows(x0, eps, t, s, a, sch), None
    rows = ops.noised_rows(x0, eps, t, s, a, sch)
    if kernel == "denoiser_forward":
        def forward():
            with torch.no_grad():
                return ops.denoiser_forward(rows, weights)
        return forward, None
    if kernel == "reverse_chain":
        return lambda: ops.reverse_chain(weights, s, a, x0, sch, "sample", "ddim"), None
    if kernel == "td_loss":
        half = r // 2
        pred = rand(r, n).requires_grad_(True)
        target1, y2, done = rand(half, n), rand(half, n), (torch.rand(half, generator=gen) < 0.1).to(device)
        return lambda: torch.autograd.grad(ops.td_loss(pred, target1, y2, done, 0.99), pred), None
    if kernel == "denoiser_backward":
        grad_out = rand(r, n)
        return (lambda out: torch.autograd.grad(out, weights, grad_out),
                lambda: (ops.denoiser_forward(rows, weights),))
    raise ValueError(kernel)


@pytest.mark.parametrize("kernel, variant", CASES)
def test_kernel(kernel, variant, measure, bench_setup):
    fn, setup = kernel_call(kernel, variant, bench_setup.size, bench_setup.device)
    measure(fn, setup=setup, component=kernel, variant=variant, backend=variant_kernels(variant)[0],
            **kernel_cost(kernel, bench_setup.size))
