"""The reverse chain (reference.reverse_chain) in the weight-stationary design: W2 stays on chip, rows travel.

Today's chain (reverse_chain.py) gives each program BLOCK_M rows and streams the seed's whole denoiser
(1.18 MB fp32) from L2 at every level: R / BLOCK_M copies of the weights per level. Here the 512 x 512
hidden matrix W2 is split by output columns into P_c = ceil(H2 / BLOCK_NS) slices; the P_c programs of
a *group* (one seed, one block of rows_per_group rows) each hold one slice, folded (below), for all
levels, and the rows go round through global memory (L2) instead:

    prologue  (rows stage)    base = s W_s^T + a W_a^T; x = z; pre1 = ReLU(x W_x^T + base + c w_c + b1)
                              and its LayerNorm statistics (mean1, rstd1), per row tile; group 0 of
                              each seed folds W2 (below) into the scratch w2f, fold
    per level (columns stage) pre2[:, slice] = ReLU(rstd1 (pre1 W2'_slice^T - mean1 colsum) + W2 beta1 + b2)
                              and the slice's partial statistics of pre2 (mean, M2 over its columns)
              (rows stage)    merge the P_c partials -> mean2, rstd2; out = W_out LN2(pre2) + b_out;
                              x <- sampler step; next level's pre1 and (mean1, rstd1)

Row tiles of a group are dealt round-robin to its P_c programs in the rows stage (the same program owns
a tile at every level); in the columns stage each program runs all of the group's tiles against its
slice. A stage reads what the group's other programs wrote in the stage before: one barrier per layer
stage, 2 per level (none after the last), 2 x levels in all, plus one for the whole seed after the
prologue (the fold is written by group 0 and read by every group).

LayerNorm 1 folded into layer 2 (its statistics travel with the rows). With W (N, K) in nn.Linear
layout, h (K,) a row, mu, sigma = sqrt(var + eps) its statistics, g, beta the LayerNorm gain and
bias, and W' = W diag(g):

    W LN(h) + b = W (g * (h - mu) / sigma + beta) + b = (W' h - mu W' 1) / sigma + (W beta + b)

with W' 1 = colsum(W') (summed over K, one value per output column). The stationary slice is W' with
the vectors colsum(W') and W beta, computed once per chain (`_fold_slice`; colsum of W' as stored, so
that in bf16 it is the sum of exactly what the dot multiplies); the row brings (h, mu, 1/sigma); h
goes from memory straight into the dot (no elementwise work on the [rows, H1] tile, which would route
it through registers: 128 of them per thread at BLOCK_M = 32, and spills), and mu and 1/sigma act on
the [rows, BLOCK_NS] product. Precision: the dot rounds h rather than h - mu, so at tf32 its error is
relative to |h| instead of the centred row: sqrt(E h^2 / var h) = (1 - 1/pi)^-1/2 = 1.21 times larger
for post-ReLU h (tests/test_kernels_weight_stationary.py derives the chain tolerance from it); in bf16
h is already stored in bf16 and exact as an operand; the subtraction mu colsum is in fp32 (a large mu,
~100 sigma, is tested in the interpreter). The partial statistics of a slice (count, mean, M2) merge as
in Chan et al., as the N-chunks of denoiser_mlp do. Layer 2 -> 3 is not folded: the rows stage streams
W_out in K-chunks and applies LayerNorm 2 on load (denoiser_mlp._ln_output_layer), a small layer.

Two orchestrations of the same tile functions:
One kernel, `_ws_chain_kernel`, with the orchestration a compile-time STAGE:
- persistent (STAGE "persistent", GPU): one launch, grid (P_c, groups, S); the slice is loaded once
  and held across levels (Triton hoists the loop-invariant operand into shared memory: one
  `local_alloc` outside the level loop in the TTGIR, checked by the sm_90 compile test); a barrier
  (`_group_barrier`) is an atomic counter per group: thread 0 adds 1 with release semantics and polls
  with acquire loads at gpu scope, bar.sync before and after (the PTX is checked by the compile test);
  the counter only grows, generation j completes at j P_c. Every program of the grid must be resident
  at once: the launcher keeps it within one program per SM (the slice fills the shared memory); a
  kernel on another stream only delays it, but two persistent chains on two streams at once can each
  hold SMs the other's waiting programs need (a deadlock): run chains on one stream. A
  barrier deadlocks in Triton's CPU interpreter, which runs programs one after another, unless a seed
  is one program (block_ns >= H2, rows_per_group >= R).
- staged (STAGE "prologue", then "columns" and "rows" for each level): one launch per stage,
  1 + 2 x levels launches; the kernel boundary is the barrier, the slice is reloaded per launch. Runs
  everywhere (the interpreter, and the GPU fallback when the persistent grid would not be resident).

Shared memory and registers per program on sm_90 (triton 3.9, hidden 512, BLOCK_M = 32, BLOCK_NS = 64,
num_warps = 8; cuobjdump), mma.sync throughout:

    STAGE        tf32: shared, registers   bf16: shared, registers
    persistent   200 KB, 224               100 KB, 204
    prologue      20 KB, 212                10 KB, 176
    columns      200 KB,  83               100 KB,  76
    rows          20 KB, 185                10 KB, 128

(s and a read in two row segments, _cond_base's per-row pointers, cost the persistent kernel 48 registers
at tf32 (176 before) and 30 at bf16 (174): still one program of 256 threads per SM, 57 K of its 64 K registers.)

no stack frame (spills) anywhere; persistent's 200 KB = the 128 KB slice + the columns stage's [32, 512]
row tile (64 KB) + the rows stage's operand tiles. num_warps = 4 spills (persistent tf32 176 B, bf16
80 B), and so does a 128-wide bf16 slice. One program per SM (shared memory at tf32, registers at
bf16: 204 x 256 threads). tests/test_kernels_forward.py's sm_90 compile checks the limits, the spills,
the slice's `local_alloc` before the level loop and the barrier's PTX.

Performance model against today's chain: profiling/chain_model.py (`chain_time`), docs/PERFORMANCE.md
section "The weight-stationary chain".
"""
import os

