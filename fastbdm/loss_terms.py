"""A loss as the fused kernels return it: its value and, where the kernel computed it, the gradient with
respect to the network output it was computed from, so that backward can start at that output and the
loss's own backward (its ones, products and sums) launches nothing."""
from typing import NamedTuple, Optional, Sequence

import torch


class LossTerm(NamedTuple):
    """loss: the scalar loss ((S,) with the seed axis), differentiable in `output`. output, grad: the
    network output and d loss / d output (same shape) from a fused kernel; None from the reference."""

    loss: torch.Tensor
    output: Optional[torch.Tensor] = None
    grad: Optional[torch.Tensor] = None


def backward(terms: Sequence[LossTerm]) -> None:
    """Accumulate d(sum of the terms' losses) into the leaves' .grad, as (sum of losses).backward():
    from each fused term's output with its gradient, from the loss itself otherwise (no sum launched)."""
    fused = [t.grad is not None for t in terms]
    torch.autograd.backward([t.output if f else t.loss for t, f in zip(terms, fused)],
                            [t.grad if f else None for t, f in zip(terms, fused)])
