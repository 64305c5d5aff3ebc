"""Fused denoiser MLP forward (docs/ALGORITHM.md#networks, reference.denoiser_forward), one launch for the whole network.

Network: h_k = LayerNorm(ReLU(W_k h_{k-1} + b_k)) * g_k + beta_k for k = 1, 2; out = W_out h_2 + b_out.
Weights in nn.Linear layout (out, in), contiguous fp32; exactly two hidden layers.

A group: up to MAX_NETWORKS such networks of the same hidden and output widths, each with its own rows (its
own row count R_g and input width D_in_g: the SSM denoiser's 2n+1+m columns, the data denoiser's n+1) and
weights, in one launch (mlp_forward_group; the critic side's D' on the target rows, D on the online rows, E on
the data rows). Grid (cdiv(max R_g, BLOCK_M), networks x S): program (i, g S + s) runs row block i of network
g's seed s, a block past R_g does nothing. Each network is a constexpr-unrolled branch on g calling the one
@triton.jit body (_network_rows_forward) with that network's pointers; SAVE[g] says whether it writes the
LayerNorm statistics (training: saved for the backward). mlp_forward is the one-network group.

Blocking: a program owns BLOCK_M rows of one network and runs the three layers back to back. A hidden layer loops
over N-chunks of its width; each [BLOCK_M, BLOCK_N] tile is built by streaming [BLOCK_K] chunks of
its input and [BLOCK_K, BLOCK_N] chunks of its weight through tl.dot, then gets bias + ReLU, is
stored to the pre_k buffer (R, H_k) (the saved activation, or an L2-resident scratch) and merged
into per-row LayerNorm statistics (running mean and sum of squared deviations, combined chunk by
chunk as in Chan et al.: no E[y^2] - E[y]^2 cancellation). The next layer reads pre_k back in
K-chunks and applies LayerNorm on load. tl.debug_barrier() separates a buffer's writes from its
reads (threads of one program read elements written by other threads).

Shared memory per program (fp32, num_stages=2, H100 defaults BLOCK_M=64, BLOCK_N=64, BLOCK_K=32,
num_warps=4): 2 * (64*32 + 32*64) * 4 B = 32 KB for the pipelined operand tiles, independent of the
hidden width (512 or more) and of the networks in the group (one runs per program): weights are streamed,
never held whole. Checked by compiling for sm_90 offline (triton 3.9, kernels/sm90_compile.py): 32 KB
shared, wgmma, no register spills (widths are run-time arguments), 240 registers for one network and for
a group of three.

Precision "bf16" (GPU only): the wrapper casts W1, W2, W_out to bf16, the hidden activations pre_k are
stored in bf16 (half the scratch traffic; their LayerNorm statistics are those of the stored values),
and every tl.dot takes bf16 operands with fp32 accumulation; biases, LayerNorm parameters and
statistics, the input rows and the output stay fp32. sm_90 offline: 12.5 KB shared, wgmma, no
spills; 158 registers with triton 3.9 (a group of three networks), 136 with triton 3.6 (one network; 216
for tf32 there).
"""
import os

import torch
import triton
import triton.language as tl

from .seed_axis import add_seed_axis, check_stacked

LAYER_NORM_EPS = 1e-5
PRECISIONS = ("tf32", "tf32x3", "ieee", "bf16")


