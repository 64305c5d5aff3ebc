"""BDM TD loss and its gradient w.r.t. the online predictions in one pass (docs/ALGORITHM.md#the-bdm-td-loss, reference.td_loss).

loss = mean_{rows, dims} (1-gamma) (p1 - target1)^2 + gamma (p2 - y2')^2, y2' = target1 on done rows.
Deterministic reduction: each program writes one partial sum, the launcher sums them with torch.
"""
import torch
import triton
import triton.language as tl

from .seed_axis import add_seed_axis


@triton.jit
def _td_loss_kernel(
    pred_ptr, target1_ptr, y2_ptr, done_ptr, grad_ptr, partial_ptr,
    R, n, gamma, inv_count,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program: BLOCK_M rows of both halves of seed program_id(1)'s pred (S, 2R, n); writes their
    grad rows (S, 2R, n) and one partial (S, programs); target1, y2 (S, R, n), done (S, R)."""
    pid = tl.program_id(0)
    sid = tl.program_id(1).to(tl.int64)
    pred_ptr += sid * 2 * R * n
    grad_ptr += sid * 2 * R * n
    target1_ptr += sid * R * n
    y2_ptr += sid * R * n
    done_ptr += sid * R
    partial_ptr += sid * tl.num_programs(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < R
    mask = mask_m[:, None] & (offs_n[None, :] < n)
    idx = offs_m[:, None] * n + offs_n[None, :]

    p1 = tl.load(pred_ptr + idx, mask=mask, other=0.0)
    p2 = tl.load(pred_ptr + R * n + idx, mask=mask, other=0.0)
    t1 = tl.load(target1_ptr + idx, mask=mask, other=0.0)
    y2 = tl.load(y2_ptr + idx, mask=mask, other=0.0)
    done = tl.load(done_ptr + offs_m, mask=mask_m, other=0.0)
    y2 = tl.where(done[:, None] != 0.0, t1, y2)

    d1 = p1 - t1
    d2 = p2 - y2
    w1 = 1.0 - gamma
    tl.store(grad_ptr + idx, (2.0 * w1 * inv_count) * d1, mask=mask)
    tl.store(grad_ptr + R * n + idx, (2.0 * gamma * inv_count) * d2, mask=mask)
    part = tl.sum(tl.sum(w1 * d1 * d1 + gamma * d2 * d2, axis=1), axis=0)
    tl.store(partial_ptr + pid, part * inv_count)


def td_loss_fwd_bwd(pred, target1, y2, done, gamma, grad_out=None, block_m=64, num_warps=4):
    """pred (2R, n), target1, y2 (R, n), done (R,) bool/float, gamma float
    -> (loss 0-d fp32 tensor, grad_pred (2R, n) = d loss / d pred). `grad_out` (optional) receives the grad.
    Seed axis (seed_axis): pred (S, 2R, n), target1, y2 (S, R, n), done (S, R) -> (loss (S,), one per
    seed, grad_pred (S, 2R, n)). No rows: the loss is NaN (the mean of nothing, as in reference.td_loss),
    grad_pred empty."""
    given = grad_out
    single = target1.dim() == 2
    if single:
        pred, target1, y2, done, grad_out = add_seed_axis(pred, target1, y2, done, grad_out)
    S, R, n = target1.shape
    pred, target1, y2 = pred.contiguous(), target1.contiguous(), y2.contiguous()
    done = done.to(torch.float32).contiguous()
    if grad_out is None:
        grad_out = torch.empty((S, 2 * R, n), device=pred.device, dtype=torch.float32)
    if R * n == 0:
        loss = torch.full((S,), float("nan"), device=pred.device)
    else:
        programs = triton.cdiv(R, block_m)
        partial = torch.empty((S, programs), device=pred.device, dtype=torch.float32)
        _td_loss_kernel[(programs, S)](
            pred, target1, y2, done, grad_out, partial, R, n, float(gamma), 1.0 / (R * n),
            BLOCK_M=block_m, BLOCK_N=triton.next_power_of_2(n), num_warps=num_warps,
        )
        loss = partial.sum(-1)
    if single:
        return loss[0], (grad_out[0] if given is None else given)
    return loss, grad_out
