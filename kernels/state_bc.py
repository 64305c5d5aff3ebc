"""The state-BC term of the TD3-SBC actor loss in three launches (docs/ALGORITHM.md#one-td3-sbc-update;
reference.sbc_states, sbc_rows, sbc_loss): its states, its denoiser input rows, its loss with the loss's
gradient w.r.t. the target denoiser's output.

Seed axis (seed_axis): every tensor with a leading S, one program (or one column block) per seed.
Deterministic: every reduction runs in one program, in row order.
"""
import torch
import triton
import triton.language as tl

from .noising import conditioning, level_coefficients
from .seed_axis import add_seed_axis, unit_columns


@triton.jit
def _sbc_states_kernel(s_ptr, normal_ptr, out_ptr, B, n, s_seed, s_row, STANDARDISED: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Columns BLOCK_N * program_id(0) + [0, BLOCK_N) of seed program_id(1): s (S, B, n) (seed and row
    strides s_seed, s_row), normal (S, B, n) -> out (S, 2B, n) = [s; mean + std normal] (STANDARDISED:
    [s; (s - mean) / std]), mean and the unbiased std over the B rows."""
    sid = tl.program_id(1).to(tl.int64)
    s_ptr += sid * s_seed
    normal_ptr += sid * B * n
    out_ptr += sid * 2 * B * n
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols[None, :] < n
    total = tl.zeros([BLOCK_N], dtype=tl.float32)
    for r0 in range(0, B, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)[:, None]
        total += tl.sum(tl.load(s_ptr + rows * s_row + cols[None, :], mask=(rows < B) & col_ok, other=0.0),
                        axis=0)
    mean = total / B
    squares = tl.zeros([BLOCK_N], dtype=tl.float32)
    for r0 in range(0, B, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)[:, None]
        mask = (rows < B) & col_ok
        s = tl.load(s_ptr + rows * s_row + cols[None, :], mask=mask, other=0.0)
        dev = tl.where(mask, s - mean[None, :], 0.0)
        squares += tl.sum(dev * dev, axis=0)
    std = tl.where(cols < n, tl.sqrt(squares / (B - 1)), 1.0)  # past n: masked, no 0 / 0
    for r0 in range(0, B, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)[:, None]
        mask = (rows < B) & col_ok
        idx = rows * n + cols[None, :]
        s = tl.load(s_ptr + rows * s_row + cols[None, :], mask=mask, other=0.0)
        tl.store(out_ptr + idx, s, mask=mask)
        if STANDARDISED:
            second = (s - mean[None, :]) / std[None, :]
        else:
            second = mean[None, :] + std[None, :] * tl.load(normal_ptr + idx, mask=mask, other=0.0)
        tl.store(out_ptr + B * n + idx, second, mask=mask)


def sbc_states(s, normal, block_m=32, block_n=32, num_warps=4):
    """S = [s; s_rand] (2B, n) from s (B, n): s_rand = mean + std * normal per dim (normal (B, n)), or with
    normal None the standardised s (compat standardised_sbc_half). Seed axis: (S, B, n) -> (S, 2B, n)."""
    single = s.dim() == 2
    if single:
        s, normal = add_seed_axis(s, normal)
    S, B, n = s.shape
    s = unit_columns(s)  # a batch's column view read in place
    normal = s if normal is None else normal.contiguous()
    out = torch.empty((S, 2 * B, n), device=s.device, dtype=torch.float32)
    _sbc_states_kernel[(triton.cdiv(n, block_n), S)](
        s, normal, out, B, n, s.stride(0), s.stride(1), STANDARDISED=normal is s, BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=num_warps)
    return out[0] if single else out


@triton.jit
def _sbc_rows_kernel(x0_ptr, eps_ptr, t_ptr, s_ptr, a_ptr, sqrt_ab_ptr, sqrt_1m_ab_ptr, e_rows_ptr, d_rows_ptr,
                     R, n, m, c_scale, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """BLOCK_M rows of seed program_id(1): x_t = sqrt_ab[t] x0 + sqrt_1m_ab[t] eps, c = c_scale t - 1;
    writes e_rows (S, R, n+1) = [x_t, c] and d_rows (S, R, 2n+1+m) = [x_t, s, c, a]."""
    pid = tl.program_id(0)
    sid = tl.program_id(1).to(tl.int64)
    x0_ptr += sid * R * n
    eps_ptr += sid * R * n
    s_ptr += sid * R * n
    a_ptr += sid * R * m
    t_ptr += sid * R
    width = 2 * n + 1 + m
    e_rows_ptr += sid * R * (n + 1)
    d_rows_ptr += sid * R * width
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < R
    rm = offs_m[:, None]
    col = tl.arange(0, BLOCK_C)[None, :]
    row_ok = mask_m[:, None]
    ab, ab1m, c = level_coefficients(t_ptr, offs_m, mask_m, sqrt_ab_ptr, sqrt_1m_ab_ptr, c_scale)
    in_x = col < n
    x0 = tl.load(x0_ptr + rm * n + col, mask=row_ok & in_x, other=0.0)
    eps = tl.load(eps_ptr + rm * n + col, mask=row_ok & in_x, other=0.0)
    x_t = tl.where(in_x, ab * x0 + ab1m * eps, 0.0)
    tl.store(e_rows_ptr + rm * (n + 1) + col, tl.where(col == n, c, x_t), mask=row_ok & (col <= n))
    d_row = tl.where(in_x, x_t, conditioning(s_ptr, a_ptr, rm, col, row_ok, c, n, m))
    tl.store(d_rows_ptr + rm * width + col, d_row, mask=row_ok & (col < width))


def sbc_rows(x0, eps, t, s, a, sqrt_ab, sqrt_1m_ab, steps, block_m=16, num_warps=4):
    """The SBC term's denoiser input rows from one q(x0, t, eps): x0, eps, s (R, n), t (R,) int64,
    a (R, m), sqrt_ab, sqrt_1m_ab (steps,) -> (E's rows [x_t, c(t)] (R, n+1), D''s rows [x_t, s, c(t), a]
    (R, 2n+1+m)). Seed axis: every argument but the schedule with a leading S, results (S, R, .)."""
    single = x0.dim() == 2
    if single:
        x0, eps, t, s, a = add_seed_axis(x0, eps, t, s, a)
    S, R, n = x0.shape
    m = a.shape[-1]
    e_rows = torch.empty((S, R, n + 1), device=x0.device, dtype=torch.float32)
    d_rows = torch.empty((S, R, 2 * n + 1 + m), device=x0.device, dtype=torch.float32)
    _sbc_rows_kernel[(triton.cdiv(R, block_m), S)](
        x0.contiguous(), eps.contiguous(), t.contiguous(), s.contiguous(), a.contiguous(), sqrt_ab.contiguous(),
        sqrt_1m_ab.contiguous(), e_rows, d_rows, R, n, m, 2.0 / steps,
        BLOCK_M=block_m, BLOCK_C=triton.next_power_of_2(2 * n + 1 + m), num_warps=num_warps)
    return (e_rows[0], d_rows[0]) if single else (e_rows, d_rows)


@triton.jit
def _sbc_loss_kernel(e_ptr, d_ptr, t_ptr, eta_ptr, loss_ptr, grad_ptr, R, n, scale, BROADCAST: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Seed program_id(0): loss = scale sum_r w_r ||e_r - d_r||^2 with w_r = eta[t_r] / sum_r eta[t_r]
    (BROADCAST: 1 / R) into loss (S,), and its gradient w.r.t. d (S, R, n) into grad."""
    sid = tl.program_id(0).to(tl.int64)
    e_ptr += sid * R * n
    d_ptr += sid * R * n
    grad_ptr += sid * R * n
    t_ptr += sid * R
    cols = tl.arange(0, BLOCK_N)[None, :]
    eta_sum = 0.0
    if not BROADCAST:
        acc = tl.zeros([BLOCK_M], dtype=tl.float32)
        for r0 in range(0, R, BLOCK_M):
            rows = r0 + tl.arange(0, BLOCK_M)
            acc += tl.load(eta_ptr + tl.load(t_ptr + rows, mask=rows < R, other=0), mask=rows < R, other=0.0)
        eta_sum = tl.sum(acc, axis=0)
    total = tl.zeros([BLOCK_M], dtype=tl.float32)
    for r0 in range(0, R, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        row_ok = rows < R
        if BROADCAST:
            w = tl.where(row_ok, 1.0 / R, 0.0)
        else:
            w = tl.load(eta_ptr + tl.load(t_ptr + rows, mask=row_ok, other=0), mask=row_ok, other=0.0) / eta_sum
        mask = row_ok[:, None] & (cols < n)
        idx = rows[:, None] * n + cols
        diff = tl.load(d_ptr + idx, mask=mask, other=0.0) - tl.load(e_ptr + idx, mask=mask, other=0.0)
        tl.store(grad_ptr + idx, (2.0 * scale) * w[:, None] * diff, mask=mask)
        total += w * tl.sum(diff * diff, axis=1)
    tl.store(loss_ptr + sid, scale * tl.sum(total, axis=0))


def sbc_loss(e_out, d_out, t, eta, scale, broadcast, block_m=32, num_warps=4):
    """scale * mean_r(eta_r ||e_out_r - d_out_r||^2), eta_r = eta[t_r] / mean_r eta[t_r] (broadcast: the
    compat weighting, mean of the errors): e_out, d_out (R, n), t (R,) int64, eta (steps,) -> (loss 0-d,
    d loss / d d_out (R, n)). Seed axis: (S, R, n), t (S, R) -> (loss (S,), grad (S, R, n))."""
    single = e_out.dim() == 2
    if single:
        e_out, d_out, t = add_seed_axis(e_out, d_out, t)
    S, R, n = e_out.shape
    loss = torch.empty((S,), device=e_out.device, dtype=torch.float32)
    grad = torch.empty((S, R, n), device=e_out.device, dtype=torch.float32)
    _sbc_loss_kernel[(S,)](e_out.contiguous(), d_out.contiguous(), t.contiguous(), eta.contiguous(), loss, grad, R,
                           n, float(scale), BROADCAST=bool(broadcast), BLOCK_M=block_m,
                           BLOCK_N=triton.next_power_of_2(n), num_warps=num_warps)
    return (loss[0], grad[0]) if single else (loss, grad)
