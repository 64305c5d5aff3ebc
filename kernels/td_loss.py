"""The critic side's squared-error losses, each with its gradient w.r.t. the network output in the same pass.

BDM TD loss (docs/ALGORITHM.md#the-bdm-td-loss, reference.td_loss):
loss = mean_{rows, dims} (1-gamma) (p1 - target1)^2 + gamma (p2 - y2')^2, y2' = target1 on done rows.
Critic TD loss (docs/ALGORITHM.md#critic-loss, reference.critic_td_loss) and the data denoiser's loss
(reference.denoising_loss), the latter also in the BDM TD loss's launch (a second program per seed).

One program per seed walks all its rows: the loss needs no second launch to sum partials, and its
reduction order is fixed (deterministic). The rows are few (a batch: B x obs dim), the work a few us.
"""
import torch
import triton
import triton.language as tl

from .noising import level_coefficients, network_target
from .seed_axis import add_seed_axis


@triton.jit
def _td_loss_rows(pred_ptr, target1_ptr, y2_ptr, done_ptr, grad_ptr, loss_ptr, sid, R, n, gamma, inv_count,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Seed sid's BDM TD loss: all rows of both halves of its pred (S, 2R, n), BLOCK_M at a time; writes
    their grad rows (S, 2R, n) and its loss (S,); target1, y2 (S, R, n), done (S, R)."""
    pred_ptr += sid * 2 * R * n
    grad_ptr += sid * 2 * R * n
    target1_ptr += sid * R * n
    y2_ptr += sid * R * n
    done_ptr += sid * R
    offs_n = tl.arange(0, BLOCK_N)
    w1 = 1.0 - gamma
    squares = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in range(0, R, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
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
        tl.store(grad_ptr + idx, (2.0 * w1 * inv_count) * d1, mask=mask)
        tl.store(grad_ptr + R * n + idx, (2.0 * gamma * inv_count) * d2, mask=mask)
        squares += w1 * d1 * d1 + gamma * d2 * d2
    tl.store(loss_ptr + sid, tl.sum(tl.sum(squares, axis=1), axis=0) * inv_count)


@triton.jit
def _td_loss_kernel(
    pred_ptr, target1_ptr, y2_ptr, done_ptr, grad_ptr, loss_ptr,
    out_ptr, x0_ptr, eps_ptr, t_ptr, sqrt_ab_ptr, sqrt_1m_ab_ptr, data_grad_ptr, data_loss_ptr,
    R, n, gamma, inv_count,
    HAS_DATA: tl.constexpr, PREDICTION: tl.constexpr, BLOCK_M: tl.constexpr, DATA_BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Program (program_id(0) = seed, 0): _td_loss_rows. HAS_DATA: program (seed, 1) computes the data
    denoiser's loss in the same launch (_denoising_loss_rows: out, x0, eps (S, R, n), t (S, R) -> data_grad
    (S, R, n), data_loss (S,))."""
    sid = tl.program_id(0).to(tl.int64)
    if tl.program_id(1) == 0:
        _td_loss_rows(pred_ptr, target1_ptr, y2_ptr, done_ptr, grad_ptr, loss_ptr, sid, R, n, gamma, inv_count,
                      BLOCK_M, BLOCK_N)
    else:
        if HAS_DATA:
            _denoising_loss_rows(out_ptr, x0_ptr, eps_ptr, t_ptr, sqrt_ab_ptr, sqrt_1m_ab_ptr, data_grad_ptr,
                                 data_loss_ptr, sid, R, n, PREDICTION, DATA_BLOCK_M, BLOCK_N)


def td_loss_fwd_bwd(pred, target1, y2, done, gamma, grad_out=None, data=None, block_m=64, data_block_m=32,
                    num_warps=4):
    """pred (2R, n), target1, y2 (R, n), done (R,) bool/float, gamma float
    -> (loss 0-d fp32 tensor, grad_pred (2R, n) = d loss / d pred). `grad_out` (optional) receives the grad.
    data: the data denoiser's (out, x0, eps (R, n), t (R,) int64, sqrt_ab, sqrt_1m_ab, prediction_index),
    denoising_loss_fwd_bwd's arguments, its loss computed by the same launch: then (loss, grad_pred,
    data loss, grad_out of the data denoiser). Seed axis (seed_axis): pred (S, 2R, n), target1, y2 (S, R, n),
    done (S, R), data's tensors but the buffers with a leading S -> the losses (S,), one per seed, the grads
    (S, ...). No rows: the losses are NaN (the mean of nothing, as in reference.td_loss), the grads empty."""
    given = grad_out
    single = target1.dim() == 2
    out, x0, eps, t, sqrt_ab, sqrt_1m_ab, prediction = data or (None,) * 7
    if single:
        pred, target1, y2, done, grad_out, out, x0, eps, t = add_seed_axis(pred, target1, y2, done, grad_out, out,
                                                                           x0, eps, t)
    S, R, n = target1.shape
    pred, target1, y2 = pred.contiguous(), target1.contiguous(), y2.contiguous()
    done = done.to(torch.float32).contiguous()
    if grad_out is None:
        grad_out = torch.empty((S, 2 * R, n), device=pred.device, dtype=torch.float32)
    loss = torch.empty((S,), device=pred.device, dtype=torch.float32)
    results = [loss, grad_out]
    if data is not None:
        results += [torch.empty((S,), device=pred.device, dtype=torch.float32), torch.empty_like(out)]
        tensors = [x.contiguous() for x in (out, x0, eps, t, sqrt_ab, sqrt_1m_ab)]
    if R * n == 0:
        for x in results[::2]:
            x.fill_(float("nan"))
    else:
        data_args = (*tensors, results[3], results[2]) if data is not None else (pred,) * 6 + (grad_out, loss)
        _td_loss_kernel[(S, 1 if data is None else 2)](
            pred, target1, y2, done, grad_out, loss, *data_args, R, n, float(gamma), 1.0 / (R * n),
            HAS_DATA=data is not None, PREDICTION=0 if data is None else prediction, BLOCK_M=block_m,
            DATA_BLOCK_M=data_block_m, BLOCK_N=triton.next_power_of_2(n), num_warps=num_warps,
        )
    if single:
        results = [x[0] for x in results]
        if given is not None:
            results[1] = given
    return tuple(results)


@triton.jit
def _critic_td_loss_kernel(
    q_ptr, q_target_ptr, next_action_ptr, data_next_action_ptr, rewards_ptr, dones_ptr, valid_ptr,
    grad_ptr, loss_ptr, q_mean_ptr,
    B, m, gamma, w_bc, qt_seed_stride, qt_member_stride,
    MEMBERS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_A: tl.constexpr,
):
    """Program program_id(0) = seed: all B rows of q (S, MEMBERS, B) against y (B,); writes grad_q
    (S, MEMBERS, B), loss (S,) and the mean of q (S,); q_target (S, MEMBERS, B) with unit row stride (its
    seed and member strides given: a column slice of both updates' target values); rewards, dones, valid
    (S, B); the actions (S, B, m)."""
    sid = tl.program_id(0).to(tl.int64)
    q_ptr += sid * MEMBERS * B
    grad_ptr += sid * MEMBERS * B
    next_action_ptr += sid * B * m
    data_next_action_ptr += sid * B * m
    q_target_ptr += sid * qt_seed_stride
    rewards_ptr += sid * B
    dones_ptr += sid * B
    valid_ptr += sid * B
    offs_a = tl.arange(0, BLOCK_A)
    squares = tl.zeros([BLOCK_B], dtype=tl.float32)
    values = tl.zeros([BLOCK_B], dtype=tl.float32)
    for start in range(0, B, BLOCK_B):
        rows = start + tl.arange(0, BLOCK_B)
        ok = rows < B
        both = ok[:, None] & (offs_a[None, :] < m)
        idx = rows[:, None] * m + offs_a[None, :]
        gap = tl.load(next_action_ptr + idx, mask=both, other=0.0) - tl.load(data_next_action_ptr + idx, mask=both,
                                                                             other=0.0)
        penalty = w_bc * tl.load(valid_ptr + rows, mask=ok, other=0.0) * tl.sum(gap * gap, axis=1)
        not_done = gamma * (1.0 - tl.load(dones_ptr + rows, mask=ok, other=0.0))
        q_next = tl.load(q_target_ptr + rows, mask=ok, other=0.0)
        for k in tl.static_range(1, MEMBERS):
            q_next = tl.minimum(q_next, tl.load(q_target_ptr + k * qt_member_stride + rows, mask=ok, other=0.0))
        y = tl.load(rewards_ptr + rows, mask=ok, other=0.0) + not_done * (q_next - penalty)
        for k in tl.static_range(MEMBERS):
            q = tl.load(q_ptr + k * B + rows, mask=ok, other=0.0)
            diff = tl.where(ok, q - y, 0.0)
            tl.store(grad_ptr + k * B + rows, (2.0 / B) * diff, mask=ok)
            squares += diff * diff
            values += q
    tl.store(loss_ptr + sid, tl.sum(squares, axis=0) / B)
    tl.store(q_mean_ptr + sid, tl.sum(values, axis=0) / (MEMBERS * B))


def critic_td_loss_fwd_bwd(q, q_target, next_action, data_next_action, rewards, dones, valid, gamma, w_bc,
                           block_b=128, num_warps=4):
    """q (members, B) online critics' values; q_target (members, B) the target critics' at (s', a');
    next_action, data_next_action (B, m) a' and the dataset's next actions; rewards, dones, valid (B,) float
    -> (loss 0-d, mean of q 0-d, grad_q (members, B) = d loss / d q), loss = sum over members of
    mean_rows (q - y)^2, y = r + gamma (1 - done) (min_members q_target - w_bc valid ||a' - a_data'||^2).
    Seed axis (seed_axis): every argument with a leading S -> (loss (S,), q mean (S,), grad_q (S, members, B)).
    No rows: loss and q mean NaN (the mean of nothing, as in reference.critic_td_loss)."""
    single = q.dim() == 2
    if single:
        q, q_target, next_action, data_next_action, rewards, dones, valid = add_seed_axis(
            q, q_target, next_action, data_next_action, rewards, dones, valid)
    S, members, B = q.shape
    m = next_action.shape[-1]
    grad = torch.empty((S, members, B), device=q.device, dtype=torch.float32)
    loss = torch.empty((S,), device=q.device, dtype=torch.float32)
    q_mean = torch.empty((S,), device=q.device, dtype=torch.float32)
    if B == 0:
        loss.fill_(float("nan"))
        q_mean.fill_(float("nan"))
    else:
        q_target = q_target.to(torch.float32)
        if q_target.stride(-1) != 1:
            q_target = q_target.contiguous()
        floats = [x.to(torch.float32).contiguous() for x in (q, next_action, data_next_action, rewards, dones, valid)]
        _critic_td_loss_kernel[(S,)](
            floats[0], q_target, *floats[1:], grad, loss, q_mean, B, m, float(gamma), float(w_bc),
            q_target.stride(0), q_target.stride(1),
            MEMBERS=members, BLOCK_B=block_b, BLOCK_A=triton.next_power_of_2(max(m, 1)), num_warps=num_warps,
        )
    if single:
        return loss[0], q_mean[0], grad[0]
    return loss, q_mean, grad


@triton.jit
def _denoising_loss_rows(out_ptr, x0_ptr, eps_ptr, t_ptr, sqrt_ab_ptr, sqrt_1m_ab_ptr, grad_ptr, loss_ptr, sid, R, n,
                         PREDICTION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Seed sid's denoising loss: all rows of out, x0, eps (S, R, n), t (S, R); writes grad (S, R, n) and
    loss (S,). PREDICTION: 0 sample, 1 epsilon, 2 v (schedule.network_target)."""
    out_ptr += sid * R * n
    x0_ptr += sid * R * n
    eps_ptr += sid * R * n
    grad_ptr += sid * R * n
    t_ptr += sid * R
    offs_n = tl.arange(0, BLOCK_N)
    scale = 2.0 / (R * n)
    squares = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in range(0, R, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        ok = rows < R
        mask = ok[:, None] & (offs_n[None, :] < n)
        idx = rows[:, None] * n + offs_n[None, :]
        x0 = tl.load(x0_ptr + idx, mask=mask, other=0.0)
        eps = tl.load(eps_ptr + idx, mask=mask, other=0.0)
        ab, ab1m, _ = level_coefficients(t_ptr, rows, ok, sqrt_ab_ptr, sqrt_1m_ab_ptr, 0.0)
        diff = tl.load(out_ptr + idx, mask=mask, other=0.0) - network_target(x0, eps, ab, ab1m, PREDICTION)
        tl.store(grad_ptr + idx, scale * diff, mask=mask)
        squares += diff * diff
    tl.store(loss_ptr + sid, tl.sum(tl.sum(squares, axis=1), axis=0) / (R * n))


@triton.jit
def _denoising_loss_kernel(
    out_ptr, x0_ptr, eps_ptr, t_ptr, sqrt_ab_ptr, sqrt_1m_ab_ptr, grad_ptr, loss_ptr,
    R, n,
    PREDICTION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Program program_id(0) = seed: _denoising_loss_rows."""
    _denoising_loss_rows(out_ptr, x0_ptr, eps_ptr, t_ptr, sqrt_ab_ptr, sqrt_1m_ab_ptr, grad_ptr, loss_ptr,
                         tl.program_id(0).to(tl.int64), R, n, PREDICTION, BLOCK_M, BLOCK_N)


def denoising_loss_fwd_bwd(out, x0, eps, t, sqrt_ab, sqrt_1m_ab, prediction_index, block_m=32, num_warps=4):
    """reference.denoising_loss with its gradient: out, x0, eps (R, n), t (R,) int64, sqrt_ab, sqrt_1m_ab
    (steps,) schedule buffers, prediction_index into schedule.PREDICTIONS -> (loss 0-d, grad_out (R, n)).
    Seed axis (seed_axis): every argument but the buffers with a leading S -> (loss (S,), grad (S, R, n)).
    No rows: the loss is NaN (the mean of nothing), grad empty."""
    single = out.dim() == 2
    if single:
        out, x0, eps, t = add_seed_axis(out, x0, eps, t)
    S, R, n = out.shape
    grad = torch.empty((S, R, n), device=out.device, dtype=torch.float32)
    loss = torch.empty((S,), device=out.device, dtype=torch.float32)
    if R * n == 0:
        loss.fill_(float("nan"))
    else:
        tensors = [x.contiguous() for x in (out, x0, eps, t, sqrt_ab, sqrt_1m_ab)]
        _denoising_loss_kernel[(S,)](
            *tensors, grad, loss, R, n,
            PREDICTION=prediction_index, BLOCK_M=block_m, BLOCK_N=triton.next_power_of_2(n), num_warps=num_warps,
        )
    if single:
        return loss[0], grad[0]
    return loss, grad
