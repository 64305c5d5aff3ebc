"""Choice of the kernel implementation: the pure-PyTorch reference or the Triton kernels.

Both expose the same functions (see fastbdm.reference): noised_rows, denoiser_forward,
reverse_chain, td_loss.
"""
import os

import torch

BACKENDS = ("auto", "torch", "triton")


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


def kernel_ops(name: str):
    """The module implementing the kernel functions for a resolved backend name."""
    if name == "triton":
        from . import ops

        return ops
    from . import reference

    return reference
