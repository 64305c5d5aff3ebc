"""Choice of the kernel implementation: the pure-PyTorch reference or the Triton kernels.

Both expose the same functions (see fastbdm.reference): noised_rows, denoiser_forward,
reverse_chain, td_loss.
"""
import os

import torch

from .kernels.denoiser_mlp import PRECISIONS  # noqa: F401  (the choices of the Triton MLP kernels)

BACKENDS = ("auto", "torch", "triton")
TORCH_PRECISIONS = ("tf32", "ieee")


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
