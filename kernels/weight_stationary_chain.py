"""The reverse chain (reference.reverse_chain) in the weight-stationary design: W2 stays on chip, rows travel.

Today's chain (reverse_chain.py) gives each program BLOCK_M rows and streams the seed's whole denoiser
(1.18 MB fp32) from L2 at every level: R / BLOCK_M copies of the weights per level. Here the 512 x 512
hidden matrix W2 is split by output columns into P_c = ceil(H2 / BLOCK_NS) slices; the P_c programs of
a *group* (one seed, one block of rows_per_group rows) each hold one slice, folded (below), for all
levels, and the rows go round through global memory (L2) instead:

    prologue  (rows stage)    base = s W_s^T + a W_a^T; x = z; pre1 = ReLU(x W_x^T + base + c w_c + b1)
                              and its LayerNorm statistics (mean1, rstd1), per row tile
    per level (columns stage) pre2[:, slice] = ReLU(rstd1 (pre1 - mean1) W2'_slice^T + W2_slice beta1 + b2)
                              and the slice's partial statistics of pre2 (mean, M2 over its columns)
              (rows stage)    merge the P_c partials -> mean2, rstd2; out = W_out LN2(pre2) + b_out;
                              x <- sampler step; next level's pre1 and (mean1, rstd1)

Row tiles of a group are dealt round-robin to its P_c programs in the rows stage (the same program owns
a tile at every level); in the columns stage each program runs all of the group's tiles against its
slice. A stage reads what the group's other programs wrote in the stage before: one barrier per layer
stage, 2 per level (none after the last), 2 x levels in all.

LayerNorm folded into the next matmul (its statistics travel with the rows). With W (N, K) in
nn.Linear layout, h (K,) a row, mu, sigma = sqrt(var + eps) its statistics, g, beta the LayerNorm gain
and bias, and W' = W diag(g):

    W LN(h) + b = W (g * (h - mu) / sigma + beta) + b = (W' h - mu W' 1) / sigma + (W beta + b)

so the stationary slice is W' (gain folded in once, at load) with the constant bias W beta + b, and
the row brings only (h, mu, 1/sigma): the per-row scale 1/sigma is applied to the [rows, BLOCK_NS]
product instead of to the [rows, H1] input. The kernel subtracts mu from h as the row tile loads
((h - mu) W'^T, equal to W' h - mu colsum(W') in exact arithmetic) rather than subtracting
mu colsum(W') afterwards: tf32 (10-bit mantissa) and bf16 round the dot operands, and rounding h
instead of h - mu would cost an error proportional to |mu| / sigma; the subtraction is H1 operations
per row against the slice's H1 x BLOCK_NS multiply-adds. The partial statistics of a slice (count c,
mean, M2) merge as in Chan et al., as the N-chunks of denoiser_mlp do.

Two orchestrations of the same tile functions:
- persistent (`_ws_chain_kernel`, GPU): one launch, grid (P_c, groups, S); the slice is loaded once
  and held across levels (Triton hoists the loop-invariant operand into shared memory: one
  `local_alloc` outside the level loop in the TTGIR, checked by the sm_90 compile test); a barrier is
  an atomic counter per group (release add, acquire spin; the counter only grows, generation j
  completes at j P_c). Every program of a group must be resident at once: the launcher keeps the grid
  within one program per SM (the slice fills the shared memory). A grid barrier deadlocks in Triton's
  CPU interpreter, which runs programs one after another, unless every group is one program (P_c = 1).
- staged (`_ws_prologue_kernel`, `_ws_columns_kernel`, `_ws_rows_kernel`): one launch per stage,
  1 + 2 x levels launches; the kernel boundary is the barrier, the slice is reloaded per launch. Runs
  everywhere (the interpreter, and the GPU fallback when the persistent grid would not be resident).

Shared memory per program on sm_90 (triton 3.9, BLOCK_M = 32, hidden 512): the slice BLOCK_NS x H1 plus
the columns stage's [BLOCK_M, H1] row tile. tf32: BLOCK_NS = 64 (P_c = 8): 128 KB + 64 KB; bf16:
BLOCK_NS = 128 (P_c = 4): 128 KB + 32 KB (bf16 pre1). Both under the 227 KB a block may hold; one
program per SM. Registers and spills: tests/test_kernels_forward.py's sm_90 compile (no spills asserted).

Performance model against today's chain: docs/PERFORMANCE.md#the-weight-stationary-chain,
profiling/chain_model.py (`chain_time`).
"""
import torch
import triton
import triton.language as tl

