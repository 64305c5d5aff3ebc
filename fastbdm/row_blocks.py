"""Row blocks that lie back to back in memory read as one tensor without a copy.

A pair's per-update tensors are laid out so that the ones its frozen networks read together are
adjacent (fastbdm.update_draws: both batches' next_obs in the gather's update-major block, both
updates' policy normals and every chain's start noise side by side in the flat draw,
TD3SBC.noise_layout); `concat_rows` then returns the one view that torch.cat would copy.
"""
from typing import Sequence

import torch


def _adjacent(parts: Sequence[torch.Tensor], dim: int) -> bool:
    """parts share storage, dtype and strides, agree outside `dim`, and each starts where the one before ends."""
    first = parts[0]
    if any(torch._C._functorch.is_batchedtensor(p) for p in parts):  # torch.func.vmap: no storage to read
        return False
    storage = first.untyped_storage().data_ptr()
    for before, part in zip(parts, parts[1:]):
        same = (part.dtype == first.dtype and part.device == first.device and part.stride() == first.stride()
                and part.shape[:dim] + part.shape[dim + 1:] == first.shape[:dim] + first.shape[dim + 1:]
                and part.untyped_storage().data_ptr() == storage)
        if not same or part.storage_offset() != before.storage_offset() + before.shape[dim] * before.stride(dim):
            return False
    return True


def concat_rows(parts: Sequence[torch.Tensor], dim: int = -2) -> torch.Tensor:
    """torch.cat(parts, dim): a view of their storage, no launch, when they lie back to back along dim
    (same strides, each part starting where the one before ends); else torch.cat's copy."""
    parts = list(parts)
    if len(parts) == 1:
        return parts[0]
    dim = dim % parts[0].dim()
    if not _adjacent(parts, dim):
        return torch.cat(parts, dim)
    first = parts[0]
    shape = list(first.shape)
    shape[dim] = sum(p.shape[dim] for p in parts)
    return first.as_strided(shape, first.stride(), first.storage_offset())
