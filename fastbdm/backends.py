"""Choice of the kernel implementation: the pure-PyTorch reference or the Triton kernels.

Both expose the same functions (see fastbdm.reference): noised_rows, denoiser_forward,
denoiser_forwards (a group of denoisers: one launch on Triton), reverse_chain, td_loss.
"""
import contextlib
import os

import torch

from .kernels.denoiser_mlp import PRECISIONS  # noqa: F401  (the choices of the Triton MLP kernels)

BACKENDS = ("auto", "torch", "triton")
TORCH_PRECISIONS = ("tf32", "ieee")
# Whether torch's own fp32 matmuls on CUDA (critics, actor, the denoiser weight and input gradients)
# run on the tensor cores in TF32, per precision: TF32 for "tf32" and for "bf16" (whose bf16 is the
# Triton kernels'), exact fp32 for "ieee" and for "tf32x3" (whose point is fp32 accuracy).
TORCH_TF32 = {"tf32": True, "bf16": True, "tf32x3": False, "ieee": False}


def resolve_backend(name: str, device) -> str:
    """'auto' -> 'triton' on CUDA, 'torch' elsewhere. 'triton' off CUDA needs TRITON_INTERPRET=1."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if name == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if name == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("backend 'triton' needs a CUDA device (or TRITON_INTERPRET=1 for the CPU interpreter)")
    return name


def kernel_ops(name: str, precision: str = "tf32"):
    """The kernel functions for a resolved backend name: fastbdm.reference ("torch"; precision "tf32"
    or "ieee" leaves torch's matmul settings alone) or fastbdm.ops with the MLP kernels' precision
    fixed ("triton"; see fastbdm.ops.PRECISIONS)."""
    if name == "triton":
        from . import ops

        return ops.with_precision(precision)
    if precision not in TORCH_PRECISIONS:
        raise ValueError(f"precision {precision!r} is for the Triton kernels on CUDA: use backend 'triton' "
                         f"(or 'auto' on a GPU), or precision {' or '.join(map(repr, TORCH_PRECISIONS))}")
    from . import reference

    return reference


@contextlib.contextmanager
def torch_matmul_precision(precision: str):
    """Within the block, torch's fp32 matmuls on CUDA follow `precision` (TORCH_TF32: TF32 for "tf32"
    and "bf16", exact fp32 for "ieee" and "tf32x3"); the previous setting is restored on exit. Sets
    torch.backends.cuda.matmul.allow_tf32 only, which no CPU matmul reads. The trainer holds it for
    its lifetime; importing fastbdm changes nothing."""
    if precision not in TORCH_TF32:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(TORCH_TF32)}")
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = TORCH_TF32[precision]
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