import torch
import triton
import triton.language as tl

from .denoiser_mlp import LAYER_NORM_EPS, _bias_relu_store, _ln_output_layer, _mma, _row_stats, _seed_weights
from .reverse_chain import _chain_first_layer, _cond_base, _level, _sampler_step, PreparedChain

ORCHESTRATIONS = ("auto", "persistent", "staged")
DESIGNS = ("rows", "weight_stationary")  # reverse_chain.py's row blocks, this module
MAX_HIDDEN = 512  # widest H1 the design is compiled and modelled for (slice and row tile in shared memory)
BF16_MIN_ROWS = 3072  # S x R from which profiling/chain_model.py favours this design at bf16
SLICE_BYTES = 128 * 1024  # the stationary slice per program: BLOCK_NS x H1 x element size


def slice_width(hidden_in):
    """BLOCK_NS: W2 columns per program, the largest power of two <= 64 whose fp32 slice of hidden_in
    inputs fits SLICE_BYTES (64 at hidden 512: P_c = 8). bf16 uses the same width (64 KB): a 128-wide
    bf16 slice compiles to 255 registers with spills on sm_90."""
    width = 64
    while width > 16 and width * triton.next_power_of_2(hidden_in) * 4 > SLICE_BYTES:
        width //= 2
    return width