from .denoiser_mlp import LAYER_NORM_EPS, _bias_relu_store, _ln_output_layer, _mma, _row_stats, _seed_weights
from .reverse_chain import _chain_first_layer, _cond_base, _level, _sampler_step, PreparedChain

ORCHESTRATIONS = ("persistent", "staged")
SLICE_BYTES = 128 * 1024  # the stationary slice per program: BLOCK_NS x H1 x element size
SHARED_LIMIT = 227 * 1024  # sm_90: the most shared memory one block may hold


def slice_width(hidden_in, precision):
    """BLOCK_NS: W2 columns per program, the largest power of two (16..128) whose slice of hidden_in
    inputs fits SLICE_BYTES (fp32: 64 at hidden 512; bf16: 128)."""
    size = 2 if precision == "bf16" else 4
    width = 128
    while width > 16 and width * triton.next_power_of_2(hidden_in) * size > SLICE_BYTES:
        width //= 2
    return width


def shared_bytes(hidden_in, block_ns, block_m, precision):
    """Shared memory of the persistent program: the slice plus the columns stage's row tile (bytes)."""
    size = 2 if precision == "bf16" else 4
    return (block_ns + block_m) * triton.next_power_of_2(hidden_in) * size


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
def _stationary_slice(w2_ptr, g1_ptr, beta1_ptr, cb, H1, H2,
                      BLOCK_H1: tl.constexpr, BLOCK_NS: tl.constexpr, PRECISION: tl.constexpr):
    """Column block cb of layer 2, folded: (W2' slice^T [BLOCK_H1, BLOCK_NS] = (W2 diag(g1))[cols, :]^T,
    in the dot's operand dtype; W2[cols, :] beta1 [BLOCK_NS] fp32). Rows/columns past H1/H2 are 0."""
    offs_k = tl.arange(0, BLOCK_H1)
    mask_k = offs_k < H1
    offs_ns = cb * BLOCK_NS + tl.arange(0, BLOCK_NS)
    mask_ns = offs_ns < H2
    w = tl.load(w2_ptr + offs_ns[None, :] * H1 + offs_k[:, None], mask=mask_k[:, None] & mask_ns[None, :],
                other=0.0).to(tl.float32)
    g = tl.load(g1_ptr + offs_k, mask=mask_k, other=0.0)
    beta = tl.load(beta1_ptr + offs_k, mask=mask_k, other=0.0)
    w_beta = tl.sum(w * beta[:, None], axis=0)
    w = w * g[:, None]
    if PRECISION == "bf16":
        w = w.to(tl.bfloat16)
    return w, w_beta


