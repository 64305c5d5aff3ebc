"""Forward noising and denoiser input assembly in one launch (docs/ALGORITHM.md#diffusion-schedule, reference.noised_rows).

Row layout: [x_t (n), s (n), c(t) (1), a (m)] (SSM denoiser) or [x_t (n), c(t) (1)] (data denoiser),
x_t = sqrt_ab[t] x0 + sqrt_1m_ab[t] eps, c(t) = -1 + 2 t / steps.
"""
import torch
import triton
import triton.language as tl

from .seed_axis import add_seed_axis


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

    t = tl.load(t_ptr + offs_m, mask=mask_m, other=0)
    ab = tl.load(sqrt_ab_ptr + t, mask=mask_m, other=0.0)[:, None]
    ab1m = tl.load(sqrt_1m_ab_ptr + t, mask=mask_m, other=0.0)[:, None]
    c = (t.to(tl.float32) * c_scale - 1.0)[:, None]

    in_x = col < n
    x0 = tl.load(x0_ptr + rm * n + col, mask=row_ok & in_x, other=0.0)
    eps = tl.load(eps_ptr + rm * n + col, mask=row_ok & in_x, other=0.0)
    val = tl.where(in_x, ab * x0 + ab1m * eps, 0.0)
    if HAS_COND:
        width = 2 * n + 1 + m
        in_s = (col >= n) & (col < 2 * n)
        in_a = (col > 2 * n) & (col < width)
        s = tl.load(s_ptr + rm * n + (col - n), mask=row_ok & in_s, other=0.0)
        a = tl.load(a_ptr + rm * m + (col - 2 * n - 1), mask=row_ok & in_a, other=0.0)
        val = tl.where(in_s, s, val)
        val = tl.where(col == 2 * n, c, val)
        val = tl.where(in_a, a, val)
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