@triton.jit
def _group_barrier(counter_ptr, target):
    """Wait until the group's counter (int32, only grows) reaches target, after adding this program's
    arrival: the P_c programs of a group call it with target = generation x P_c. Release/acquire at gpu
    scope order the stages' global writes and reads; debug_barrier keeps the program's threads together."""
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    while seen < target:
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _fold_slice(w2_ptr, g1_ptr, beta1_ptr, w2f_ptr, fold_ptr, cb, H1, H2, BLOCK_K: tl.constexpr,
                BLOCK_NS: tl.constexpr):
    """Fold layer 2's column block cb: w2f[cols, :] = W2[cols, :] diag(g1) (in w2f's dtype), fold (2, H2):
    fold[0, cols] = colsum of the stored W2' (what the dot multiplies), fold[1, cols] = W2[cols, :] beta1.
    Streamed in [BLOCK_K, BLOCK_NS] chunks."""
    offs_ns = cb * BLOCK_NS + tl.arange(0, BLOCK_NS)
    mask_ns = offs_ns < H2
    colsum = tl.zeros([BLOCK_NS], dtype=tl.float32)
    w_beta = tl.zeros([BLOCK_NS], dtype=tl.float32)
    for k0 in range(0, H1, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = (offs_k < H1)[:, None] & mask_ns[None, :]
        idx = offs_ns[None, :] * H1 + offs_k[:, None]
        w = tl.load(w2_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g1_ptr + offs_k, mask=offs_k < H1, other=0.0)
        beta = tl.load(beta1_ptr + offs_k, mask=offs_k < H1, other=0.0)
        w_beta += tl.sum(w * beta[:, None], axis=0)
        wf = (w * g[:, None]).to(w2f_ptr.dtype.element_ty)
        tl.store(w2f_ptr + idx, wf, mask=mask)
        colsum += tl.sum(wf.to(tl.float32), axis=0)
    tl.store(fold_ptr + offs_ns, colsum, mask=mask_ns)
    tl.store(fold_ptr + H2 + offs_ns, w_beta, mask=mask_ns)


@triton.jit
def _stationary_slice(w2f_ptr, fold_ptr, cb, H1, H2, BLOCK_H1: tl.constexpr, BLOCK_NS: tl.constexpr):
    """Column block cb of the folded layer 2, loaded once and held: (W2'[cols, :]^T [BLOCK_H1, BLOCK_NS]
    as stored (the dot's B operand, loaded straight into it: no register copy), colsum, W2 beta1
    [BLOCK_NS]). Rows/columns past H1/H2 are 0."""
    offs_k = tl.arange(0, BLOCK_H1)
    offs_ns = cb * BLOCK_NS + tl.arange(0, BLOCK_NS)
    mask_ns = offs_ns < H2
    w = tl.load(w2f_ptr + offs_ns[None, :] * H1 + offs_k[:, None], mask=(offs_k < H1)[:, None] & mask_ns[None, :],
                other=0.0, cache_modifier=".cg")
    colsum = tl.load(fold_ptr + offs_ns, mask=mask_ns, other=0.0, cache_modifier=".cg")
    w_beta = tl.load(fold_ptr + H2 + offs_ns, mask=mask_ns, other=0.0, cache_modifier=".cg")
    return w, colsum, w_beta


@triton.jit
def _columns_tile(w2s, colsum, w_beta, b2_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr, offs_m, mask_m, cb, H1, H2,
                  BLOCK_M: tl.constexpr, BLOCK_H1: tl.constexpr, BLOCK_NS: tl.constexpr, PRECISION: tl.constexpr):
    """Layer 2 on one row tile for column block cb: pre2[rows, cols] = ReLU(rstd1 (pre1 W2'^T - mean1
    colsum) + W2 beta1 + b2) (the raw pre1 rows go straight into the dot), and the tile's partial
    statistics over the block's columns -> part (R, 2)."""
    offs_k = tl.arange(0, BLOCK_H1)
    h = tl.load(pre1_ptr + offs_m[:, None] * H1 + offs_k[None, :], mask=mask_m[:, None] & (offs_k < H1)[None, :],
                other=0.0, cache_modifier=".cg")
    mean = tl.load(stats1_ptr + offs_m * 2, mask=mask_m, other=0.0, cache_modifier=".cg")
    rstd = tl.load(stats1_ptr + offs_m * 2 + 1, mask=mask_m, other=0.0, cache_modifier=".cg")
    acc = _mma(tl.zeros([BLOCK_M, BLOCK_NS], dtype=tl.float32), h, w2s, PRECISION)
    acc = (acc - mean[:, None] * colsum[None, :]) * rstd[:, None] + w_beta[None, :]
    offs_ns = cb * BLOCK_NS + tl.arange(0, BLOCK_NS)
    zero = tl.zeros([BLOCK_M], dtype=tl.float32)
    mean2, m2 = _bias_relu_store(acc, b2_ptr, pre2_ptr, offs_m, mask_m, H2, offs_ns, offs_ns < H2, 0, zero, zero)
    tl.store(part_ptr + offs_m * 2, mean2, mask=mask_m)
    tl.store(part_ptr + offs_m * 2 + 1, m2, mask=mask_m)


@triton.jit
def _merged_stats(part_ptr, offs_m, mask_m, R, H2, n_col_blocks, eps, BLOCK_M: tl.constexpr, BLOCK_NS: tl.constexpr):
    """LayerNorm (mean2, rstd2) of the tile's rows from the n_col_blocks partials (S-offset part (P_c, R, 2))."""
    mean = tl.zeros([BLOCK_M], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_M], dtype=tl.float32)
    for cb in range(0, n_col_blocks):
        count = cb * BLOCK_NS * 1.0
        chunk = tl.minimum(H2 - cb * BLOCK_NS, BLOCK_NS) * 1.0
        part_mean = tl.load(part_ptr + cb * R * 2 + offs_m * 2, mask=mask_m, other=0.0, cache_modifier=".cg")
        part_m2 = tl.load(part_ptr + cb * R * 2 + offs_m * 2 + 1, mask=mask_m, other=0.0, cache_modifier=".cg")
        delta = part_mean - mean
        total = count + chunk
        mean = mean + delta * (chunk / total)
        m2 = m2 + part_m2 + delta * delta * (count * chunk / total)
    return _row_stats(mean, m2, H2, eps)


