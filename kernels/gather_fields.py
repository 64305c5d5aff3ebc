"""Sampled transitions gathered field by field in one launch (fastbdm.replay): every field of the sampled rows
written to its own contiguous block, so that the kernels downstream read dense (R, d) fields and no consumer
copies a column view (one copy kernel each) to make it contiguous.

rows (N, width) is the dataset, the fields side by side (column offsets `offsets`, widths `widths`). The
indices are (S, U, B): S seeds' U updates of B rows each (each seed draws its own, fastbdm.update_draws);
the result is one flat fp32 buffer holding, field after field, (U, S, B, d_f) blocks: update u's
(S, B, d_f) field is then contiguous, as the kernels' seed axis reads it (kernels/seed_axis.py).

The indices arrive as raw draws (fastbdm.update_draws: one torch.randint over [0, N x steps) per seed for a pair's
batch rows and diffusion levels together), reduced here: a row is its draw mod N, and the same launch turns
the level draws into levels (draw mod steps, in place).
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _gather_fields_kernel(rows_ptr, idx_ptr, out_ptr, levels_ptr, I, S, U, B, N, width, idx_stride, L, levels_stride,
                          steps,
                          offsets: tl.constexpr, widths: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr):
    """Programs 0 .. cdiv(I, BLOCK_I) - 1: BLOCK_I of the I = S U B draws idx (S, U, B) (seed stride
    idx_stride, each seed's (U, B) contiguous), each row idx mod N:
    for each field f, rows[idx mod N, offsets[f] : offsets[f] + widths[f]] -> row (u, k, b) of its (U, S, B,
    d_f) block of out, which starts at I * (widths[0] + ... + widths[f - 1]). The programs after them: BLOCK_I
    of the S L level draws (S, L) (row stride levels_stride), each replaced in place by itself mod steps."""
    pid = tl.program_id(0)
    gather_programs = tl.cdiv(I, BLOCK_I)
    if pid < gather_programs:
        offs = pid * BLOCK_I + tl.arange(0, BLOCK_I)
        mask_i = offs < I
        seed, update, row = offs // (U * B), (offs // B) % U, offs % B
        src = (tl.load(idx_ptr + seed * idx_stride + offs % (U * B), mask=mask_i, other=0) % N) * width
        offs_i = (update * S + seed) * B + row  # the output row, update-major
        offs_d = tl.arange(0, BLOCK_D)
        start = 0
        for f in tl.static_range(len(widths)):
            d = widths[f]
            mask = mask_i[:, None] & (offs_d[None, :] < d)
            values = tl.load(rows_ptr + src[:, None] + offsets[f] + offs_d[None, :], mask=mask, other=0.0)
            tl.store(out_ptr + start * I + offs_i[:, None] * d + offs_d[None, :], values, mask=mask)
            start += d
    else:
        offs_l = (pid - gather_programs) * BLOCK_I + tl.arange(0, BLOCK_I)
        mask_l = offs_l < S * L
        levels = levels_ptr + (offs_l // L) * levels_stride + offs_l % L
        tl.store(levels, tl.load(levels, mask=mask_l, other=0) % steps, mask=mask_l)


def gather_fields(rows, idx, widths, levels=None, steps=0, block_i=64, num_warps=4):
    """rows (N, width) fp32 contiguous, idx (S, U, B) int64 >= 0 (draws: row idx mod N; each seed's (U, B)
    contiguous, as a view of update_draws' (S, rows + levels) draws is), widths: the
    fields' column counts (summing to width) -> flat (S U B width,) fp32: field f's (U, S, B, widths[f]) rows of
    idx, one block after another (split it by S U B widths[f] and view each block). levels (optional, (S, L)
    int64 >= 0 with unit column stride): draws replaced in place by themselves mod steps, in the same launch."""
    N, width = rows.shape
    if sum(widths) != width:
        raise ValueError(f"field widths {tuple(widths)} sum to {sum(widths)}, but the rows are {width} wide")
    S, U, B = idx.shape
    I = idx.numel()
    if idx.stride(2) != 1 or idx.stride(1) != B:  # a seed's draws one after another: read them so
        idx = idx.contiguous()
    out = torch.empty(I * width, device=rows.device, dtype=torch.float32)
    offsets = tuple(sum(widths[:f]) for f in range(len(widths)))
    if levels is None:
        levels = idx.new_empty(S, 0)
    if levels.shape[-1] and (levels.shape[0] != S or levels.stride(-1) != 1 or steps < 1):
        raise ValueError(f"levels must be (S={S}, L) with unit column stride and steps >= 1, got "
                         f"{tuple(levels.shape)}, strides {levels.stride()}, steps {steps}")
    programs = triton.cdiv(I, block_i) + triton.cdiv(levels.numel(), block_i)
    if programs:
        _gather_fields_kernel[(programs,)](
            rows, idx, out, levels, I, S, U, B, N, width, idx.stride(0), levels.shape[-1], levels.stride(0), steps,
            offsets, tuple(widths), BLOCK_I=block_i, BLOCK_D=triton.next_power_of_2(max(widths)), num_warps=num_warps)
    return out
