"""Sampled transitions gathered field by field in one launch (fastbdm.replay): every field of the sampled rows
written to its own contiguous block, so that the kernels downstream read dense (R, d) fields and no consumer
copies a column view (one copy kernel each) to make it contiguous.

rows (N, width) is the dataset, the fields side by side (column offsets `offsets`, widths `widths`). The
indices are (S, U, B): S seeds' U updates of B rows each (each seed draws its own, fastbdm.update_draws);
the result is one flat fp32 buffer holding, field after field, (U, S, B, d_f) blocks: update u's
(S, B, d_f) field is then contiguous, as the kernels' seed axis reads it (kernels/seed_axis.py).
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _gather_fields_kernel(rows_ptr, idx_ptr, out_ptr, I, S, U, B, width, offsets: tl.constexpr,
                          widths: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr):
    """BLOCK_I of the I = S U B indices (S, U, B): for each field f, rows[idx, offsets[f] : offsets[f] +
    widths[f]] -> row (u, k, b) of its (U, S, B, d_f) block of out, which starts at I * (widths[0] + ... +
    widths[f - 1])."""
    offs = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    mask_i = offs < I
    src = tl.load(idx_ptr + offs, mask=mask_i, other=0).to(tl.int64) * width
    seed, update, row = offs // (U * B), (offs // B) % U, offs % B
    offs_i = (update * S + seed) * B + row  # the output row, update-major
    offs_d = tl.arange(0, BLOCK_D)
    start = 0
    for f in tl.static_range(len(widths)):
        d = widths[f]
        mask = mask_i[:, None] & (offs_d[None, :] < d)
        values = tl.load(rows_ptr + src[:, None] + offsets[f] + offs_d[None, :], mask=mask, other=0.0)
        tl.store(out_ptr + start * I + offs_i[:, None] * d + offs_d[None, :], values, mask=mask)
        start += d


def gather_fields(rows, idx, widths, block_i=64, num_warps=4):
    """rows (N, width) fp32 contiguous, idx (S, U, B) int64 in [0, N) contiguous, widths: the fields' column
    counts (summing to width) -> flat (S U B width,) fp32: field f's (U, S, B, widths[f]) rows of idx, one
    block after another (reference.gather_fields; split it by S U B widths[f] and view each block)."""
    N, width = rows.shape
    if sum(widths) != width:
        raise ValueError(f"field widths {tuple(widths)} sum to {sum(widths)}, but the rows are {width} wide")
    S, U, B = idx.shape
    I = idx.numel()
    out = torch.empty(I * width, device=rows.device, dtype=torch.float32)
    offsets = tuple(sum(widths[:f]) for f in range(len(widths)))
    if I:
        _gather_fields_kernel[(triton.cdiv(I, block_i),)](
            rows, idx.contiguous(), out, I, S, U, B, width, offsets, tuple(widths),
            BLOCK_I=block_i, BLOCK_D=triton.next_power_of_2(max(widths)), num_warps=num_warps)
    return out