@triton.jit
def _first_layer_tile(x, lvl, base_ptr, w1_ptr, b1_ptr, pre1_ptr, stats1_ptr, offs_m, mask_m, n, D_IN, H1,
                      steps, c_scale, eps, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr,
                      SAMPLER: tl.constexpr, PRECISION: tl.constexpr):
    """Level lvl's layer 1 on the tile's state x -> pre1 rows and their (mean1, rstd1) -> stats1 (R, 2)."""
    i, _ = _level(lvl, steps, SAMPLER)
    mean1, rstd1 = _chain_first_layer(x, i * c_scale - 1.0, base_ptr, w1_ptr, b1_ptr, pre1_ptr, offs_m, mask_m,
                                      n, D_IN, H1, eps, BLOCK_M, BLOCK_N, BLOCK_O, PRECISION)
    tl.store(stats1_ptr + offs_m * 2, mean1, mask=mask_m)
    tl.store(stats1_ptr + offs_m * 2 + 1, rstd1, mask=mask_m)


@triton.jit
def _prologue_tile(s_ptr, s_tail_ptr, a_ptr, a_tail_ptr, head_rows, z_ptr, x_ptr, w1_ptr, b1_ptr, base_ptr, pre1_ptr,
                   stats1_ptr, offs_m, mask_m, n, m, H1, steps, c_scale, eps, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr, SAMPLER: tl.constexpr, PRECISION: tl.constexpr):
    """One row tile before the levels: base (s, a part of layer 1), x = z, level 0's layer 1."""
    D_IN = 2 * n + 1 + m
    _cond_base(s_ptr, s_tail_ptr, a_ptr, a_tail_ptr, head_rows, w1_ptr, base_ptr, offs_m, mask_m, n, m, D_IN, H1,
               BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
    tl.debug_barrier()
    offs_o = tl.arange(0, BLOCK_O)
    xo_mask = mask_m[:, None] & (offs_o[None, :] < n)
    x = tl.load(z_ptr + offs_m[:, None] * n + offs_o[None, :], mask=xo_mask, other=0.0)
    tl.store(x_ptr + offs_m[:, None] * n + offs_o[None, :], x, mask=xo_mask)
    _first_layer_tile(x, 0, base_ptr, w1_ptr, b1_ptr, pre1_ptr, stats1_ptr, offs_m, mask_m, n, D_IN, H1,
                      steps, c_scale, eps, BLOCK_M, BLOCK_N, BLOCK_O, SAMPLER, PRECISION)


@triton.jit
def _rows_tile(lvl, x_ptr, noise_ptr, w1_ptr, b1_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr, base_ptr, pre1_ptr,
               stats1_ptr, pre2_ptr, part_ptr, offs_m, mask_m, R, n, m, H1, H2, n_col_blocks, steps, n_levels,
               c_scale, eps, sqrt_ab_ptr, sqrt_1m_ab_ptr, sqrt_ab_prev_ptr, sqrt_1m_ab_prev_ptr, coef_x0_ptr,
               coef_xt_ptr, std_ptr, PREDICTION: tl.constexpr, SAMPLER: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_NS: tl.constexpr,
               PRECISION: tl.constexpr):
    """One row tile after level lvl's columns stage: LN2 from the partials, the output layer, the
    sampler step (x (R, n) updated in place) and, unless lvl is the last level, level lvl+1's layer 1."""
    offs_o = tl.arange(0, BLOCK_O)
    xo_mask = mask_m[:, None] & (offs_o[None, :] < n)
    xo_idx = offs_m[:, None] * n + offs_o[None, :]
    mean2, rstd2 = _merged_stats(part_ptr, offs_m, mask_m, R, H2, n_col_blocks, eps, BLOCK_M, BLOCK_NS)
    out = _ln_output_layer(pre2_ptr, mean2, rstd2, g2_ptr, beta2_ptr, H2, wo_ptr, bo_ptr, n, offs_m, mask_m,
                           BLOCK_M, BLOCK_O, BLOCK_K, PRECISION)
    _, k = _level(lvl, steps, SAMPLER)
    x = tl.load(x_ptr + xo_idx, mask=xo_mask, other=0.0)
    x = _sampler_step(x, out, k, noise_ptr + k * R * n + xo_idx, xo_mask, sqrt_ab_ptr, sqrt_1m_ab_ptr,
                      sqrt_ab_prev_ptr, sqrt_1m_ab_prev_ptr, coef_x0_ptr, coef_xt_ptr, std_ptr, PREDICTION, SAMPLER)
    tl.store(x_ptr + xo_idx, x, mask=xo_mask)
    if lvl + 1 < n_levels:
        _first_layer_tile(x, lvl + 1, base_ptr, w1_ptr, b1_ptr, pre1_ptr, stats1_ptr, offs_m, mask_m, n,
                          2 * n + 1 + m, H1, steps, c_scale, eps, BLOCK_M, BLOCK_N, BLOCK_O, SAMPLER, PRECISION)


@triton.jit
def _program_pointers(w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr,
                      s_ptr, s_tail_ptr, a_ptr, a_tail_ptr, z_ptr, noise_ptr, base_ptr, pre1_ptr, stats1_ptr, pre2_ptr,
                      part_ptr, x_ptr, w2f_ptr, fold_ptr, R, head_rows, n, m, H1, H2, steps, n_col_blocks):
    """The program's seed (program_id(2)): every pointer moved to that seed's weights, rows and scratch."""
    sid = tl.program_id(2).to(tl.int64)
    D_IN = 2 * n + 1 + m
    w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr = _seed_weights(
        sid, w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr,
        H1 * D_IN, H1, H2, n)
    return (w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr,
            s_ptr + sid * head_rows * n, s_tail_ptr + sid * (R - head_rows) * n, a_ptr + sid * head_rows * m,
            a_tail_ptr + sid * (R - head_rows) * m, z_ptr + sid * R * n, noise_ptr + sid * steps * R * n,
            base_ptr + sid * R * H1, pre1_ptr + sid * R * H1, stats1_ptr + sid * R * 2, pre2_ptr + sid * R * H2,
            part_ptr + sid * n_col_blocks * R * 2, x_ptr + sid * R * n, w2f_ptr + sid * H2 * H1,
            fold_ptr + sid * 2 * H2)


@triton.jit
def _prologue(s_ptr, s_tail_ptr, a_ptr, a_tail_ptr, head_rows, z_ptr, x_ptr, w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr,
              w2f_ptr, fold_ptr, base_ptr, pre1_ptr, stats1_ptr, cb, group, n_col_blocks, rows_per_group, R, n, m, H1, H2, steps, c_scale, eps,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr,
              BLOCK_NS: tl.constexpr, SAMPLER: tl.constexpr, PRECISION: tl.constexpr):
    """Program (cb, group)'s work before the levels: group 0 folds column block cb (_fold_slice), and
    every program runs its row tiles' prologue (base, x = z, level 0's layer 1)."""
    if group == 0:
        _fold_slice(w2_ptr, g1_ptr, beta1_ptr, w2f_ptr, fold_ptr, cb, H1, H2, BLOCK_K, BLOCK_NS)
    row0 = group * rows_per_group
    n_tiles = tl.cdiv(tl.minimum(rows_per_group, R - row0), BLOCK_M)
    for t in range(cb, n_tiles, n_col_blocks):
        offs_m = row0 + t * BLOCK_M + tl.arange(0, BLOCK_M)
        _prologue_tile(s_ptr, s_tail_ptr, a_ptr, a_tail_ptr, head_rows, z_ptr, x_ptr, w1_ptr, b1_ptr, base_ptr,
                       pre1_ptr, stats1_ptr, offs_m, offs_m < R, n, m, H1, steps, c_scale, eps, BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_O, SAMPLER,
                       PRECISION)


@triton.jit
def _columns_stage(w2s, colsum, w_beta, b2_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr, cb, group, rows_per_group,
                   R, H1, H2, BLOCK_M: tl.constexpr, BLOCK_H1: tl.constexpr, BLOCK_NS: tl.constexpr,
                   PRECISION: tl.constexpr):
    """One level's layer 2 for column block cb on every row tile of the group."""
    row0 = group * rows_per_group
    n_tiles = tl.cdiv(tl.minimum(rows_per_group, R - row0), BLOCK_M)
    for t in range(0, n_tiles):
        offs_m = row0 + t * BLOCK_M + tl.arange(0, BLOCK_M)
        _columns_tile(w2s, colsum, w_beta, b2_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr + cb * R * 2, offs_m,
                      offs_m < R, cb, H1, H2, BLOCK_M, BLOCK_H1, BLOCK_NS, PRECISION)


@triton.jit
def _rows_stage(lvl, x_ptr, noise_ptr, w1_ptr, b1_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr, base_ptr, pre1_ptr,
                stats1_ptr, pre2_ptr, part_ptr, cb, group, n_col_blocks, rows_per_group, R, n, m, H1, H2, steps,
                n_levels, c_scale, eps, sqrt_ab_ptr, sqrt_1m_ab_ptr, sqrt_ab_prev_ptr, sqrt_1m_ab_prev_ptr,
                coef_x0_ptr, coef_xt_ptr, std_ptr, PREDICTION: tl.constexpr, SAMPLER: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr,
                BLOCK_NS: tl.constexpr, PRECISION: tl.constexpr):
    """Level lvl's rows stage on the program's row tiles (tiles cb, cb + P_c, ... of the group)."""
    row0 = group * rows_per_group
    n_tiles = tl.cdiv(tl.minimum(rows_per_group, R - row0), BLOCK_M)
    for t in range(cb, n_tiles, n_col_blocks):
        offs_m = row0 + t * BLOCK_M + tl.arange(0, BLOCK_M)
        _rows_tile(lvl, x_ptr, noise_ptr, w1_ptr, b1_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr, base_ptr, pre1_ptr,
                   stats1_ptr, pre2_ptr, part_ptr, offs_m, offs_m < R, R, n, m, H1, H2, n_col_blocks, steps,
                   n_levels, c_scale, eps, sqrt_ab_ptr, sqrt_1m_ab_ptr, sqrt_ab_prev_ptr, sqrt_1m_ab_prev_ptr,
                   coef_x0_ptr, coef_xt_ptr, std_ptr, PREDICTION, SAMPLER, BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_O,
                   BLOCK_NS, PRECISION)


@triton.jit
def _ws_chain_kernel(
    w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr,
    s_ptr, s_tail_ptr, a_ptr, a_tail_ptr, z_ptr, noise_ptr, base_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr,
    x_ptr, w2f_ptr, fold_ptr, sqrt_ab_ptr, sqrt_1m_ab_ptr, sqrt_ab_prev_ptr, sqrt_1m_ab_prev_ptr, coef_x0_ptr, coef_xt_ptr, std_ptr,
    counter_ptr, lvl, R, head_rows, n, m, H1, H2, steps, n_levels, c_scale, eps, rows_per_group,
    STAGE: tl.constexpr, PREDICTION: tl.constexpr, SAMPLER: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_H1: tl.constexpr,
    BLOCK_NS: tl.constexpr, PRECISION: tl.constexpr,
):
    """Program (cb, group, seed) = program_id (0, 1, 2) of the chain; x (S, R, n): the samples. STAGE:
    "persistent": the whole chain, holding W2's folded column block cb for every level; barriers: after
      the prologue one for the whole seed (group 0 wrote the fold every group reads; counter (S, groups + 1)
      [seed, groups]), then one per layer stage among the group's P_c = num_programs(0) programs (counter
      [seed, group]). Every program of the grid must be resident.
    "prologue", "columns", "rows": one stage of the staged orchestration (columns and rows: of level lvl;
      counter_ptr unused)."""
    cb = tl.program_id(0)
    group = tl.program_id(1)
    n_col_blocks = tl.num_programs(0)
    (w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr, s_ptr, s_tail_ptr, a_ptr,
     a_tail_ptr, z_ptr, noise_ptr, base_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr, x_ptr, w2f_ptr,
     fold_ptr) = _program_pointers(
        w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr, s_ptr, s_tail_ptr, a_ptr,
        a_tail_ptr, z_ptr, noise_ptr, base_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr, x_ptr, w2f_ptr, fold_ptr, R,
        head_rows, n, m, H1, H2, steps, n_col_blocks)
    if STAGE == "persistent" or STAGE == "prologue":
        _prologue(s_ptr, s_tail_ptr, a_ptr, a_tail_ptr, head_rows, z_ptr, x_ptr, w1_ptr, b1_ptr, g1_ptr, beta1_ptr,
                  w2_ptr, w2f_ptr, fold_ptr, base_ptr, pre1_ptr, stats1_ptr, cb, group, n_col_blocks, rows_per_group,
                  R, n, m, H1, H2, steps, c_scale, eps, BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_O, BLOCK_NS, SAMPLER, PRECISION)
    if STAGE == "persistent":
        counter_ptr += tl.program_id(2) * (tl.num_programs(1) + 1)
        _group_barrier(counter_ptr + tl.num_programs(1), n_col_blocks * tl.num_programs(1))
        counter_ptr += group
    if STAGE == "persistent" or STAGE == "columns":
        w2s, colsum, w_beta = _stationary_slice(w2f_ptr, fold_ptr, cb, H1, H2, BLOCK_H1, BLOCK_NS)
    if STAGE == "persistent":
        for level in range(0, n_levels):
            _columns_stage(w2s, colsum, w_beta, b2_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr, cb, group,
                           rows_per_group, R, H1, H2, BLOCK_M, BLOCK_H1, BLOCK_NS, PRECISION)
            _group_barrier(counter_ptr, (2 * level + 1) * n_col_blocks)
            _rows_stage(level, x_ptr, noise_ptr, w1_ptr, b1_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr, base_ptr,
                        pre1_ptr, stats1_ptr, pre2_ptr, part_ptr, cb, group, n_col_blocks, rows_per_group, R, n, m,
                        H1, H2, steps, n_levels, c_scale, eps, sqrt_ab_ptr, sqrt_1m_ab_ptr, sqrt_ab_prev_ptr,
                        sqrt_1m_ab_prev_ptr, coef_x0_ptr, coef_xt_ptr, std_ptr, PREDICTION, SAMPLER, BLOCK_M,
                        BLOCK_N, BLOCK_K, BLOCK_O, BLOCK_NS, PRECISION)
            if level + 1 < n_levels:
                _group_barrier(counter_ptr, (2 * level + 2) * n_col_blocks)
    elif STAGE == "columns":
        _columns_stage(w2s, colsum, w_beta, b2_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr, cb, group,
                       rows_per_group, R, H1, H2, BLOCK_M, BLOCK_H1, BLOCK_NS, PRECISION)
    elif STAGE == "rows":
        _rows_stage(lvl, x_ptr, noise_ptr, w1_ptr, b1_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr, base_ptr, pre1_ptr,
                    stats1_ptr, pre2_ptr, part_ptr, cb, group, n_col_blocks, rows_per_group, R, n, m, H1, H2, steps,
                    n_levels, c_scale, eps, sqrt_ab_ptr, sqrt_1m_ab_ptr, sqrt_ab_prev_ptr, sqrt_1m_ab_prev_ptr,
                    coef_x0_ptr, coef_xt_ptr, std_ptr, PREDICTION, SAMPLER, BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_O,
                    BLOCK_NS, PRECISION)


def resident_programs(device):
    """Programs of the persistent grid that are resident at once: one per SM (the slice fills its
    shared memory); on the CPU (interpreter) no bound."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).multi_processor_count


def chain_design(device, rows, seeds, hidden_in, precision):
    """The reverse chain's design for S = seeds x R = rows rows on `device`, layer-2 input width hidden_in:
    FASTBDM_CHAIN ("rows" or "weight_stationary") when set; in the CPU interpreter "rows" (speed is not
    the point there); on a GPU the faster one by profiling/chain_model.py (H100 and H200 alike,
    docs/PERFORMANCE.md's weight-stationary section): weight-stationary for hidden_in <= MAX_HIDDEN at tf32,
    and at bf16 from S x R >= BF16_MIN_ROWS (below, the 40 us of its 20 barriers outweigh the bytes it saves)."""
    design = os.environ.get("FASTBDM_CHAIN")
    if design is not None:
        if design not in DESIGNS:
            raise ValueError(f"FASTBDM_CHAIN must be one of {DESIGNS}, got {design!r}")
        return design
    if device.type != "cuda" or hidden_in > MAX_HIDDEN:
        return "rows"
    return "weight_stationary" if precision != "bf16" or seeds * rows >= BF16_MIN_ROWS else "rows"


def group_rows(rows, seeds, col_blocks, block_m, resident):
    """rows_per_group (a multiple of block_m): as many groups as the resident programs allow (every
    program of the grid resident at once), at most one per row tile; unbounded (None): one tile a group."""
    tiles = triton.cdiv(rows, block_m)
    groups = tiles if resident is None else max(1, min(tiles, resident // (col_blocks * seeds)))
    return triton.cdiv(tiles, groups) * block_m


def weight_stationary_chain(weights, s, a, z, sqrt_ab, sqrt_1m_ab, sqrt_ab_prev, sqrt_1m_ab_prev, coef_x0, coef_xt,
                            posterior_std, steps, prediction="sample", sampler="ddim", noise=None, out=None,
                            precision="tf32", orchestration="auto", block_ns=None, rows_per_group=None,
                            block_m=32, block_n=64, block_k=32, num_warps=8, num_stages=2):
    """reverse_chain.reverse_chain (same arguments, shapes and results) in the weight-stationary design.
    orchestration: "auto" (persistent on a GPU when P_c x S programs fit one per SM, else staged),
    "persistent" (one launch, group barriers; every group's programs must be resident:
    on a GPU the grid is kept within one program per SM; in the interpreter only one program a seed:
    block_ns >= H2, rows_per_group >= R) or "staged" (1 + 2 x levels launches). block_ns: W2 columns per program (default
    slice_width); rows_per_group: rows of a group, a multiple of block_m (default group_rows)."""
    if orchestration not in ORCHESTRATIONS:
        raise ValueError(f"orchestration must be one of {ORCHESTRATIONS}, got {orchestration!r}")
    c = PreparedChain(weights, s, a, z, (sqrt_ab, sqrt_1m_ab, sqrt_ab_prev, sqrt_1m_ab_prev, coef_x0, coef_xt,
                                         posterior_std), steps, prediction, sampler, noise, out, precision)
    S, R, h1, h2 = c.S, c.R, c.h1, c.h2
    block_ns = block_ns or slice_width(h1)
    col_blocks = triton.cdiv(h2, block_ns)
    resident = resident_programs(c.z.device)
    if orchestration == "auto":
        orchestration = "persistent" if resident is not None and col_blocks * S <= resident else "staged"
    rows_per_group = rows_per_group or group_rows(R, S, col_blocks, block_m, resident)
    if rows_per_group % block_m:
        raise ValueError(f"rows_per_group ({rows_per_group}) must be a multiple of block_m ({block_m})")
    groups = triton.cdiv(R, rows_per_group) if R else 0
    if orchestration == "persistent" and resident is None and col_blocks * groups > 1:
        raise ValueError(f"the persistent chain with {col_blocks * groups} programs a seed deadlocks in Triton's "
                         f"CPU interpreter (programs run one after another): use block_ns >= {h2} and "
                         f"rows_per_group >= {R}, or 'staged'")
    if orchestration == "persistent" and resident is not None and col_blocks * groups * S > resident:
        raise ValueError(f"the persistent chain needs its {col_blocks * groups * S} programs resident at once "
                         f"({resident} SMs): use fewer rows_per_group groups or 'staged'")
    if groups == 0 or S == 0:
        return c.result()
    dev = c.z.device
    stats1 = torch.empty((S, R, 2), device=dev, dtype=torch.float32)
    part = torch.empty((S, col_blocks, R, 2), device=dev, dtype=torch.float32)
    w2f = torch.empty((S, h2, h1), device=dev, dtype=c.weights[4].dtype)
    fold = torch.empty((S, 2, h2), device=dev, dtype=torch.float32)
    counters = torch.zeros((S, groups + 1), device=dev, dtype=torch.int32)

    def launch(stage, lvl=0):
        _ws_chain_kernel[(col_blocks, groups, S)](
            *c.weights, c.s, c.s_tail, c.a, c.a_tail, c.z, c.noise, c.base, c.pre1, stats1, c.pre2, part, c.out, w2f,
            fold, *c.schedule, counters, lvl, R, c.head_rows, c.n, c.m, h1, h2, steps, c.n_levels, 2.0 / steps, LAYER_NORM_EPS, rows_per_group,
            STAGE=stage, PREDICTION=prediction, SAMPLER=sampler, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
            BLOCK_O=c.block_o, BLOCK_H1=triton.next_power_of_2(h1), BLOCK_NS=block_ns, PRECISION=precision,
            num_warps=num_warps, num_stages=num_stages)

    if orchestration == "persistent":
        launch("persistent")
    else:
        launch("prologue")
        for lvl in range(c.n_levels):
            launch("columns", lvl)
            launch("rows", lvl)
    return c.result()