@triton.jit
def _mma(acc, a, b, PRECISION: tl.constexpr):
    """acc += a @ b with fp32 accumulation. PRECISION "bf16": bf16 operands (tensor cores at twice
    the tf32 rate); otherwise fp32 operands with that tl.dot input_precision ("tf32", "tf32x3", "ieee")."""
    if PRECISION == "bf16":  # a constexpr branch: only the taken one is compiled
        acc = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    else:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _accum_strided(acc, x_ptr, x_stride, offs_m, mask_m, K, b_ptr, b_k, b_n, offs_n, mask_n,
                   BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """acc [BM, BN] += X[offs_m, :K] @ B[:K, offs_n], streamed in BLOCK_K chunks; X with row stride
    x_stride, B[k, n] at b_ptr + k b_k + n b_n (a weight read as it is or transposed, by its strides)."""
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None] * x_stride + offs_k[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(b_ptr + offs_k[:, None] * b_k + offs_n[None, :] * b_n,
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = _mma(acc, x, b, PRECISION)
    return acc


@triton.jit
def _accum_linear(acc, x_ptr, x_stride, offs_m, mask_m, K, w_ptr, w_stride, w_col0, offs_n, mask_n,
                  BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """acc [BM, BN] += X[offs_m, :K] @ W[offs_n, w_col0:w_col0+K]^T, streamed in BLOCK_K chunks."""
    return _accum_strided(acc, x_ptr, x_stride, offs_m, mask_m, K, w_ptr + w_col0, 1, w_stride, offs_n, mask_n,
                          BLOCK_K, PRECISION)


@triton.jit
def _load_normed(h_ptr, offs_m, mask_m, offs_k, mask_k, K, mean, rstd, g_ptr, beta_ptr, LAYER_NORM: tl.constexpr):
    """[BM, BK] fp32 tile of H (R, K) at rows offs_m, columns offs_k, with LAYER_NORM normalised on load
    ((h - mean) rstd g + beta, per-row mean and rstd); 0 outside the masks."""
    mask = mask_m[:, None] & mask_k[None, :]
    h = tl.load(h_ptr + offs_m[:, None] * K + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
    if LAYER_NORM:
        g = tl.load(g_ptr + offs_k, mask=mask_k, other=0.0)
        beta = tl.load(beta_ptr + offs_k, mask=mask_k, other=0.0)
        h = tl.where(mask, (h - mean[:, None]) * rstd[:, None] * g[None, :] + beta[None, :], 0.0)
    return h


@triton.jit
def _accum_normed(acc, h_ptr, K, offs_m, mask_m, mean, rstd, g_ptr, beta_ptr, b_ptr, b_k, b_n, offs_n, mask_n,
                  LAYER_NORM: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """acc [BM, BN] += N(H)[offs_m, :K] @ B[:K, offs_n]; H (R, K), N: _load_normed; B as in _accum_strided."""
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        h = _load_normed(h_ptr, offs_m, mask_m, offs_k, mask_k, K, mean, rstd, g_ptr, beta_ptr, LAYER_NORM)
        b = tl.load(b_ptr + offs_k[:, None] * b_k + offs_n[None, :] * b_n,
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = _mma(acc, h, b, PRECISION)
    return acc


@triton.jit
def _accum_ln_linear(acc, h_ptr, mean, rstd, g_ptr, beta_ptr, offs_m, mask_m, K, w_ptr, offs_n, mask_n,
                     BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """acc [BM, BN] += LN(H[offs_m, :K]) @ W[offs_n, :K]^T; H (R, K) post-ReLU, LN with per-row mean/rstd."""
    return _accum_normed(acc, h_ptr, K, offs_m, mask_m, mean, rstd, g_ptr, beta_ptr, w_ptr, 1, K, offs_n, mask_n,
                         True, BLOCK_K, PRECISION)


@triton.jit
def _bias_relu_store(acc, b_ptr, out_ptr, offs_m, mask_m, N, offs_n, mask_n, n0, mean, m2):
    """ReLU(acc + b) -> out[offs_m, offs_n] (row stride N, chunk of columns n0.., stored in out's dtype);
    returns the per-row mean and sum of squared deviations of the stored values over columns
    [0, n0 + chunk), merged with the chunk's (Chan et al.)."""
    b = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0)
    y = tl.maximum(acc + b[None, :], 0.0)
    y = tl.where(mask_n[None, :], y, 0.0).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + offs_m[:, None] * N + offs_n[None, :], y, mask=mask_m[:, None] & mask_n[None, :])
    y = y.to(tl.float32)  # statistics of what the next layer reads back (bf16 activations: rounded)
    count = n0 * 1.0
    chunk_count = tl.sum(mask_n.to(tl.float32), axis=0)
    chunk_mean = tl.sum(y, axis=1) / chunk_count
    dev = tl.where(mask_n[None, :], y - chunk_mean[:, None], 0.0)
    delta = chunk_mean - mean
    total = count + chunk_count
    mean = mean + delta * (chunk_count / total)
    m2 = m2 + tl.sum(dev * dev, axis=1) + delta * delta * (count * chunk_count / total)
    return mean, m2


@triton.jit
def _row_stats(mean, m2, N, eps):
    """LayerNorm mean and 1/sqrt(var + eps) from the per-row mean and sum of squared deviations over N columns."""
    return mean, 1.0 / tl.sqrt(m2 / N + eps)


@triton.jit
def _hidden_layer(h_ptr, mean, rstd, g_ptr, beta_ptr, K, w_ptr, w_k, w_n, b_ptr, out_ptr, N, offs_m, mask_m, eps,
                  LAYER_NORM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  PRECISION: tl.constexpr):
    """out (R, N) = ReLU(W N(H) + b) for the program's rows, H (R, K), N: _load_normed, W[k, n] at
    w_ptr + k w_k + n w_n; returns out's LayerNorm mean and rstd."""
    run_mean = tl.zeros([BLOCK_M], dtype=tl.float32)
    run_m2 = tl.zeros([BLOCK_M], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc = _accum_normed(acc, h_ptr, K, offs_m, mask_m, mean, rstd, g_ptr, beta_ptr, w_ptr, w_k, w_n, offs_n, mask_n,
                            LAYER_NORM, BLOCK_K, PRECISION)
        run_mean, run_m2 = _bias_relu_store(acc, b_ptr, out_ptr, offs_m, mask_m, N, offs_n, mask_n,
                                            n0, run_mean, run_m2)
    return _row_stats(run_mean, run_m2, N, eps)


@triton.jit
def _ln_hidden_layer(h_ptr, mean, rstd, g_ptr, beta_ptr, K, w_ptr, b_ptr, out_ptr, N, offs_m, mask_m, eps,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     PRECISION: tl.constexpr):
    """out (R, N) = ReLU(W LN(H) + b) for the program's rows, H (R, K), W (N, K); returns out's LN mean, rstd."""
    return _hidden_layer(h_ptr, mean, rstd, g_ptr, beta_ptr, K, w_ptr, 1, K, b_ptr, out_ptr, N, offs_m, mask_m, eps,
                         True, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)


@triton.jit
def _ln_output_layer(h_ptr, mean, rstd, g_ptr, beta_ptr, K, w_ptr, b_ptr, N, offs_m, mask_m,
                     BLOCK_M: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
                     PRECISION: tl.constexpr):
    """[BLOCK_M, BLOCK_O] register tile W_out LN(H) + b_out (columns >= N are 0), H (R, K)."""
    offs_o = tl.arange(0, BLOCK_O)
    mask_o = offs_o < N
    acc = tl.zeros([BLOCK_M, BLOCK_O], dtype=tl.float32)
    acc = _accum_ln_linear(acc, h_ptr, mean, rstd, g_ptr, beta_ptr, offs_m, mask_m, K, w_ptr,
                           offs_o, mask_o, BLOCK_K, PRECISION)
    b = tl.load(b_ptr + offs_o, mask=mask_o, other=0.0)
    return acc + b[None, :]


@triton.jit
def _seed_weights(sid, w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr,
                  W1_SIZE, H1, H2, N_OUT):
    """The ten weight pointers moved to seed `sid` (int64) of contiguous stacks (S, ...): W1 (H1 x D_in,
    W1_SIZE elements), b1, g1, beta1 (H1), W2 (H2, H1), b2, g2, beta2 (H2), W_out (N_OUT, H2), b_out (N_OUT)."""
    return (w1_ptr + sid * W1_SIZE, b1_ptr + sid * H1, g1_ptr + sid * H1, beta1_ptr + sid * H1,
            w2_ptr + sid * H2 * H1, b2_ptr + sid * H2, g2_ptr + sid * H2, beta2_ptr + sid * H2,
            wo_ptr + sid * N_OUT * H2, bo_ptr + sid * N_OUT)


@triton.jit
def _network_rows_forward(pid, sid, rows_ptr, weight_ptrs, act_ptrs, out_ptr, R, D_IN, H1, H2, N_OUT, eps,
                          SAVE_STATS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr, PRECISION: tl.constexpr):
    """Row block `pid` (BLOCK_M rows) of seed `sid` (int64) through one network: rows (S, R, D_IN), weight_ptrs
    the ten stacks (S, ...) of Denoiser.weights(), act_ptrs (pre1, mean1, rstd1, pre2, mean2, rstd2) -> out
    (S, R, N_OUT), pre1/pre2 (S, R, H_k) and, with SAVE_STATS, the statistics (S, R) written."""
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < R
    w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr = weight_ptrs
    w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr = _seed_weights(
        sid, w1_ptr, b1_ptr, g1_ptr, beta1_ptr, w2_ptr, b2_ptr, g2_ptr, beta2_ptr, wo_ptr, bo_ptr,
        H1 * D_IN, H1, H2, N_OUT)
    pre1_ptr, mean1_ptr, rstd1_ptr, pre2_ptr, mean2_ptr, rstd2_ptr = act_ptrs
    rows_ptr += sid * R * D_IN
    pre1_ptr += sid * R * H1
    pre2_ptr += sid * R * H2
    out_ptr += sid * R * N_OUT
    mean1_ptr += sid * R
    rstd1_ptr += sid * R
    mean2_ptr += sid * R
    rstd2_ptr += sid * R

    # layer 1 from the raw input rows
    run_mean = tl.zeros([BLOCK_M], dtype=tl.float32)
    run_m2 = tl.zeros([BLOCK_M], dtype=tl.float32)
    for n0 in range(0, H1, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < H1
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc = _accum_linear(acc, rows_ptr, D_IN, offs_m, mask_m, D_IN, w1_ptr, D_IN, 0, offs_n, mask_n,
                            BLOCK_K, PRECISION)
        run_mean, run_m2 = _bias_relu_store(acc, b1_ptr, pre1_ptr, offs_m, mask_m, H1, offs_n, mask_n,
                                            n0, run_mean, run_m2)
    mean1, rstd1 = _row_stats(run_mean, run_m2, H1, eps)
    tl.debug_barrier()

    # layer 2: LayerNorm of pre1 applied on load
    mean2, rstd2 = _ln_hidden_layer(pre1_ptr, mean1, rstd1, g1_ptr, beta1_ptr, H1, w2_ptr, b2_ptr, pre2_ptr, H2,
                                    offs_m, mask_m, eps, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
    tl.debug_barrier()

    out = _ln_output_layer(pre2_ptr, mean2, rstd2, g2_ptr, beta2_ptr, H2, wo_ptr, bo_ptr, N_OUT, offs_m, mask_m,
                           BLOCK_M, BLOCK_O, BLOCK_K, PRECISION)
    offs_o = tl.arange(0, BLOCK_O)
    tl.store(out_ptr + offs_m[:, None] * N_OUT + offs_o[None, :], out,
             mask=mask_m[:, None] & (offs_o[None, :] < N_OUT))
    if SAVE_STATS:
        tl.store(mean1_ptr + offs_m, mean1, mask=mask_m)
        tl.store(rstd1_ptr + offs_m, rstd1, mask=mask_m)
        tl.store(mean2_ptr + offs_m, mean2, mask=mask_m)
        tl.store(rstd2_ptr + offs_m, rstd2, mask=mask_m)


@triton.jit
def _mlp_forward_kernel(rows_ptrs, weight_ptrs, act_ptrs, out_ptrs, row_counts, in_widths, S, H1, H2, N_OUT, eps,
                        NETWORKS: tl.constexpr, SAVE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr, PRECISION: tl.constexpr):
    """Program (i, g S + s): row block i of network g's seed s (_network_rows_forward); network g's rows_ptrs[g],
    weight_ptrs[10 g .. 10 g + 9], act_ptrs[6 g .. 6 g + 5], out_ptrs[g], row_counts[g] rows of in_widths[g]
    columns, SAVE[g]: its statistics written. A block past its network's rows does nothing."""
    pid = tl.program_id(0)
    net = tl.program_id(1) // S
    sid = (tl.program_id(1) % S).to(tl.int64)  # the seed: its weights and rows, contiguous per seed
    for g in tl.static_range(NETWORKS):  # one branch per network, each the same body on its own pointers
        if (net == g) & (pid * BLOCK_M < row_counts[g]):
            _network_rows_forward(pid, sid, rows_ptrs[g], weight_ptrs[10 * g:10 * g + 10], act_ptrs[6 * g:6 * g + 6],
                                  out_ptrs[g], row_counts[g], in_widths[g], H1, H2, N_OUT, eps, SAVE[g],
                                  BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_O, PRECISION)


def check_precision(precision):
    """precision in PRECISIONS; "bf16" only compiled (the CPU interpreter computes bf16 dots wrongly)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and os.environ.get("TRITON_INTERPRET") == "1":
        raise ValueError("precision 'bf16' needs a CUDA GPU: Triton's CPU interpreter computes bf16 dot "
                         "products wrongly; use 'tf32' or 'ieee' there")


def matrix_dtype(precision, matrix):
    """Storage dtype of a weight matrix in the kernels, and of the hidden activations (W1's):
    bf16 for precision "bf16", the matrix's own dtype (fp32 or bf16) otherwise."""
    return torch.bfloat16 if precision == "bf16" else matrix.dtype


def check_weights(weights, precision="tf32"):
    """Contiguous (W1, b1, g1, beta1, W2, b2, g2, beta2, W_out, b_out) of a two-hidden-layer Denoiser,
    single (W (out, in), vectors (H,)) or stacked over seeds (W (S, out, in), vectors (S, H)).
    Vectors fp32; the matrices W1, W2, W_out fp32 or bf16, cast to bf16 for precision "bf16". The
    kernels store hidden activations in W1's dtype."""
    check_precision(precision)
    check_layers([weights])
    return tuple(w.detach().to(matrix_dtype(precision, w) if i in (0, 4, 8) else torch.float32).contiguous()
                 for i, w in enumerate(weights))


def check_layers(networks):
    """Each network's weights (one sequence a network) the 10 tensors of two hidden layers, else a ValueError."""
    counts = [len(weights) for weights in networks]
    if any(count != 10 for count in counts):
        raise ValueError(f"the fused kernels take exactly two hidden layers (10 tensors a network), got {counts}")


def seed_stacked(rows, weights, precision):
    """(rows (S, R, width), check_weights(weights) stacked (S, ...), single): a 2-D call (rows (R, width),
    unstacked weights) becomes S = 1 with single=True (seed_axis)."""
    weights = check_weights(weights, precision)
    single = rows.dim() == 2
    if single:
        rows, weights = rows.unsqueeze(0), add_seed_axis(*weights)
    check_stacked(rows.shape[0], weights)
    return rows.contiguous(), weights, single


def output_block(n_out):
    """Register-tile width of the output layer: a power of two >= 16 (tl.dot minimum)."""
    return max(16, triton.next_power_of_2(n_out))


MAX_NETWORKS = 3  # the networks of a group: the critic side's D', D and E


def mlp_forward(rows, weights, save_activations=False, precision="tf32", out=None, stats=None,
                block_m=64, block_n=64, block_k=32, num_warps=4, num_stages=2):
    """Denoiser forward: rows (R, D_in) fp32, weights = Denoiser.weights() (two hidden layers)
    -> out (R, n) fp32, or (out, (pre1, mean1, rstd1, pre2, mean2, rstd2)) with save_activations:
    pre_k (R, H_k) = ReLU(W_k h_{k-1} + b_k) in W1's storage dtype (bf16 for precision "bf16"),
    mean_k, rstd_k (R,) its LayerNorm statistics. Seed axis (seed_axis): rows (S, R, D_in) with weights
    stacked (S, ...) -> every result with a leading S. precision: one of PRECISIONS ("tf32" on GPU,
    "ieee" for exact fp32, "bf16": bf16 weights, activations and dot operands). `out` (optional)
    receives out; `stats` (optional, contiguous (4, R) or (4, S, R) fp32) receives mean1, rstd1, mean2,
    rstd2 with save_activations (the statistics returned are views of it). The one-network group of
    mlp_forward_group."""
    return mlp_forward_group([(rows, weights)], [save_activations], precision, [out], [stats],
                             block_m, block_n, block_k, num_warps, num_stages)[0]


def mlp_forward_group(networks, save, precision="tf32", outs=None, stats=None,
                      block_m=64, block_n=64, block_k=32, num_warps=4, num_stages=2):
    """Up to MAX_NETWORKS denoisers' forwards in one launch: networks [(rows, weights), ...], each as
    mlp_forward's, with its own rows (R_g, D_in_g) (its own count and input width) and weights but the
    same hidden and output widths, all 2-D (one seed) or all on the seed axis with the same S; save[g],
    outs[g], stats[g]: network g's save_activations, out and stats (outs, stats: None for none). Returns
    mlp_forward's result for each network. Grid (row blocks of the largest R_g, networks x S)."""
    if not 1 <= len(networks) <= MAX_NETWORKS:
        raise ValueError(f"a denoiser group holds 1 to {MAX_NETWORKS} networks, got {len(networks)}: "
                         f"split it into groups of at most {MAX_NETWORKS}")
    outs, stats = outs or [None] * len(networks), stats or [None] * len(networks)
    stacked = [seed_stacked(rows, weights, precision) for rows, weights in networks]
    single = stacked[0][2]
    seeds, (w1, _, _, _, w2, _, _, _, wo, _) = stacked[0][0].shape[0], stacked[0][1]
    widths = (w1.shape[1], w2.shape[1], wo.shape[1])
    for rows, weights, one in stacked:
        if one != single or rows.shape[0] != seeds:
            raise ValueError("a denoiser group's rows are all 2-D (one seed) or all (S, R, width) with the same S, "
                             f"got shapes {[tuple(r.shape) for r, _ in networks]}: stack every network's seeds alike")
        if (weights[0].shape[1], weights[4].shape[1], weights[8].shape[1]) != widths:
            raise ValueError(f"a denoiser group's networks share their hidden and output widths {widths}: "
                             "run a network of other widths in its own group")
        if rows.shape[-1] != weights[0].shape[-1]:
            raise ValueError(f"rows of width {rows.shape[-1]} for a network whose W1 takes {weights[0].shape[-1]} "
                             "inputs: give each network of the group its own rows")
    buffers = [_forward_buffers(rows, weights[0], widths, keep, out, stat, single)
               for (rows, weights, _), keep, out, stat in zip(stacked, save, outs, stats)]
    counts = [rows.shape[1] for rows, _, _ in stacked]
    grid = (triton.cdiv(max(counts), block_m), len(networks) * seeds)  # no rows or seeds: an empty grid, not launched
    _mlp_forward_kernel[grid](
        tuple(rows for rows, _, _ in stacked), tuple(w for _, weights, _ in stacked for w in weights),
        tuple(a for _, acts in buffers for a in acts), tuple(out for out, _ in buffers), tuple(counts),
        tuple(rows.shape[2] for rows, _, _ in stacked), seeds, *widths, LAYER_NORM_EPS,
        NETWORKS=len(networks), SAVE=tuple(bool(keep) for keep in save), BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_K=block_k, BLOCK_O=output_block(widths[2]), PRECISION=precision, num_warps=num_warps,
        num_stages=num_stages,
    )
    results = []
    for (out, acts), keep, given in zip(buffers, save, outs):
        if single:
            out, acts = (out[0] if given is None else given), tuple(x[0] for x in acts)
        results.append((out, acts) if keep else out)
    return results


def _forward_buffers(rows, w1, widths, save_activations, out, stats, single):
    """(out (S, R, n_out), acts (pre1, mean1, rstd1, pre2, mean2, rstd2)) that the kernel writes for one
    network of rows (S, R, D_in): out and stats as mlp_forward's (given or allocated), pre_k (S, R, H_k)
    in W1's dtype. Without save_activations the kernel writes no statistics: out stands in for them (any
    pointer will do), so no row count is assumed."""
    S, R, _ = rows.shape
    h1, h2, n_out = widths
    dev = rows.device
    if out is None:
        out = torch.empty((S, R, n_out), device=dev, dtype=torch.float32)
    elif single:
        out = out.unsqueeze(0)
    if not save_activations:
        mean1, rstd1, mean2, rstd2 = (out,) * 4
    elif stats is None:
        mean1, rstd1, mean2, rstd2 = torch.empty((4, S, R), device=dev, dtype=torch.float32).unbind(0)
    else:
        mean1, rstd1, mean2, rstd2 = (stats.unsqueeze(1) if single else stats).unbind(0)
    pre1 = torch.empty((S, R, h1), device=dev, dtype=w1.dtype)
    pre2 = torch.empty((S, R, h2), device=dev, dtype=w1.dtype)
    return out, (pre1, mean1, rstd1, pre2, mean2, rstd2)
