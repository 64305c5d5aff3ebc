"""The device's measured ceilings, read by table.py for the floor column: an fp32 matmul (TF32
on CUDA) at the denoiser's layer shape scaled up, and a large copy (read + write)."""
import torch

from fastbdm.backends import torch_matmul_precision


def test_matmul_rate(measure, bench_setup):
    device = bench_setup.device
    m, k, n = (8192, 8192, 8192) if device.type == "cuda" else (1024, 512, 512)
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    with torch_matmul_precision("tf32"):
        measure(lambda: a @ b, component="roofline_matmul", variant="tf32" if device.type == "cuda" else "fp32",
                backend="torch", flops=2 * m * k * n, bytes=4 * (m * k + k * n + m * n))


def test_copy_bandwidth(measure, bench_setup):
    device = bench_setup.device
    src = torch.randn((1 << 28) if device.type == "cuda" else (1 << 24), device=device)
    dst = torch.empty_like(src)
    measure(lambda: dst.copy_(src), component="roofline_copy", variant="copy", backend="torch",
            flops=0, bytes=2 * 4 * src.numel())
