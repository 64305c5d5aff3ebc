"""Operand rounding for reference computations at reduced matmul precision (tests only)."""
import contextlib

import torch

from fastbdm import reference

TF32_DROPPED_BITS = 13  # fp32 has 23 explicit mantissa bits, TF32 keeps 10


def tf32_round(x: torch.Tensor, nearest: bool = False) -> torch.Tensor:
    """fp32 x with its low 13 mantissa bits cleared: truncation toward zero (what tensor cores do with
    raw fp32 operands), or with nearest=True rounded to nearest, ties away from zero (cvt.rna.tf32.f32)
    first. Relative error < 2^-10 truncated, <= 2^-11 to nearest."""
    bits = x.contiguous().view(torch.int32)
    if nearest:
        bits = bits + (1 << (TF32_DROPPED_BITS - 1))
    return (bits & ~((1 << TF32_DROPPED_BITS) - 1)).view(torch.float32)


def bf16_round(x: torch.Tensor) -> torch.Tensor:
    """fp32 x rounded to bf16 (8 significant bits, to nearest) and back."""
    return x.bfloat16().float()


def _rounded_linear(round_operands):
    class RoundedLinear(torch.autograd.Function):
        """reference._linear (x (S, R, in) @ w (S, out, in)^T + b (S, out)) whose matmul operands,
        forward and backward, pass through round_operands."""

        @staticmethod
        def forward(ctx, x, w, b=None):
            ctx.save_for_backward(x, w)
            ctx.has_bias = b is not None
            y = round_operands(x) @ round_operands(w).mT
            return y if b is None else y + b.unsqueeze(1)

        @staticmethod
        def backward(ctx, grad):
            x, w = ctx.saved_tensors
            g = round_operands(grad)
            return g @ round_operands(w), g.mT @ round_operands(x), grad.sum(1) if ctx.has_bias else None

    return lambda x, w, b=None: RoundedLinear.apply(x, w, b)


@contextlib.contextmanager
def rounded_matmuls(round_operands):
    """Within the block every matmul of fastbdm.reference (its _linear) rounds its operands, forward and
    backward, with round_operands, and accumulates in the operands' dtype (fp32)."""
    exact = reference._linear
    reference._linear = _rounded_linear(round_operands)
    try:
        yield
    finally:
        reference._linear = exact
