"""Forward noising and denoiser input assembly in one launch (docs/ALGORITHM.md#diffusion-schedule, reference.noised_rows).

Row layout: [x_t (n), s (n), c(t) (1), a (m)] (SSM denoiser) or [x_t (n), c(t) (1)] (data denoiser),
x_t = sqrt_ab[t] x0 + sqrt_1m_ab[t] eps, c(t) = -1 + 2 t / steps.
bdm_td_rows: every row the BDM TD loss feeds its two denoisers, and its first target, in one launch (and the
data denoiser's rows, from its own states and draws: every denoiser input row of a critic-side update).
smoothed_action: TD3's target policy smoothing, a' = clamp(pi'(s') + clamp(sigma N, -c, c), -max, max).
"""
import torch
import triton
import triton.language as tl

from .seed_axis import add_seed_axis


@triton.jit
def level_coefficients(t_ptr, offs_m, mask_m, sqrt_ab_ptr, sqrt_1m_ab_ptr, c_scale):
    """(sqrt_ab[t], sqrt_1m_ab[t], c(t)) as [BLOCK_M, 1] columns for the rows offs_m (t read at t_ptr)."""
    t = tl.load(t_ptr + offs_m, mask=mask_m, other=0)
    ab = tl.load(sqrt_ab_ptr + t, mask=mask_m, other=0.0)[:, None]
    ab1m = tl.load(sqrt_1m_ab_ptr + t, mask=mask_m, other=0.0)[:, None]
    return ab, ab1m, (t.to(tl.float32) * c_scale - 1.0)[:, None]


@triton.jit
def conditioning(s_ptr, a_ptr, rm, col, row_ok, c, n, m):
    """Columns n.. of an SSM denoiser row [x_t (n), s (n), c(t) (1), a (m)] on a [rows, BLOCK_C] tile: s,
    c(t), a (0 past them and where a load is masked); rm the tile's rows (a column), col its columns (a row),
    s (R, n) and a (R, m) contiguous, c the rows' c(t) column."""
    in_s = (col >= n) & (col < 2 * n)
    in_a = (col > 2 * n) & (col < 2 * n + 1 + m)
    s = tl.load(s_ptr + rm * n + (col - n), mask=row_ok & in_s, other=0.0)
    a = tl.load(a_ptr + rm * m + (col - 2 * n - 1), mask=row_ok & in_a, other=0.0)
    return tl.where(in_s, s, tl.where(col == 2 * n, c, a))


@triton.jit
def network_target(x0, eps, ab, ab1m, PREDICTION: tl.constexpr):
    """schedule.network_target: PREDICTION 0 sample (x0), 1 epsilon (eps), 2 v (ab eps - ab1m x0)."""
    if PREDICTION == 0:
        return x0
    elif PREDICTION == 1:
        return eps
    else:
        return ab * eps - ab1m * x0


