"""The whole reverse-diffusion sampler of the SSM denoiser in one launch (docs/ALGORITHM.md#samplers, reference.reverse_chain).

A program owns BLOCK_M rows and loops over the levels; per level it runs the fused MLP
(denoiser_mlp helpers) and the posterior update. The first layer's s, a part (s W_s^T + a W_a^T)
is computed once per chain into the `base` scratch (R, H1); per level layer 1 is
base + b1 + c(i) w_c + x W_x^T, with x (the chain state, [BLOCK_M, BLOCK_O]) kept in registers
across levels. Hidden activations go through the scratch buffers pre1 (R, H1), pre2 (R, H2).

Shared memory per program (fp32, num_stages=2, H100 defaults BLOCK_M=32, BLOCK_N=64, BLOCK_K=32,
BLOCK_O=32 for n <= 32, num_warps=4): the streamed operand tiles, 2 * (32*32 + 32*64) * 4 B = 24 KB
at most, independent of the hidden width. Compiled for sm_90 offline (triton 3.9): 16.6 KB shared,
mma.sync, no register spills. BLOCK_M sets the parallelism (R / BLOCK_M programs, one chain
block each): 16 or 32 for R ~ 1024-2048 rows on 132 SMs; BLOCK_M=64 (wgmma) wants num_warps=8.
Triton 3.6 for sm_90 (cuobjdump resource usage, hidden 512): BLOCK_M=32 244-246 registers, no stack;
BLOCK_M=16 168 registers but a 40-48 B stack frame (spills); BLOCK_M=64, num_warps=8 248 registers,
no stack. Precision "bf16" (bf16 weights and pre1/pre2, BLOCK_M=32): 8.4 KB shared, mma.sync,
no stack; 188 registers with triton 3.9, 222 with triton 3.6. Triton 3.9, bf16, other blocks: BLOCK_M=16
124 registers, no stack (twice the programs of 32); BLOCK_M=64 wgmma, num_warps=8 175 registers, no
stack; num_warps=4 spills (56 B). tf32 at BLOCK_M=64, num_warps=4 spills too (40 B). Hidden widths that are not multiples of 16 lose the divisibility hints and spill at both
BLOCK_M=16 and 32 (184-560 B stack): keep H1, H2 multiples of 16.
"""
import torch
import triton
import triton.language as tl

from .denoiser_mlp import (
    LAYER_NORM_EPS, _accum_linear, _bias_relu_store, _ln_hidden_layer, _ln_output_layer, _mma, _row_stats,
    _seed_weights, output_block, seed_stacked,
)
from .seed_axis import add_seed_axis

PREDICTIONS = ("sample", "epsilon", "v")
SAMPLERS = ("ddim", "ddpm", "posterior_mean")


@triton.jit
def _segment_rows(head_ptr, tail_ptr, head_rows, offs_m, width):
    """[BLOCK_M, 1] pointers to rows offs_m of [head (head_rows rows); tail], rows of `width` elements."""
    rows = tl.where(offs_m < head_rows, head_ptr + offs_m * width, tail_ptr + (offs_m - head_rows) * width)
    return rows[:, None]