@triton.jit
def _columns_tile(w2s, w_beta, b2_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr, offs_m, mask_m, cb, H1, H2,
                  BLOCK_M: tl.constexpr, BLOCK_H1: tl.constexpr, BLOCK_NS: tl.constexpr, PRECISION: tl.constexpr):
    """Layer 2 on one row tile for column block cb: pre2[rows, cols] = ReLU(rstd1 (pre1 - mean1) W2'^T
    + W2 beta1 + b2), and the tile's partial statistics over the block's columns -> part (R, 2)."""
    offs_k = tl.arange(0, BLOCK_H1)
    mask_k = offs_k < H1
    h = tl.load(pre1_ptr + offs_m[:, None] * H1 + offs_k[None, :], mask=mask_m[:, None] & mask_k[None, :],
                other=0.0, cache_modifier=".cg").to(tl.float32)
    mean = tl.load(stats1_ptr + offs_m * 2, mask=mask_m, other=0.0, cache_modifier=".cg")
    rstd = tl.load(stats1_ptr + offs_m * 2 + 1, mask=mask_m, other=0.0, cache_modifier=".cg")
    h = tl.where(mask_k[None, :], h - mean[:, None], 0.0)
    acc = _mma(tl.zeros([BLOCK_M, BLOCK_NS], dtype=tl.float32), h, w2s, PRECISION)
    offs_ns = cb * BLOCK_NS + tl.arange(0, BLOCK_NS)
    acc = acc * rstd[:, None] + w_beta[None, :]
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
def _prologue_tile(s_ptr, a_ptr, z_ptr, x_ptr, w1_ptr, b1_ptr, base_ptr, pre1_ptr, stats1_ptr, offs_m, mask_m,
                   n, m, H1, steps, c_scale, eps, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr, SAMPLER: tl.constexpr, PRECISION: tl.constexpr):
    """One row tile before the levels: base (s, a part of layer 1), x = z, level 0's layer 1."""
    D_IN = 2 * n + 1 + m
    _cond_base(s_ptr, a_ptr, w1_ptr, base_ptr, offs_m, mask_m, n, m, D_IN, H1, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
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
                      s_ptr, a_ptr, z_ptr, noise_ptr, base_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr, x_ptr,
                      R, n, m, H1, H2, steps, n_col_blocks):
    """The program's seed (program_id(2)): every pointer moved to that seed's weights, rows and scratch."""
    sid = tl.program_id(2).to(tl.int64)
    D_IN = 2 * n + 1 + m
    w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr = _seed_weights(
        sid, w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr,
        H1 * D_IN, H1, H2, n)
    return (w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr,
            s_ptr + sid * R * n, a_ptr + sid * R * m, z_ptr + sid * R * n, noise_ptr + sid * steps * R * n,
            base_ptr + sid * R * H1, pre1_ptr + sid * R * H1, stats1_ptr + sid * R * 2, pre2_ptr + sid * R * H2,
            part_ptr + sid * n_col_blocks * R * 2, x_ptr + sid * R * n)