@triton.jit
def _noised_rows_kernel(
    x0_ptr, eps_ptr, t_ptr, s_ptr, a_ptr, sqrt_ab_ptr, sqrt_1m_ab_ptr, rows_ptr,
    R, n, m, c_scale,
    HAS_COND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One program writes BLOCK_M whole rows of seed program_id(1) of the (S, R, 2n+1+m) or (S, R, n+1)
    output; inputs x0, eps, s (S, R, n), t (S, R), a (S, R, m)."""
    pid = tl.program_id(0)
    sid = tl.program_id(1).to(tl.int64)
    x0_ptr += sid * R * n
    eps_ptr += sid * R * n
    s_ptr += sid * R * n
    a_ptr += sid * R * m
    t_ptr += sid * R
    if HAS_COND:
        rows_ptr += sid * R * (2 * n + 1 + m)
    else:
        rows_ptr += sid * R * (n + 1)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = tl.arange(0, BLOCK_C)
    mask_m = offs_m < R
    rm = offs_m[:, None]
    col = offs_c[None, :]
    row_ok = mask_m[:, None]

    ab, ab1m, c = level_coefficients(t_ptr, offs_m, mask_m, sqrt_ab_ptr, sqrt_1m_ab_ptr, c_scale)

    in_x = col < n
    x0 = tl.load(x0_ptr + rm * n + col, mask=row_ok & in_x, other=0.0)
    eps = tl.load(eps_ptr + rm * n + col, mask=row_ok & in_x, other=0.0)
    val = tl.where(in_x, ab * x0 + ab1m * eps, 0.0)
    if HAS_COND:
        width = 2 * n + 1 + m
        val = tl.where(in_x, val, conditioning(s_ptr, a_ptr, rm, col, row_ok, c, n, m))
    else:
        width = n + 1
        val = tl.where(col == n, c, val)
    tl.store(rows_ptr + rm * width + col, val, mask=row_ok & (col < width))


def noised_rows(x0, eps, t, s, a, sqrt_ab, sqrt_1m_ab, steps, out=None, block_m=16, num_warps=4):
    """Denoiser input rows: x0, eps (R, n), t (R,) int64, s (R, n) or None, a (R, m) or None,
    sqrt_ab, sqrt_1m_ab (steps,) schedule buffers -> (R, 2n+1+m), or (R, n+1) when s, a are None.
    Seed axis (seed_axis): x0, eps, s (S, R, n), t (S, R), a (S, R, m) -> (S, R, width).
    `out` (optional, contiguous fp32 of that shape) receives the result.
    block_m=16 with num_warps=4: a [16, 64] tile is 8 elements a thread. At block_m=64 (32 a thread,
    each with its own 64-bit addresses) sm_90 compiles hit the 255-register cap (triton 3.6) or
    spill to the stack (triton 3.9)."""
    given = out
    single = x0.dim() == 2
    if single:
        x0, eps, t, s, a, out = add_seed_axis(x0, eps, t, s, a, out)
    S, R, n = x0.shape
    has_cond = s is not None
    m = a.shape[2] if has_cond else 0
    width = 2 * n + 1 + m if has_cond else n + 1
    if out is None:
        out = torch.empty((S, R, width), device=x0.device, dtype=torch.float32)
    x0, eps, t = x0.contiguous(), eps.contiguous(), t.contiguous()
    sqrt_ab, sqrt_1m_ab = sqrt_ab.contiguous(), sqrt_1m_ab.contiguous()  # gathered with unit stride
    s = s.contiguous() if has_cond else x0
    a = a.contiguous() if has_cond else x0
    grid = (triton.cdiv(R, block_m), S)
    _noised_rows_kernel[grid](
        x0, eps, t, s, a, sqrt_ab, sqrt_1m_ab, out, R, n, m, 2.0 / steps,
        HAS_COND=has_cond, BLOCK_M=block_m, BLOCK_C=triton.next_power_of_2(width), num_warps=num_warps,
    )
    if single:
        return out[0] if given is None else given
    return out


@triton.jit
def _bdm_td_rows_kernel(
    s_ptr, a_ptr, s_next_ptr, a_next_ptr, samples_ptr, done_ptr, t_ptr, eps_ptr, sqrt_ab_ptr, sqrt_1m_ab_ptr,
    online_ptr, target_rows_ptr, target1_ptr, data_x0_ptr, data_t_ptr, data_eps_ptr, data_rows_ptr,
    R, n, m, c_scale,
    MASK_DONE: tl.constexpr, PREDICTION: tl.constexpr, HAS_DATA: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One program: BLOCK_M rows i of seed program_id(1); writes online rows i and R + i (S, 2R, W),
    target row i (S, R, W), target1 row i (S, R, n), W = 2n+1+m. PREDICTION: 0 sample, 1 epsilon, 2 v.
    HAS_DATA: also the data denoiser's row i (S, R, n+1) = [q(data_x0, data_t, data_eps), c(data_t)]."""
    pid = tl.program_id(0)
    sid = tl.program_id(1).to(tl.int64)
    width = 2 * n + 1 + m
    s_ptr += sid * R * n
    s_next_ptr += sid * R * n
    samples_ptr += sid * R * n
    eps_ptr += sid * R * n
    target1_ptr += sid * R * n
    a_ptr += sid * R * m
    a_next_ptr += sid * R * m
    done_ptr += sid * R
    t_ptr += sid * R
    online_ptr += sid * 2 * R * width
    target_rows_ptr += sid * R * width
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    col = tl.arange(0, BLOCK_C)[None, :]
    mask_m = offs_m < R
    rm = offs_m[:, None]
    row_ok = mask_m[:, None]

    ab, ab1m, c = level_coefficients(t_ptr, offs_m, mask_m, sqrt_ab_ptr, sqrt_1m_ab_ptr, c_scale)

    in_x = col < n
    x_ok = row_ok & in_x
    s_next = tl.load(s_next_ptr + rm * n + col, mask=x_ok, other=0.0)
    eps = tl.load(eps_ptr + rm * n + col, mask=x_ok, other=0.0)
    s_f = tl.load(samples_ptr + rm * n + col, mask=x_ok, other=0.0)
    if MASK_DONE:
        done = tl.load(done_ptr + offs_m, mask=mask_m, other=0.0)[:, None]
        s_f = tl.where(done != 0.0, s_next, s_f)
    x1 = ab * s_next + ab1m * eps
    x2 = ab * s_f + ab1m * eps

    cond = conditioning(s_ptr, a_ptr, rm, col, row_ok, c, n, m)
    target_cond = conditioning(s_next_ptr, a_next_ptr, rm, col, row_ok, c, n, m)
    row_mask = row_ok & (col < width)
    tl.store(online_ptr + rm * width + col, tl.where(in_x, x1, cond), mask=row_mask)
    tl.store(online_ptr + (rm + R) * width + col, tl.where(in_x, x2, cond), mask=row_mask)
    tl.store(target_rows_ptr + rm * width + col, tl.where(in_x, x2, target_cond), mask=row_mask)
    tl.store(target1_ptr + rm * n + col, network_target(s_next, eps, ab, ab1m, PREDICTION), mask=x_ok)
    if HAS_DATA:
        seed_rows = sid * R
        ab, ab1m, c = level_coefficients(data_t_ptr + seed_rows, offs_m, mask_m, sqrt_ab_ptr, sqrt_1m_ab_ptr, c_scale)
        x0 = tl.load(data_x0_ptr + seed_rows * n + rm * n + col, mask=x_ok, other=0.0)
        eps = tl.load(data_eps_ptr + seed_rows * n + rm * n + col, mask=x_ok, other=0.0)
        tl.store(data_rows_ptr + seed_rows * (n + 1) + rm * (n + 1) + col,
                 tl.where(in_x, ab * x0 + ab1m * eps, c), mask=row_ok & (col <= n))


def bdm_td_rows(s, a, s_next, a_next, samples, done, t, eps, sqrt_ab, sqrt_1m_ab, steps, prediction_index,
                mask_done=True, data_x0=None, data_t=None, data_eps=None, block_m=16, num_warps=4):
    """reference.bdm_td_rows in one launch: s, s_next, samples, eps (R, n), a, a_next (R, m), done (R,)
    float or bool, t (R,) int64, sqrt_ab, sqrt_1m_ab (steps,) schedule buffers, prediction_index into
    schedule.PREDICTIONS -> (online rows (2R, 2n+1+m), target rows (R, 2n+1+m), target1 (R, n), data rows
    (R, n+1) = noised_rows(data_x0, data_eps, data_t) of the data denoiser, (0, n+1) without data_x0;
    data_x0, data_eps (R, n), data_t (R,) int64: all three or none). Seed axis (seed_axis): every argument
    with a leading S. block_m: as noised_rows's."""
    has_data = data_x0 is not None
    if has_data != (data_t is not None) or has_data != (data_eps is not None):
        raise ValueError("bdm_td_rows: give the data denoiser's data_x0, data_t and data_eps together, or none")
    single = s.dim() == 2
    if single:
        s, a, s_next, a_next, samples, done, t, eps, data_x0, data_t, data_eps = add_seed_axis(
            s, a, s_next, a_next, samples, done, t, eps, data_x0, data_t, data_eps)
    S, R, n = s.shape
    m = a.shape[2]
    width = 2 * n + 1 + m
    online = torch.empty((S, 2 * R, width), device=s.device, dtype=torch.float32)
    target_rows = torch.empty((S, R, width), device=s.device, dtype=torch.float32)
    target1 = torch.empty((S, R, n), device=s.device, dtype=torch.float32)
    data_rows = torch.empty((S, R if has_data else 0, n + 1), device=s.device, dtype=torch.float32)
    if R > 0:
        done = done.to(torch.float32)  # no copy for float dones (the batches')
        tensors = [x.contiguous() for x in (s, a, s_next, a_next, samples, done, t, eps, sqrt_ab, sqrt_1m_ab)]
        data = [x.contiguous() for x in (data_x0, data_t, data_eps)] if has_data else [s, t, eps]
        _bdm_td_rows_kernel[(triton.cdiv(R, block_m), S)](
            *tensors, online, target_rows, target1, *data, data_rows, R, n, m, 2.0 / steps,
            MASK_DONE=mask_done, PREDICTION=prediction_index, HAS_DATA=has_data, BLOCK_M=block_m,
            BLOCK_C=triton.next_power_of_2(width), num_warps=num_warps,
        )
    results = (online, target_rows, target1, data_rows)
    return tuple(x[0] for x in results) if single else results


@triton.jit
def smoothed(action, normal, policy_noise, noise_clip, max_action):
    """clamp(action + clamp(policy_noise normal, -noise_clip, noise_clip), -max_action, max_action), elementwise
    (0 where action and normal are 0)."""
    noise = tl.minimum(tl.maximum(normal * policy_noise, -noise_clip), noise_clip)
    return tl.minimum(tl.maximum(action + noise, -max_action), max_action)


@triton.jit
def _smoothed_action_kernel(action_ptr, normal_ptr, out_ptr, numel, policy_noise, noise_clip, max_action,
                            BLOCK: tl.constexpr):
    """One program: BLOCK elements of the flat action, normal and out (any leading axes, seeds included)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    out = smoothed(tl.load(action_ptr + offs, mask=ok, other=0.0), tl.load(normal_ptr + offs, mask=ok, other=0.0),
                   policy_noise, noise_clip, max_action)
    tl.store(out_ptr + offs, out, mask=ok)


def smoothed_action(action, normal, policy_noise, noise_clip, max_action, block=1024, num_warps=4):
    """reference.smoothed_action in one launch: action, normal (..., m) -> a' (..., m); elementwise, so
    any leading axes (the seed axis too)."""
    out = torch.empty_like(action, dtype=torch.float32)
    numel = action.numel()
    if numel:
        _smoothed_action_kernel[(triton.cdiv(numel, block),)](
            action.contiguous(), normal.contiguous(), out, numel, float(policy_noise), float(noise_clip),
            float(max_action), BLOCK=block, num_warps=num_warps,
        )
    return out