@triton.jit
def _cond_base(s_ptr, s_tail_ptr, a_ptr, a_tail_ptr, head_rows, w1_ptr, base_ptr, offs_m, mask_m, n, m, D_IN, H1,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """base (R, H1) = s W_s^T + a W_a^T for the program's rows (W_s = W1[:, n:2n], W_a = W1[:, 2n+1:]); s and a
    in two row segments (PreparedChain): rows below head_rows from s_ptr, a_ptr, the others from the tails."""
    s_rows = _segment_rows(s_ptr, s_tail_ptr, head_rows, offs_m, n)
    a_rows = _segment_rows(a_ptr, a_tail_ptr, head_rows, offs_m, m)
    for n0 in range(0, H1, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < H1
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc = _accum_linear(acc, s_rows, 0, offs_m, mask_m, n, w1_ptr, D_IN, n, offs_n, mask_n, BLOCK_K, PRECISION)
        acc = _accum_linear(acc, a_rows, 0, offs_m, mask_m, m, w1_ptr, D_IN, 2 * n + 1, offs_n, mask_n,
                            BLOCK_K, PRECISION)
        tl.store(base_ptr + offs_m[:, None] * H1 + offs_n[None, :], acc, mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _chain_first_layer(x, c, base_ptr, w1_ptr, b1_ptr, pre1_ptr, offs_m, mask_m, n, D_IN, H1, eps,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr,
                       PRECISION: tl.constexpr):
    """pre1 (R, H1) = ReLU(x W_x^T + base + c w_c + b1), x [BLOCK_M, BLOCK_O] registers; returns LN mean, rstd."""
    offs_o = tl.arange(0, BLOCK_O)
    mask_o = offs_o < n
    run_mean = tl.zeros([BLOCK_M], dtype=tl.float32)
    run_m2 = tl.zeros([BLOCK_M], dtype=tl.float32)
    for n0 in range(0, H1, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < H1
        acc = tl.load(base_ptr + offs_m[:, None] * H1 + offs_n[None, :],
                      mask=mask_m[:, None] & mask_n[None, :], other=0.0)
        w_c = tl.load(w1_ptr + offs_n * D_IN + 2 * n, mask=mask_n, other=0.0).to(tl.float32)
        acc += c * w_c[None, :]
        w_x = tl.load(w1_ptr + offs_n[None, :] * D_IN + offs_o[:, None],
                      mask=mask_o[:, None] & mask_n[None, :], other=0.0)
        acc = _mma(acc, x, w_x, PRECISION)
        run_mean, run_m2 = _bias_relu_store(acc, b1_ptr, pre1_ptr, offs_m, mask_m, H1, offs_n, mask_n,
                                            n0, run_mean, run_m2)
    return _row_stats(run_mean, run_m2, H1, eps)


@triton.jit
def _level(lvl, steps, SAMPLER: tl.constexpr):
    """(i, k) of chain level lvl = 0, 1, ...: the network is told level i = steps-1-lvl, the scheduler
    coefficients are taken at k (i, or i - 1 for "posterior_mean")."""
    i = steps - 1 - lvl
    if SAMPLER == "posterior_mean":
        k = i - 1
    else:
        k = i
    return i, k


@triton.jit
def _sampler_step(x, out, k, noise_ptrs, xo_mask, sqrt_ab_ptr, sqrt_1m_ab_ptr, sqrt_ab_prev_ptr, sqrt_1m_ab_prev_ptr,
                  coef_x0_ptr, coef_xt_ptr, std_ptr, PREDICTION: tl.constexpr, SAMPLER: tl.constexpr):
    """The chain state x [BLOCK_M, BLOCK_O] after one sampler level at coefficient index k, from the
    network output `out` (same tile); noise_ptrs: the tile's DDPM noise at level k (read for "ddpm")."""
    sab = tl.load(sqrt_ab_ptr + k)
    s1m = tl.load(sqrt_1m_ab_ptr + k)
    if PREDICTION == "sample":
        x0hat = out
        epshat = (x - sab * x0hat) / s1m
    elif PREDICTION == "epsilon":
        epshat = out
        x0hat = (x - s1m * epshat) / sab
    else:
        x0hat = sab * x - s1m * out
        epshat = s1m * x + sab * out
    if SAMPLER == "ddim":
        x = tl.load(sqrt_ab_prev_ptr + k) * x0hat + tl.load(sqrt_1m_ab_prev_ptr + k) * epshat
    else:
        x = tl.load(coef_x0_ptr + k) * x0hat + tl.load(coef_xt_ptr + k) * x
        if SAMPLER == "ddpm":
            xi = tl.load(noise_ptrs, mask=xo_mask, other=0.0)
            # level 0 adds no noise (reference: `k > 0`); a select, not 0 * xi, so that a NaN/Inf
            # or uninitialised noise[0] cannot leak in
            x = tl.where(k > 0, x + tl.load(std_ptr + k) * xi, x)
    return x


@triton.jit
def _reverse_chain_kernel(
    w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr,
    s_ptr, s_tail_ptr, a_ptr, a_tail_ptr, z_ptr, noise_ptr,
    sqrt_ab_ptr, sqrt_1m_ab_ptr, sqrt_ab_prev_ptr, sqrt_1m_ab_prev_ptr, coef_x0_ptr, coef_xt_ptr, std_ptr,
    base_ptr, pre1_ptr, pre2_ptr, x_out_ptr,
    R, head_rows, n, m, H1, H2, steps, n_levels, c_scale, eps,
    PREDICTION: tl.constexpr, SAMPLER: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One program: BLOCK_M rows of seed program_id(1) from z (S, R, n) through n_levels sampler levels
    of that seed's denoiser -> x_out (S, R, n); s, a in two row segments (S, head_rows, .) and (S, R - head_rows, .);
    noise (S, steps, R, n), scratch (S, R, H_k)."""
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < R
    offs_o = tl.arange(0, BLOCK_O)
    xo_mask = mask_m[:, None] & (offs_o[None, :] < n)
    xo_idx = offs_m[:, None] * n + offs_o[None, :]
    D_IN = 2 * n + 1 + m
    sid = tl.program_id(1).to(tl.int64)  # the seed: its weights and rows, contiguous per seed
    w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr = _seed_weights(
        sid, w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr,
        H1 * D_IN, H1, H2, n)
    s_ptr, s_tail_ptr = s_ptr + sid * head_rows * n, s_tail_ptr + sid * (R - head_rows) * n
    a_ptr, a_tail_ptr = a_ptr + sid * head_rows * m, a_tail_ptr + sid * (R - head_rows) * m
    z_ptr += sid * R * n
    x_out_ptr += sid * R * n
    noise_ptr += sid * steps * R * n
    base_ptr += sid * R * H1
    pre1_ptr += sid * R * H1
    pre2_ptr += sid * R * H2

    _cond_base(s_ptr, s_tail_ptr, a_ptr, a_tail_ptr, head_rows, w1_ptr, base_ptr, offs_m, mask_m, n, m, D_IN, H1,
               BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
    tl.debug_barrier()

    x = tl.load(z_ptr + xo_idx, mask=xo_mask, other=0.0)
    for lvl in range(0, n_levels):
        i, k = _level(lvl, steps, SAMPLER)
        c = i * c_scale - 1.0

        mean1, rstd1 = _chain_first_layer(x, c, base_ptr, w1_ptr, b1_ptr, pre1_ptr, offs_m, mask_m, n, D_IN, H1,
                                          eps, BLOCK_M, BLOCK_N, BLOCK_O, PRECISION)
        tl.debug_barrier()
        mean2, rstd2 = _ln_hidden_layer(pre1_ptr, mean1, rstd1, g1_ptr, beta1_ptr, H1, w2_ptr, b2_ptr, pre2_ptr,
                                        H2, offs_m, mask_m, eps, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
        tl.debug_barrier()
        out = _ln_output_layer(pre2_ptr, mean2, rstd2, g2_ptr, beta2_ptr, H2, wo_ptr, bo_ptr, n, offs_m, mask_m,
                               BLOCK_M, BLOCK_O, BLOCK_K, PRECISION)
        x = _sampler_step(x, out, k, noise_ptr + k * R * n + xo_idx, xo_mask, sqrt_ab_ptr, sqrt_1m_ab_ptr,
                          sqrt_ab_prev_ptr, sqrt_1m_ab_prev_ptr, coef_x0_ptr, coef_xt_ptr, std_ptr,
                          PREDICTION, SAMPLER)
    tl.store(x_out_ptr + xo_idx, x, mask=xo_mask)


class PreparedChain:
    """A chain call's tensors on the seed axis, checked and contiguous (its arguments as reverse_chain's;
    schedule: the 7 buffers in order): weights (check_weights, stacked), z (S, R, n), s and a in two row
    segments (row_segments): s, s_tail (S, head_rows, n), (S, R - head_rows, n), a, a_tail likewise of width m,
    noise (S, steps, R, n) (drawn when None for DDPM; z when not DDPM), schedule, out (S, R, n) (the
    given `out` with a seed axis, or a new buffer), sizes S, R, head_rows, n, m, h1, h2, n_levels, block_o, and the
    scratch every chain kernel uses: base (S, R, h1) fp32, pre1 (S, R, h1), pre2 (S, R, h2) in W1's dtype.
    result(): `out` in the call's own shape (the seed axis dropped for a 2-D call)."""

    def __init__(self, weights, s, a, z, schedule, steps, prediction, sampler, noise, out, precision):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        self.given = out
        self.z, self.weights, self.single = seed_stacked(z, weights, precision)
        (s, s_tail), (a, a_tail) = row_segments(s), row_segments(a)
        segmented = s_tail is not s
        if segmented != (a_tail is not a) or segmented and s.shape[-2] != a.shape[-2]:
            raise ValueError(f"s and a must be split into row segments alike: s {tuple(s.shape)} and "
                             f"{'two segments' if segmented else 'one'}, a {tuple(a.shape)} and "
                             f"{'two segments' if a_tail is not a else 'one'}")
        if self.single:
            s, s_tail, a, a_tail, noise, out = add_seed_axis(s, s_tail, a, a_tail, noise, out)
        self.s, self.s_tail, self.a, self.a_tail = (x.contiguous() for x in (s, s_tail, a, a_tail))
        self.schedule = tuple(b.contiguous() for b in schedule)
        S, R, n = self.z.shape
        self.head_rows = s.shape[1] if segmented else R
        if sampler == "ddpm":
            if noise is None:
                noise = torch.randn((S, steps, R, n), device=self.z.device, dtype=self.z.dtype)
            self.noise = noise.contiguous()
        else:
            self.noise = self.z
        self.out = torch.empty((S, R, n), device=self.z.device, dtype=torch.float32) if out is None else out
        self.n_levels = steps - 1 if sampler == "posterior_mean" else steps
        self.block_o = output_block(n)
        self.S, self.R, self.n, self.m = S, R, n, self.a.shape[2]
        w1, w2 = self.weights[0], self.weights[4]
        self.h1, self.h2 = w1.shape[1], w2.shape[1]
        self.base = torch.empty((S, R, self.h1), device=self.z.device, dtype=torch.float32)
        self.pre1 = torch.empty((S, R, self.h1), device=self.z.device, dtype=w1.dtype)
        self.pre2 = torch.empty((S, R, self.h2), device=self.z.device, dtype=w1.dtype)

    def result(self):
        if self.single:
            return self.out[0] if self.given is None else self.given
        return self.out


def row_segments(x):
    """s or a of a chain call as (head, tail): a tensor is one segment (the tail is the head itself), a
    list [head, tail] two, whose rows follow one another in the chain (TD3SBC.frozen_outputs: the target
    chains' rows, then the SBC chain's, without concatenating them)."""
    parts = [x] if isinstance(x, torch.Tensor) else list(x)
    if not 1 <= len(parts) <= 2:
        raise ValueError(f"the chain's s and a take one or two row segments, got {len(parts)}: concatenate the rest")
    return parts[0], parts[-1]


def reverse_chain(weights, s, a, z, sqrt_ab, sqrt_1m_ab, sqrt_ab_prev, sqrt_1m_ab_prev, coef_x0, coef_xt,
                  posterior_std, steps, prediction="sample", sampler="ddim", noise=None, out=None,
                  precision="tf32", block_m=32, block_n=64, block_k=32, num_warps=4, num_stages=2):
    """x0 samples (R, n) of the SSM denoiser `weights` (Denoiser.weights(), two hidden layers) at
    s (R, n), a (R, m) from start noise z (R, n); s and a may be two row segments each ([head, tail],
    row_segments, split alike). Schedule buffers (steps,) as in DiffusionSchedule:
    sqrt_ab, sqrt_one_minus_ab, sqrt_ab_prev, sqrt_one_minus_ab_prev, coef_x0, coef_xt, posterior_std.
    noise (steps, R, n): the DDPM per-level noise (drawn when None). Seed axis (seed_axis): s, z (S, R, n),
    a (S, R, m), noise (S, steps, R, n), weights stacked (S, ...) -> (S, R, n). prediction in
    PREDICTIONS, sampler in SAMPLERS. precision: as in denoiser_mlp.mlp_forward ("bf16": bf16 weights,
    hidden activations and dot operands; the chain state and the s, a part of layer 1 stay fp32).
    `out` (optional) receives the samples."""
    c = PreparedChain(weights, s, a, z, (sqrt_ab, sqrt_1m_ab, sqrt_ab_prev, sqrt_1m_ab_prev, coef_x0, coef_xt,
                                         posterior_std), steps, prediction, sampler, noise, out, precision)
    grid = (triton.cdiv(c.R, block_m), c.S)
    _reverse_chain_kernel[grid](
        *c.weights, c.s, c.s_tail, c.a, c.a_tail, c.z, c.noise, *c.schedule, c.base, c.pre1, c.pre2, c.out,
        c.R, c.head_rows, c.n, c.m, c.h1, c.h2, steps, c.n_levels, 2.0 / steps, LAYER_NORM_EPS,
        PREDICTION=prediction, SAMPLER=sampler, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        BLOCK_O=c.block_o, PRECISION=precision, num_warps=num_warps, num_stages=num_stages,
    )
    return c.result()