@triton.jit
def _ws_chain_kernel(
    w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr,
    s_ptr, a_ptr, z_ptr, noise_ptr,
    sqrt_ab_ptr, sqrt_1m_ab_ptr, sqrt_ab_prev_ptr, sqrt_1m_ab_prev_ptr, coef_x0_ptr, coef_xt_ptr, std_ptr,
    base_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr, x_ptr, counter_ptr,
    R, n, m, H1, H2, steps, n_levels, c_scale, eps, rows_per_group,
    PREDICTION: tl.constexpr, SAMPLER: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_H1: tl.constexpr, BLOCK_NS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Persistent: program (cb, group, seed) holds W2's column block cb for every level; one barrier per
    layer stage among the group's P_c = num_programs(0) programs (all resident). x (S, R, n): the samples."""
    cb = tl.program_id(0)
    group = tl.program_id(1)
    n_col_blocks = tl.num_programs(0)
    (w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr, s_ptr, a_ptr, z_ptr,
     noise_ptr, base_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr, x_ptr) = _program_pointers(
        w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr, s_ptr, a_ptr, z_ptr,
        noise_ptr, base_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr, x_ptr, R, n, m, H1, H2, steps, n_col_blocks)
    counter_ptr += tl.program_id(2) * tl.num_programs(1) + group
    w2s, w_beta = _stationary_slice(w2_ptr, g1_ptr, beta1_ptr, cb, H1, H2, BLOCK_H1, BLOCK_NS, PRECISION)
    row0 = group * rows_per_group
    n_tiles = tl.cdiv(tl.minimum(rows_per_group, R - row0), BLOCK_M)
    for t in range(cb, n_tiles, n_col_blocks):
        offs_m = row0 + t * BLOCK_M + tl.arange(0, BLOCK_M)
        _prologue_tile(s_ptr, a_ptr, z_ptr, x_ptr, w1_ptr, b1_ptr, base_ptr, pre1_ptr, stats1_ptr, offs_m,
                       offs_m < R, n, m, H1, steps, c_scale, eps, BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_O, SAMPLER,
                       PRECISION)
    _group_barrier(counter_ptr, n_col_blocks)
    for lvl in range(0, n_levels):
        for t in range(0, n_tiles):
            offs_m = row0 + t * BLOCK_M + tl.arange(0, BLOCK_M)
            _columns_tile(w2s, w_beta, b2_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr + cb * R * 2, offs_m,
                          offs_m < R, cb, H1, H2, BLOCK_M, BLOCK_H1, BLOCK_NS, PRECISION)
        _group_barrier(counter_ptr, (2 * lvl + 2) * n_col_blocks)
        for t in range(cb, n_tiles, n_col_blocks):
            offs_m = row0 + t * BLOCK_M + tl.arange(0, BLOCK_M)
            _rows_tile(lvl, x_ptr, noise_ptr, w1_ptr, b1_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr, base_ptr, pre1_ptr,
                       stats1_ptr, pre2_ptr, part_ptr, offs_m, offs_m < R, R, n, m, H1, H2, n_col_blocks, steps,
                       n_levels, c_scale, eps, sqrt_ab_ptr, sqrt_1m_ab_ptr, sqrt_ab_prev_ptr, sqrt_1m_ab_prev_ptr,
                       coef_x0_ptr, coef_xt_ptr, std_ptr, PREDICTION, SAMPLER, BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_O,
                       BLOCK_NS, PRECISION)
        if lvl + 1 < n_levels:
            _group_barrier(counter_ptr, (2 * lvl + 3) * n_col_blocks)


@triton.jit
def _ws_prologue_kernel(
    w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr,
    s_ptr, a_ptr, z_ptr, noise_ptr, base_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr, x_ptr,
    R, n, m, H1, H2, steps, c_scale, eps, rows_per_group,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr,
    SAMPLER: tl.constexpr, PRECISION: tl.constexpr,
):
    """Staged, first launch: the persistent kernel's prologue (same grid, same tiles per program)."""
    cb = tl.program_id(0)
    n_col_blocks = tl.num_programs(0)
    (w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr, s_ptr, a_ptr, z_ptr,
     noise_ptr, base_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr, x_ptr) = _program_pointers(
        w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr, s_ptr, a_ptr, z_ptr,
        noise_ptr, base_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr, x_ptr, R, n, m, H1, H2, steps, n_col_blocks)
    row0 = tl.program_id(1) * rows_per_group
    n_tiles = tl.cdiv(tl.minimum(rows_per_group, R - row0), BLOCK_M)
    for t in range(cb, n_tiles, n_col_blocks):
        offs_m = row0 + t * BLOCK_M + tl.arange(0, BLOCK_M)
        _prologue_tile(s_ptr, a_ptr, z_ptr, x_ptr, w1_ptr, b1_ptr, base_ptr, pre1_ptr, stats1_ptr, offs_m,
                       offs_m < R, n, m, H1, steps, c_scale, eps, BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_O, SAMPLER,
                       PRECISION)


@triton.jit
def _ws_columns_kernel(
    w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr,
    s_ptr, a_ptr, z_ptr, noise_ptr, base_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr, x_ptr,
    R, n, m, H1, H2, steps, rows_per_group,
    BLOCK_M: tl.constexpr, BLOCK_H1: tl.constexpr, BLOCK_NS: tl.constexpr, PRECISION: tl.constexpr,
):
    """Staged: one level's columns stage (the slice loaded for this launch)."""
    cb = tl.program_id(0)
    n_col_blocks = tl.num_programs(0)
    (w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr, s_ptr, a_ptr, z_ptr,
     noise_ptr, base_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr, x_ptr) = _program_pointers(
        w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr, s_ptr, a_ptr, z_ptr,
        noise_ptr, base_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr, x_ptr, R, n, m, H1, H2, steps, n_col_blocks)
    w2s, w_beta = _stationary_slice(w2_ptr, g1_ptr, beta1_ptr, cb, H1, H2, BLOCK_H1, BLOCK_NS, PRECISION)
    row0 = tl.program_id(1) * rows_per_group
    n_tiles = tl.cdiv(tl.minimum(rows_per_group, R - row0), BLOCK_M)
    for t in range(0, n_tiles):
        offs_m = row0 + t * BLOCK_M + tl.arange(0, BLOCK_M)
        _columns_tile(w2s, w_beta, b2_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr + cb * R * 2, offs_m,
                      offs_m < R, cb, H1, H2, BLOCK_M, BLOCK_H1, BLOCK_NS, PRECISION)


@triton.jit
def _ws_rows_kernel(
    w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr,
    s_ptr, a_ptr, z_ptr, noise_ptr, base_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr, x_ptr,
    sqrt_ab_ptr, sqrt_1m_ab_ptr, sqrt_ab_prev_ptr, sqrt_1m_ab_prev_ptr, coef_x0_ptr, coef_xt_ptr, std_ptr,
    lvl, R, n, m, H1, H2, steps, n_levels, c_scale, eps, rows_per_group,
    PREDICTION: tl.constexpr, SAMPLER: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_NS: tl.constexpr, PRECISION: tl.constexpr,
):
    """Staged: level lvl's rows stage."""
    cb = tl.program_id(0)
    n_col_blocks = tl.num_programs(0)
    (w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr, s_ptr, a_ptr, z_ptr,
     noise_ptr, base_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr, x_ptr) = _program_pointers(
        w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr, s_ptr, a_ptr, z_ptr,
        noise_ptr, base_ptr, pre1_ptr, stats1_ptr, pre2_ptr, part_ptr, x_ptr, R, n, m, H1, H2, steps, n_col_blocks)
    row0 = tl.program_id(1) * rows_per_group
    n_tiles = tl.cdiv(tl.minimum(rows_per_group, R - row0), BLOCK_M)
    for t in range(cb, n_tiles, n_col_blocks):
        offs_m = row0 + t * BLOCK_M + tl.arange(0, BLOCK_M)
        _rows_tile(lvl, x_ptr, noise_ptr, w1_ptr, b1_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr, base_ptr, pre1_ptr,
                   stats1_ptr, pre2_ptr, part_ptr, offs_m, offs_m < R, R, n, m, H1, H2, n_col_blocks, steps,
                   n_levels, c_scale, eps, sqrt_ab_ptr, sqrt_1m_ab_ptr, sqrt_ab_prev_ptr, sqrt_1m_ab_prev_ptr,
                   coef_x0_ptr, coef_xt_ptr, std_ptr, PREDICTION, SAMPLER, BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_O,
                   BLOCK_NS, PRECISION)


def resident_programs(device):
    """Programs of the persistent grid that are resident at once: one per SM (the slice fills its
    shared memory); on the CPU (interpreter) no bound."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).multi_processor_count


def group_rows(rows, seeds, col_blocks, block_m, resident):
    """rows_per_group (a multiple of block_m): as many groups as the resident programs allow (every
    program of the grid resident at once), at most one per row tile; unbounded (None): one tile a group."""
    tiles = triton.cdiv(rows, block_m)
    groups = tiles if resident is None else max(1, min(tiles, resident // (col_blocks * seeds)))
    return triton.cdiv(tiles, groups) * block_m


def weight_stationary_chain(weights, s, a, z, sqrt_ab, sqrt_1m_ab, sqrt_ab_prev, sqrt_1m_ab_prev, coef_x0, coef_xt,
                            posterior_std, steps, prediction="sample", sampler="ddim", noise=None, out=None,
                            precision="tf32", orchestration="staged", block_ns=None, rows_per_group=None,
                            block_m=32, block_n=64, block_k=32, num_warps=4):
    """reverse_chain.reverse_chain (same arguments, shapes and results) in the weight-stationary design.
    orchestration: "persistent" (one launch, group barriers; every group's programs must be resident:
    on a GPU the grid is kept within one program per SM, in the interpreter only block_ns >= H2, one
    program a group) or "staged" (1 + 2 x levels launches). block_ns: W2 columns per program (default
    slice_width); rows_per_group: rows of a group, a multiple of block_m (default group_rows)."""
    if orchestration not in ORCHESTRATIONS:
        raise ValueError(f"orchestration must be one of {ORCHESTRATIONS}, got {orchestration!r}")
    c = PreparedChain(weights, s, a, z, (sqrt_ab, sqrt_1m_ab, sqrt_ab_prev, sqrt_1m_ab_prev, coef_x0, coef_xt,
                                         posterior_std), steps, prediction, sampler, noise, out, precision)
    w1, b1, g1, beta1, w2, b2, g2, beta2, wo, bo = c.weights
    S, R, n = c.z.shape
    m = c.a.shape[2]
    h1, h2 = w1.shape[1], w2.shape[1]
    block_ns = block_ns or slice_width(h1, precision)
    col_blocks = triton.cdiv(h2, block_ns)
    resident = resident_programs(c.z.device)
    if orchestration == "persistent" and resident is None and col_blocks > 1:
        raise ValueError(f"the persistent chain with {col_blocks} programs a group deadlocks in Triton's CPU "
                         f"interpreter (programs run one after another): use block_ns >= {h2} or 'staged'")
    rows_per_group = rows_per_group or group_rows(R, S, col_blocks, block_m, resident)
    if rows_per_group % block_m:
        raise ValueError(f"rows_per_group ({rows_per_group}) must be a multiple of block_m ({block_m})")
    groups = triton.cdiv(R, rows_per_group) if R else 0
    if orchestration == "persistent" and resident is not None and col_blocks * groups * S > resident:
        raise ValueError(f"the persistent chain needs its {col_blocks * groups * S} programs resident at once "
                         f"({resident} SMs): use fewer rows_per_group groups or 'staged'")
    dev = c.z.device
    base = torch.empty((S, R, h1), device=dev, dtype=torch.float32)
    pre1 = torch.empty((S, R, h1), device=dev, dtype=w1.dtype)
    stats1 = torch.empty((S, R, 2), device=dev, dtype=torch.float32)
    pre2 = torch.empty((S, R, h2), device=dev, dtype=w1.dtype)
    part = torch.empty((S, col_blocks, R, 2), device=dev, dtype=torch.float32)
    x = c.out
    grid = (col_blocks, groups, S)
    if groups == 0 or S == 0:
        return c.result()
    pointers = (w1, b1, g1, beta1, w2, b2, g2, beta2, wo, bo, c.s, c.a, c.z, c.noise, base, pre1, stats1, pre2, part, x)
    blocks = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_O=c.block_o, PRECISION=precision)
    c_scale = 2.0 / steps
    if orchestration == "persistent":
        counters = torch.zeros((S, groups), device=dev, dtype=torch.int32)
        _ws_chain_kernel[grid](
            *pointers[:14], *c.schedule, *pointers[14:], counters,
            R, n, m, h1, h2, steps, c.n_levels, c_scale, LAYER_NORM_EPS, rows_per_group,
            PREDICTION=prediction, SAMPLER=sampler, BLOCK_H1=triton.next_power_of_2(h1), BLOCK_NS=block_ns,
            num_warps=num_warps, **blocks)
        return c.result()
    _ws_prologue_kernel[grid](*pointers, R, n, m, h1, h2, steps, c_scale, LAYER_NORM_EPS, rows_per_group,
                              SAMPLER=sampler, num_warps=num_warps, **blocks)
    for lvl in range(c.n_levels):
        _ws_columns_kernel[grid](*pointers, R, n, m, h1, h2, steps, rows_per_group, BLOCK_M=block_m,
                                 BLOCK_H1=triton.next_power_of_2(h1), BLOCK_NS=block_ns, PRECISION=precision,
                                 num_warps=num_warps)
        _ws_rows_kernel[grid](*pointers, *c.schedule, lvl, R, n, m, h1, h2, steps, c.n_levels, c_scale,
                              LAYER_NORM_EPS, rows_per_group, PREDICTION=prediction, SAMPLER=sampler,
                              BLOCK_NS=block_ns, num_warps=num_warps, **blocks)
    return c.result()
