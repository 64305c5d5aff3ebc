"""Fused small MLPs (docs/ALGORITHM.md#networks): the actor and the twin critics, forward and backward,
a whole network per launch (reference.actor_forward, reference.critic_forward).

Network: h_0 = [x1, x2] (the critic's [s, a]; the actor's s alone), h_l = N_l(ReLU(W_l h_{l-1} + b_l))
for the L hidden layers, N_l = LayerNorm * g_l + beta_l (layer_norm) or the identity, out = W_out h_L +
b_out, then max_action * tanh(out) for the actor (out_scale > 0). Any depth L >= 1 and widths: the
layers are tuples of pointers walked by tl.static_range.

Weight layouts: "linear" (the actor's nn.Linear: W (out, in), b (out,)) or "ensemble" (the critics'
EnsembleLinear: W (M, in, out), b, g, beta (M, 1, out), M members stored). Seed axis (seed_axis): x
(S, R, width), every weight stacked (S, ...). The grid's second axis is seeds x members: program
(i, seed * members + j) runs row block i of member j of seed `seed`; the members share the rows.
`members` (<= M) evaluates the first ones only (Q1 alone is members = 1).

Blocking as kernels/denoiser_mlp.py: a program owns BLOCK_M rows; a hidden layer loops over BLOCK_N
column chunks of its output, each a stream of BLOCK_K input chunks through tl.dot; ReLU outputs go to
the pre_l scratch (the saved activation) with their LayerNorm statistics merged chunk by chunk; the
next layer applies LayerNorm on load. Every tl.dot dimension is >= 16: the narrow input (obs 17,
act 6) and output (1, act 6) widths are masked loads of 16-or-more-wide blocks.

Backward, two launches for the whole network: `_backward_deltas_kernel` (grid as the forward) takes
grad_out back through the layers, writing per layer dh_l (the gradient at N_l's output) and dz_l (at
the pre-activation), and the input gradients; `_weight_grads_kernel` (grid: the tiles of every
layer's weight matrix x seeds x members) reduces over all rows in one program per tile, in a fixed
order (no atomics): dW_l = h_{l-1}^T dz_l with h_{l-1} recomputed from pre_{l-1} on load, and the
programs of a layer's first row of tiles the vectors db_l = sum dz_l, dg_l = sum dh_l xhat_l,
dbeta_l = sum dh_l.

Two row-local chains of networks, each row's work in one program (one launch for what was two or three):
`_target_values_kernel` (TD3's target side: rows through pi', smoothed, through a critic member) and
`_policy_value_deltas_kernel` (the actor's backward: rows back through Q1 to its action input, the other
terms' action gradient added, on back through the actor; then the actor's `_weight_grads_kernel`).
"""
import functools

import torch
import triton
import triton.language as tl

from .denoiser_mlp import (LAYER_NORM_EPS, _accum_normed, _accum_strided, _bias_relu_store, _hidden_layer,
                           _load_normed, _mma, _row_stats, check_precision, output_block)
from .denoiser_backward import _relu_norm_grad
from .noising import smoothed
from .seed_axis import check_stacked, unit_columns

LAYOUTS = ("linear", "ensemble")


@triton.jit
def _group(W_IN, W_OUT, ENSEMBLE: tl.constexpr, M_STORED, sid, mid):
    """(matrix offset, vector offset, stride along in, stride along out) of member mid of seed sid."""
    if ENSEMBLE:
        return (sid * M_STORED + mid) * W_IN * W_OUT, (sid * M_STORED + mid) * W_OUT, W_OUT, 1
    else:
        return sid * W_IN * W_OUT, sid * W_OUT, 1, W_IN


@triton.jit
def _stats_ptr(stats_ptr, sid, mid, l, NUM_HIDDEN: tl.constexpr, M, R):
    """Row statistics of layer l of group (sid, mid): stats (S, 2 NUM_HIDDEN, M, R) = (mean_l, rstd_l) per layer."""
    return stats_ptr + ((sid * 2 * NUM_HIDDEN + 2 * l) * M + mid) * R


@triton.jit
def _accum_tile(acc, x, D, w_ptr, s_in, s_out, offs_n, mask_n, BLOCK_X: tl.constexpr, PRECISION: tl.constexpr):
    """acc [BM, BN] += x @ W[:D, offs_n]: x a [BM, BLOCK_X] register tile (columns >= D are 0), W[k, n] at
    w_ptr + k s_in + n s_out."""
    offs_k = tl.arange(0, BLOCK_X)
    w = tl.load(w_ptr + offs_k[:, None] * s_in + offs_n[None, :] * s_out,
                mask=(offs_k < D)[:, None] & mask_n[None, :], other=0.0)
    return _mma(acc, x, w, PRECISION)


@triton.jit
def _network_rows(x1_ptr, x1_row, D1, x2_ptr, x2_row, D2, x2, w_ptrs, b_ptrs, g_ptrs, beta_ptrs, pre_ptrs, stats_ptr,
                  gid, sid, mid, R, widths, M, M_STORED, out_scale, eps, offs_m, mask_m,
                  NUM_HIDDEN: tl.constexpr, ENSEMBLE: tl.constexpr, LAYER_NORM: tl.constexpr, TANH: tl.constexpr,
                  SAVE: tl.constexpr, X2_TILE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_X2: tl.constexpr, PRECISION: tl.constexpr):
    """The rows offs_m of group gid = (seed sid, member mid) through the network -> the output tile [BLOCK_M,
    BLOCK_O] (columns >= N_OUT are 0). Input [x1, x2]: x1 (R, D1) at x1_ptr with row stride x1_row; x2 (R, D2)
    from memory (x2_ptr, x2_row; D2 = 0: none) or, X2_TILE, the register tile x2 [BLOCK_M, BLOCK_X2] (columns
    >= D2 are 0). pre_l scratch at pre_ptrs[l] + gid R H_l; stats (SAVE) as _forward_kernel's."""
    mean = tl.zeros([BLOCK_M], dtype=tl.float32)
    rstd = tl.zeros([BLOCK_M], dtype=tl.float32)
    for l in tl.static_range(NUM_HIDDEN):
        K, N = widths[l], widths[l + 1]
        w_off, v_off, s_in, s_out = _group(K, N, ENSEMBLE, M_STORED, sid, mid)
        w_ptr, b_ptr = w_ptrs[l] + w_off, b_ptrs[l] + v_off
        pre_ptr = pre_ptrs[l] + gid * R * N
        if l == 0:  # W's rows 0.. meet x1, rows D1.. x2
            run_mean = tl.zeros([BLOCK_M], dtype=tl.float32)
            run_m2 = tl.zeros([BLOCK_M], dtype=tl.float32)
            for n0 in range(0, N, BLOCK_N):
                offs_n = n0 + tl.arange(0, BLOCK_N)
                mask_n = offs_n < N
                acc = _accum_strided(tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), x1_ptr, x1_row, offs_m,
                                     mask_m, D1, w_ptr, s_in, s_out, offs_n, mask_n, BLOCK_K, PRECISION)
                if X2_TILE:
                    acc = _accum_tile(acc, x2, D2, w_ptr + D1 * s_in, s_in, s_out, offs_n, mask_n, BLOCK_X2, PRECISION)
                else:
                    if D2 > 0:
                        acc = _accum_strided(acc, x2_ptr, x2_row, offs_m, mask_m, D2, w_ptr + D1 * s_in, s_in, s_out,
                                             offs_n, mask_n, BLOCK_K, PRECISION)
                run_mean, run_m2 = _bias_relu_store(acc, b_ptr, pre_ptr, offs_m, mask_m, N, offs_n, mask_n, n0,
                                                    run_mean, run_m2)
            new_mean, new_rstd = _row_stats(run_mean, run_m2, N, eps)
        else:  # ReLU outputs to pre_l with their LayerNorm statistics (unused without LayerNorm)
            _, pv_off, _, _ = _group(widths[l - 1], K, ENSEMBLE, M_STORED, sid, mid)
            new_mean, new_rstd = _hidden_layer(pre_ptrs[l - 1] + gid * R * K, mean, rstd, g_ptrs[l - 1] + pv_off,
                                               beta_ptrs[l - 1] + pv_off, K, w_ptr, s_in, s_out, b_ptr, pre_ptr, N,
                                               offs_m, mask_m, eps, LAYER_NORM, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
        if LAYER_NORM:
            mean, rstd = new_mean, new_rstd
            if SAVE:
                st = _stats_ptr(stats_ptr, sid, mid, l, NUM_HIDDEN, M, R)
                tl.store(st + offs_m, mean, mask=mask_m)
                tl.store(st + M * R + offs_m, rstd, mask=mask_m)
        tl.debug_barrier()  # the next layer reads pre_l written by other threads of this program

    K, N_OUT = widths[NUM_HIDDEN], widths[NUM_HIDDEN + 1]
    w_off, v_off, s_in, s_out = _group(K, N_OUT, ENSEMBLE, M_STORED, sid, mid)
    _, pv_off, _, _ = _group(widths[NUM_HIDDEN - 1], K, ENSEMBLE, M_STORED, sid, mid)
    offs_o = tl.arange(0, BLOCK_O)
    mask_o = offs_o < N_OUT
    acc = tl.zeros([BLOCK_M, BLOCK_O], dtype=tl.float32)
    acc = _accum_normed(acc, pre_ptrs[NUM_HIDDEN - 1] + gid * R * K, K, offs_m, mask_m, mean, rstd,
                        g_ptrs[NUM_HIDDEN - 1] + pv_off, beta_ptrs[NUM_HIDDEN - 1] + pv_off,
                        w_ptrs[NUM_HIDDEN] + w_off, s_in, s_out, offs_o, mask_o, LAYER_NORM, BLOCK_K, PRECISION)
    y = acc + tl.load(b_ptrs[NUM_HIDDEN] + v_off + offs_o, mask=mask_o, other=0.0)[None, :]
    if TANH:  # max_action * tanh(y), tanh(y) = 1 - 2 / (exp(2y) + 1) (saturates to +-1, no inf / inf)
        y = out_scale * (1.0 - 2.0 / (tl.exp(2.0 * y) + 1.0))
    return y


@triton.jit
def _forward_kernel(
    x1_ptr, x2_ptr, w_ptrs, b_ptrs, g_ptrs, beta_ptrs, pre_ptrs, stats_ptr, out_ptr,
    R, D1, D2, x_strides, widths, M, M_STORED, out_scale, eps,
    NUM_HIDDEN: tl.constexpr, ENSEMBLE: tl.constexpr, LAYER_NORM: tl.constexpr, TANH: tl.constexpr,
    SAVE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_O: tl.constexpr, PRECISION: tl.constexpr,
):
    """BLOCK_M rows of group program_id(1) = seed * M + member through the network. x1 (S, R, D1), x2
    (S, R, D2) (D2 = 0: none), unit column stride, x_strides = (x1's seed and row strides, x2's); widths (D1 + D2,
    H_1, ..., H_L, N_OUT); pre_l (S, M, R, H_l); stats (S, 2L, M, R); out (S, M, R, N_OUT)."""
    pid = tl.program_id(0)
    gid = tl.program_id(1).to(tl.int64)
    sid, mid = gid // M, gid % M
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < R
    y = _network_rows(x1_ptr + sid * x_strides[0], x_strides[1], D1, x2_ptr + sid * x_strides[2], x_strides[3], D2,
                      None, w_ptrs, b_ptrs, g_ptrs, beta_ptrs, pre_ptrs, stats_ptr, gid, sid, mid, R, widths, M,
                      M_STORED, out_scale, eps, offs_m, mask_m, NUM_HIDDEN, ENSEMBLE, LAYER_NORM, TANH, SAVE, False,
                      BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_O, 16, PRECISION)
    N_OUT = widths[NUM_HIDDEN + 1]
    offs_o = tl.arange(0, BLOCK_O)
    tl.store(out_ptr + gid * R * N_OUT + offs_m[:, None] * N_OUT + offs_o[None, :], y,
             mask=mask_m[:, None] & (offs_o < N_OUT)[None, :])


@triton.jit
def _target_values_kernel(
    s_ptr, normal_ptr, aw_ptrs, ab_ptrs, apre_ptrs, cw_ptrs, cb_ptrs, cg_ptrs, cbeta_ptrs, cpre_ptrs, action_ptr, q_ptr,
    R, D_S, strides, actor_widths, critic_widths, M, M_STORED, max_action, policy_noise, noise_clip, eps,
    ACTOR_HIDDEN: tl.constexpr, CRITIC_HIDDEN: tl.constexpr, LAYER_NORM: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_Q: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """BLOCK_M rows s' of seed `seed` through the target actor (layout "linear", tanh), smoothed (noising.smoothed)
    into a' in registers, and through critic member `member` at (s', a'): program (i, seed * M + member). s', normal
    (S, R, D_S), (S, R, m), unit column stride, strides = (s's seed and row strides, normal's); the actor's
    pre_l scratch (S, M, R, H_l) (each program its own: the members recompute pi'), the critic's (S, M, R, H_l);
    a' (S, R, m), written by the member-0 programs; Q (S, M, R, 1)."""
    pid = tl.program_id(0)
    gid = tl.program_id(1).to(tl.int64)
    sid, mid = gid // M, gid % M
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < R
    s_ptr += sid * strides[0]
    pi = _network_rows(s_ptr, strides[1], D_S, s_ptr, 0, 0, None, aw_ptrs, ab_ptrs, aw_ptrs, aw_ptrs, apre_ptrs, q_ptr,
                       gid, sid, mid, R, actor_widths, M, 1, max_action, eps, offs_m, mask_m, ACTOR_HIDDEN, False,
                       False, True, False, False, BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_A, 16, PRECISION)
    m = actor_widths[ACTOR_HIDDEN + 1]
    offs_a = tl.arange(0, BLOCK_A)
    mask = mask_m[:, None] & (offs_a < m)[None, :]
    normal = tl.load(normal_ptr + sid * strides[2] + offs_m[:, None] * strides[3] + offs_a[None, :], mask=mask,
                     other=0.0)
    a = smoothed(pi, normal, policy_noise, noise_clip, max_action)  # 0 past column m: the critic's padding
    if mid == 0:
        tl.store(action_ptr + sid * R * m + offs_m[:, None] * m + offs_a[None, :], a, mask=mask)
    q = _network_rows(s_ptr, strides[1], D_S, s_ptr, 0, m, a, cw_ptrs, cb_ptrs, cg_ptrs, cbeta_ptrs, cpre_ptrs, q_ptr,
                      gid, sid, mid, R, critic_widths, M, M_STORED, 0.0, eps, offs_m, mask_m, CRITIC_HIDDEN, True,
                      LAYER_NORM, False, False, True, BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_Q, BLOCK_A, PRECISION)
    offs_q = tl.arange(0, BLOCK_Q)
    tl.store(q_ptr + gid * R + offs_m[:, None] + offs_q[None, :], q, mask=mask_m[:, None] & (offs_q < 1)[None, :])


@triton.jit
def _back_hidden(dy_ptr, K, w_ptr, s_in, s_out, pre_ptr, mean, rstd, g_ptr, dh_ptr, dz_ptr, H, offs_m, mask_m,
                 LAYER_NORM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DY: tl.constexpr, BLOCK_H: tl.constexpr,
                 PRECISION: tl.constexpr):
    """Back through N_l and the ReLU of a hidden layer of width H: dh = dY @ W (dY (rows, K) the
    gradient at the next layer's pre-activation, W its matrix (in H, out K)) -> dh_ptr, then
    dz = ReLU'(pre) N_l'(dh) -> dz_ptr (LayerNorm: rstd (g dh - mean(g dh) - xhat mean(g dh xhat))), in
    two passes over BLOCK_H chunks (the row sums need all of dh first)."""
    c1 = tl.zeros([BLOCK_M], dtype=tl.float32)
    c2 = tl.zeros([BLOCK_M], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        mask = mask_m[:, None] & mask_h[None, :]
        dh = _accum_strided(tl.zeros([BLOCK_M, BLOCK_H], dtype=tl.float32), dy_ptr, K, offs_m, mask_m, K, w_ptr,
                            s_out, s_in, offs_h, mask_h, BLOCK_DY, PRECISION)  # dY @ W^T
        idx = offs_m[:, None] * H + offs_h[None, :]
        tl.store(dh_ptr + idx, dh, mask=mask)
        if LAYER_NORM:
            pre = tl.load(pre_ptr + idx, mask=mask, other=0.0)
            xhat = tl.where(mask, (pre - mean[:, None]) * rstd[:, None], 0.0)
            gdh = dh * tl.load(g_ptr + offs_h, mask=mask_h, other=0.0)[None, :]
            c1 += tl.sum(gdh, axis=1)
            c2 += tl.sum(gdh * xhat, axis=1)
    c1 = c1 / H
    c2 = c2 / H
    tl.debug_barrier()  # pass 2 reads dh written by other threads of this program
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        _relu_norm_grad(dh_ptr, dz_ptr, pre_ptr, offs_m, mask_m, offs_h, offs_h < H, H, mean, rstd, g_ptr, c1, c2,
                        LAYER_NORM)
    tl.debug_barrier()  # the layer below reads dz


@triton.jit
def _input_grad(dz_ptr, H, w_ptr, col0, s_in, s_out, gx_ptr, D, offs_m, mask_m, BLOCK_M: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, PRECISION: tl.constexpr):
    """gx (rows, D) = dZ_1 @ W_1[col0 : col0 + D, :]^T: the gradient of the input columns col0.. ."""
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        acc = _accum_strided(tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32), dz_ptr, H, offs_m, mask_m, H,
                             w_ptr + col0 * s_in, s_out, s_in, offs_d, mask_d, BLOCK_H, PRECISION)
        tl.store(gx_ptr + offs_m[:, None] * D + offs_d[None, :], acc, mask=mask_m[:, None] & mask_d[None, :])


@triton.jit
def _back_layers(dzo_ptr, w_ptrs, g_ptrs, pre_ptrs, stats_ptr, dh_ptrs, dz_ptrs, gid, sid, mid, R, widths, M,
                 M_STORED, offs_m, mask_m, NUM_HIDDEN: tl.constexpr, ENSEMBLE: tl.constexpr, LAYER_NORM: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr,
                 PRECISION: tl.constexpr):
    """The rows offs_m of group gid = (seed sid, member mid) back from dzo (the gradient at the output
    pre-activation, written by this program: dzo_ptr + gid R N_OUT) through the hidden layers: dh_l, dz_l at
    dh_ptrs[l], dz_ptrs[l] + gid R H_l."""
    for l in tl.static_range(NUM_HIDDEN - 1, -1, -1):
        H, K = widths[l + 1], widths[l + 2]
        w_off, _, s_in, s_out = _group(H, K, ENSEMBLE, M_STORED, sid, mid)
        _, v_off, _, _ = _group(widths[l], H, ENSEMBLE, M_STORED, sid, mid)
        st = _stats_ptr(stats_ptr, sid, mid, l, NUM_HIDDEN, M, R)
        mean = tl.load(st + offs_m, mask=mask_m, other=0.0)  # unused without LayerNorm
        rstd = tl.load(st + M * R + offs_m, mask=mask_m, other=0.0)
        if l == NUM_HIDDEN - 1:
            _back_hidden(dzo_ptr + gid * R * K, K, w_ptrs[l + 1] + w_off, s_in, s_out, pre_ptrs[l] + gid * R * H,
                         mean, rstd, g_ptrs[l] + v_off, dh_ptrs[l] + gid * R * H, dz_ptrs[l] + gid * R * H, H,
                         offs_m, mask_m, LAYER_NORM, BLOCK_M, BLOCK_O, BLOCK_H, PRECISION)
        else:
            _back_hidden(dz_ptrs[l + 1] + gid * R * K, K, w_ptrs[l + 1] + w_off, s_in, s_out,
                         pre_ptrs[l] + gid * R * H, mean, rstd, g_ptrs[l] + v_off, dh_ptrs[l] + gid * R * H,
                         dz_ptrs[l] + gid * R * H, H, offs_m, mask_m, LAYER_NORM, BLOCK_M, BLOCK_K, BLOCK_H,
                         PRECISION)


@triton.jit
def _output_delta(dy, out, out_scale, TANH: tl.constexpr):
    """The gradient at the output pre-activation from dy at the output `out`: d(c tanh(y))/dy = c (1 - tanh(y)^2)
    = c (1 - (out / c)^2) with TANH, else dy."""
    if TANH:
        t = out / out_scale
        dy = dy * out_scale * (1.0 - t * t)
    return dy


@triton.jit
def _backward_deltas_kernel(
    grad_ptr, out_ptr, w_ptrs, g_ptrs, pre_ptrs, stats_ptr, dh_ptrs, dz_ptrs, dzo_ptr, gx1_ptr, gx2_ptr,
    R, D1, D2, widths, M, M_STORED, out_scale,
    NUM_HIDDEN: tl.constexpr, ENSEMBLE: tl.constexpr, LAYER_NORM: tl.constexpr, TANH: tl.constexpr,
    NEED_X1: tl.constexpr, NEED_X2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    """BLOCK_M rows of group program_id(1) back through the network: grad (S, M, R, N_OUT) the gradient
    of out (S, M, R, N_OUT) -> dzo (S, M, R, N_OUT) at the output pre-activation, dh_l, dz_l (S, M, R,
    H_l), and the input gradients gx1 (S, M, R, D1), gx2 (S, M, R, D2) (members summed by the caller)."""
    pid = tl.program_id(0)
    gid = tl.program_id(1).to(tl.int64)
    sid, mid = gid // M, gid % M
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < R
    N_OUT = widths[NUM_HIDDEN + 1]
    offs_o = tl.arange(0, BLOCK_O)
    mask = mask_m[:, None] & (offs_o < N_OUT)[None, :]
    idx = gid * R * N_OUT + offs_m[:, None] * N_OUT + offs_o[None, :]
    dy = tl.load(grad_ptr + idx, mask=mask, other=0.0)
    if TANH:
        dy = _output_delta(dy, tl.load(out_ptr + idx, mask=mask, other=0.0), out_scale, TANH)
    tl.store(dzo_ptr + idx, dy, mask=mask)
    tl.debug_barrier()
    _back_layers(dzo_ptr, w_ptrs, g_ptrs, pre_ptrs, stats_ptr, dh_ptrs, dz_ptrs, gid, sid, mid, R, widths, M,
                 M_STORED, offs_m, mask_m, NUM_HIDDEN, ENSEMBLE, LAYER_NORM, BLOCK_M, BLOCK_H, BLOCK_K, BLOCK_O,
                 PRECISION)
    H1 = widths[1]
    w_off, _, s_in, s_out = _group(D1 + D2, H1, ENSEMBLE, M_STORED, sid, mid)
    if NEED_X1:
        _input_grad(dz_ptrs[0] + gid * R * H1, H1, w_ptrs[0] + w_off, 0, s_in, s_out, gx1_ptr + gid * R * D1, D1,
                    offs_m, mask_m, BLOCK_M, BLOCK_D, BLOCK_H, PRECISION)
    if NEED_X2:
        _input_grad(dz_ptrs[0] + gid * R * H1, H1, w_ptrs[0] + w_off, D1, s_in, s_out, gx2_ptr + gid * R * D2, D2,
                    offs_m, mask_m, BLOCK_M, BLOCK_D, BLOCK_H, PRECISION)


@triton.jit
def _policy_value_deltas_kernel(
    grad_q_ptr, grad_a_ptr, a_ptr, cw_ptrs, cg_ptrs, cpre_ptrs, cstats_ptr, cdh_ptrs, cdz_ptrs, cdzo_ptr,
    aw_ptrs, apre_ptrs, astats_ptr, adh_ptrs, adz_ptrs, adzo_ptr,
    R, D_S, critic_widths, actor_widths, M_STORED, max_action,
    CRITIC_HIDDEN: tl.constexpr, ACTOR_HIDDEN: tl.constexpr, LAYER_NORM: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_A: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """BLOCK_M rows of seed program_id(1) back through Q1(s, a) to its action input, and with grad_a added,
    back through the actor a = pi(s): grad_q (S, R) d loss / d Q1, grad_a (S, R, m) d loss / d a (the other
    terms'), a (S, R, m) pi(s). The critic (layout "ensemble", member 0 of M_STORED) with its forward's pre_l
    (S, 1, R, H_l), stats (S, 2L, 1, R) and scratch dh_l, dz_l, dzo; the actor (layout "linear", no LayerNorm,
    max_action tanh) with its forward's pre_l (S, 1, R, H_l) and (unwritten) stats -> its dzo (S, 1, R, m),
    dh_l, dz_l (S, 1, R, H_l): the inputs of its _weight_grads_kernel. The action gradient d loss / d a stays
    in registers."""
    pid = tl.program_id(0)
    sid = tl.program_id(1).to(tl.int64)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < R
    offs_q = tl.arange(0, BLOCK_Q)
    mask = mask_m[:, None] & (offs_q < 1)[None, :]
    idx = sid * R + offs_m[:, None] + offs_q[None, :]
    tl.store(cdzo_ptr + idx, tl.load(grad_q_ptr + idx, mask=mask, other=0.0), mask=mask)
    tl.debug_barrier()
    _back_layers(cdzo_ptr, cw_ptrs, cg_ptrs, cpre_ptrs, cstats_ptr, cdh_ptrs, cdz_ptrs, sid, sid, 0, R, critic_widths,
                 1, M_STORED, offs_m, mask_m, CRITIC_HIDDEN, True, LAYER_NORM, BLOCK_M, BLOCK_H, BLOCK_K, BLOCK_Q,
                 PRECISION)
    m, H1 = actor_widths[ACTOR_HIDDEN + 1], critic_widths[1]
    w_off, _, s_in, s_out = _group(D_S + m, H1, True, M_STORED, sid, 0)
    offs_a = tl.arange(0, BLOCK_A)
    mask_a = offs_a < m
    # d Q1 / d a = dz_1 @ W_1[D_S:, :]^T, plus the other terms' d loss / d a
    dy = _accum_strided(tl.zeros([BLOCK_M, BLOCK_A], dtype=tl.float32), cdz_ptrs[0] + sid * R * H1, H1, offs_m,
                        mask_m, H1, cw_ptrs[0] + w_off + D_S * s_in, s_out, s_in, offs_a, mask_a, BLOCK_H, PRECISION)
    mask = mask_m[:, None] & mask_a[None, :]
    idx = sid * R * m + offs_m[:, None] * m + offs_a[None, :]
    dy += tl.load(grad_a_ptr + idx, mask=mask, other=0.0)
    dy = _output_delta(dy, tl.load(a_ptr + idx, mask=mask, other=0.0), max_action, True)
    tl.store(adzo_ptr + idx, dy, mask=mask)
    tl.debug_barrier()
    _back_layers(adzo_ptr, aw_ptrs, aw_ptrs, apre_ptrs, astats_ptr, adh_ptrs, adz_ptrs, sid, sid, 0, R, actor_widths,
                 1, 1, offs_m, mask_m, ACTOR_HIDDEN, False, False, BLOCK_M, BLOCK_H, BLOCK_K, BLOCK_A, PRECISION)


@triton.jit
def _weight_tile(ti, tj, K, N, R, M, x1_ptr, x2_ptr, D1, D2, x1_row, x2_row, h_ptr, h_stats, h_g, h_beta, dz_ptr,
                 dh_ptr, pre_ptr, stats, dw_ptr, s_in, s_out, db_ptr, dg_ptr, dbeta_ptr,
                 FROM_INPUT: tl.constexpr, LAYER_NORM: tl.constexpr, NORM_GRADS: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr, BJ: tl.constexpr, PRECISION: tl.constexpr):
    """Tile (ti, tj) of dW = h^T dz for a layer (in K, out N): h = [x1, x2] (FROM_INPUT; row strides x1_row,
    x2_row) or N(pre) of the
    layer below (h_ptr (R, K), its statistics h_stats, h_g, h_beta); dz (R, N). Tiles with ti == 0 also
    write db = sum dz and (NORM_GRADS) dg = sum dh xhat, dbeta = sum dh of this layer's own LayerNorm
    (dh, pre (R, N), stats)."""
    offs_i = ti * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_j = tj * BJ + tl.arange(0, BJ)
    mask_i, mask_j = offs_i < K, offs_j < N
    acc = tl.zeros([BLOCK_I, BJ], dtype=tl.float32)
    db = tl.zeros([BJ], dtype=tl.float32)
    dg = tl.zeros([BJ], dtype=tl.float32)
    dbeta = tl.zeros([BJ], dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < R
        if FROM_INPUT:  # h^T = [x1, x2]^T, (BLOCK_I, BLOCK_R)
            hT = tl.load(x1_ptr + offs_r[None, :] * x1_row + offs_i[:, None],
                         mask=(offs_i < D1)[:, None] & mask_r[None, :], other=0.0)
            hT += tl.load(x2_ptr + offs_r[None, :] * x2_row + (offs_i - D1)[:, None],
                          mask=((offs_i >= D1) & mask_i)[:, None] & mask_r[None, :], other=0.0)
        else:
            mean = tl.load(h_stats + offs_r, mask=mask_r, other=0.0)
            rstd = tl.load(h_stats + M * R + offs_r, mask=mask_r, other=0.0)
            hT = tl.trans(_load_normed(h_ptr, offs_r, mask_r, offs_i, mask_i, K, mean, rstd, h_g, h_beta, LAYER_NORM))
        mask = mask_r[:, None] & mask_j[None, :]
        idx = offs_r[:, None] * N + offs_j[None, :]
        dz = tl.load(dz_ptr + idx, mask=mask, other=0.0)
        acc = _mma(acc, hT, dz, PRECISION)
        db += tl.sum(dz, axis=0)
        if NORM_GRADS:
            dh = tl.load(dh_ptr + idx, mask=mask, other=0.0)
            pre = tl.load(pre_ptr + idx, mask=mask, other=0.0)
            mean = tl.load(stats + offs_r, mask=mask_r, other=0.0)
            rstd = tl.load(stats + M * R + offs_r, mask=mask_r, other=0.0)
            dg += tl.sum(dh * tl.where(mask, (pre - mean[:, None]) * rstd[:, None], 0.0), axis=0)
            dbeta += tl.sum(dh, axis=0)
    tl.store(dw_ptr + offs_i[:, None] * s_in + offs_j[None, :] * s_out, acc, mask=mask_i[:, None] & mask_j[None, :])
    if ti == 0:
        tl.store(db_ptr + offs_j, db, mask=mask_j)
        if NORM_GRADS:
            tl.store(dg_ptr + offs_j, dg, mask=mask_j)
            tl.store(dbeta_ptr + offs_j, dbeta, mask=mask_j)


@triton.jit
def _weight_grads_kernel(
    x1_ptr, x2_ptr, g_ptrs, beta_ptrs, pre_ptrs, stats_ptr, dh_ptrs, dz_ptrs, dzo_ptr,
    dw_ptrs, db_ptrs, dg_ptrs, dbeta_ptrs, R, D1, D2, x_strides, widths, M, M_STORED,
    NUM_HIDDEN: tl.constexpr, ENSEMBLE: tl.constexpr, LAYER_NORM: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_O: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The weight gradients of group program_id(1): program_id(0) numbers the [BLOCK_I, BLOCK_J] tiles
    ([BLOCK_I, BLOCK_O] for the output layer) of every layer's matrix one layer after another, and
    runs _weight_tile on its tile; every sum runs over all R rows in BLOCK_R chunks, in order. The
    gradients have the parameters' layouts, seed- and member-stacked."""
    t = tl.program_id(0)
    gid = tl.program_id(1).to(tl.int64)
    sid, mid = gid // M, gid % M
    x1_ptr += sid * x_strides[0]
    x2_ptr += sid * x_strides[2]
    start = 0
    for l in tl.static_range(NUM_HIDDEN + 1):
        K, N = widths[l], widths[l + 1]
        w_off, v_off, s_in, s_out = _group(K, N, ENSEMBLE, M_STORED, sid, mid)
        if l == 0:  # the input rows: no layer below (its pointers are placeholders)
            h_ptr, h_stats, h_g, h_beta = x1_ptr, stats_ptr, x1_ptr, x1_ptr
        else:
            _, pv_off, _, _ = _group(widths[l - 1], K, ENSEMBLE, M_STORED, sid, mid)
            h_ptr, h_g, h_beta = pre_ptrs[l - 1] + gid * R * K, g_ptrs[l - 1] + pv_off, beta_ptrs[l - 1] + pv_off
            h_stats = _stats_ptr(stats_ptr, sid, mid, l - 1, NUM_HIDDEN, M, R)
        if l == NUM_HIDDEN:
            tiles_j = tl.cdiv(N, BLOCK_O)
            tiles = tl.cdiv(K, BLOCK_I) * tiles_j
            if (t >= start) & (t < start + tiles):
                _weight_tile((t - start) // tiles_j, (t - start) % tiles_j, K, N, R, M, x1_ptr, x2_ptr, D1, D2,
                             x_strides[1], x_strides[3],
                             h_ptr, h_stats, h_g, h_beta, dzo_ptr + gid * R * N, dzo_ptr, dzo_ptr, stats_ptr,
                             dw_ptrs[l] + w_off, s_in, s_out, db_ptrs[l] + v_off, dzo_ptr, dzo_ptr,
                             l == 0, LAYER_NORM, False, BLOCK_R, BLOCK_I, BLOCK_O, PRECISION)
        else:
            tiles_j = tl.cdiv(N, BLOCK_J)
            tiles = tl.cdiv(K, BLOCK_I) * tiles_j
            if (t >= start) & (t < start + tiles):
                _weight_tile((t - start) // tiles_j, (t - start) % tiles_j, K, N, R, M, x1_ptr, x2_ptr, D1, D2,
                             x_strides[1], x_strides[3],
                             h_ptr, h_stats, h_g, h_beta, dz_ptrs[l] + gid * R * N, dh_ptrs[l] + gid * R * N,
                             pre_ptrs[l] + gid * R * N, _stats_ptr(stats_ptr, sid, mid, l, NUM_HIDDEN, M, R),
                             dw_ptrs[l] + w_off, s_in, s_out, db_ptrs[l] + v_off, dg_ptrs[l] + v_off,
                             dbeta_ptrs[l] + v_off, l == 0, LAYER_NORM, LAYER_NORM, BLOCK_R, BLOCK_I, BLOCK_J,
                             PRECISION)
        start += tiles


def split_weights(weights, layer_norm):
    """(matrices, biases, gains, shifts) of a flat weight list: per hidden layer (W, b, g, beta) with
    layer_norm, (W, b) without; then (W_out, b_out). gains and shifts are () without layer_norm."""
    per = 4 if layer_norm else 2
    if (len(weights) - 2) % per or len(weights) < 2 + per:
        raise ValueError(f"{len(weights)} weight tensors: a small MLP takes (W, b{', g, beta' if layer_norm else ''}) "
                         f"per hidden layer and (W_out, b_out)")
    hidden = weights[:-2]
    return ([*hidden[0::per], weights[-2]], [*hidden[1::per], weights[-1]],
            tuple(hidden[2::per]) if layer_norm else (), tuple(hidden[3::per]) if layer_norm else ())


def widths(matrices, layout):
    """(in of layer 1, H_1, ..., H_L, N_OUT) from the matrices in `layout` (with or without the seed axis)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown weight layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    ins = [w.shape[-2] if layout == "ensemble" else w.shape[-1] for w in matrices]
    return (*ins, matrices[-1].shape[-1] if layout == "ensemble" else matrices[-1].shape[-2])


def _x_strides(x1, x2):
    """(x1's seed stride, x1's row stride, x2's, x2's) in elements; x2 None: x1's again (unused)."""
    x2 = x1 if x2 is None else x2
    return (x1.stride(0), x1.stride(1), x2.stride(0), x2.stride(1))


def _stacked(x1, x2, weights, layout):
    """(x1, x2 with the seed axis, unit column stride (seed_axis.unit_columns), weights stacked (S, ...)
    contiguous fp32, single, S, stored members)."""
    single = x1.dim() == 2
    if single:
        x1, x2 = x1[None], None if x2 is None else x2[None]
        weights = [w[None] for w in weights]
    check_stacked(x1.shape[0], weights)
    weights = [w.detach().to(torch.float32).contiguous() for w in weights]
    x1, x2 = (None if x is None else unit_columns(x.detach().to(torch.float32)) for x in (x1, x2))
    return x1, x2, weights, single, x1.shape[0], weights[0].shape[1] if layout == "ensemble" else 1


def small_mlp_forward(x1, x2, weights, layout, layer_norm, members=1, out_scale=0.0, precision="tf32",
                      save_activations=False, block_m=64, block_n=64, block_k=32, num_warps=4, num_stages=2):
    """The network on rows [x1, x2]: x1 (R, D1), x2 (R, D2) or None, weights flat (split_weights) in
    `layout` -> out (members, R, N_OUT) fp32 (members = 1 for "linear"); out_scale > 0: out_scale *
    tanh(.) on the output. Seed axis: x1, x2 (S, R, .), weights stacked (S, ...) -> (S, members, R, N_OUT).
    save_activations: also (stats ([S,] 2L, members, R) = mean_l, rstd_l per layer (unwritten without
    layer_norm), pre_l ([S,] members, R, H_l) the ReLU outputs)."""
    check_precision(precision)
    x1, x2, weights, single, S, stored = _stacked(x1, x2, weights, layout)
    matrices, biases, gains, shifts = split_weights(weights, layer_norm)
    dims = widths(matrices, layout)
    L, R, M = len(matrices) - 1, x1.shape[1], members
    if not 1 <= M <= stored:
        raise ValueError(f"members={M}: the weights hold {stored} member(s)")
    dev = x1.device
    pres = [torch.empty((S, M, R, h), device=dev, dtype=torch.float32) for h in dims[1:-1]]
    stats = torch.empty((S, 2 * L, M, R), device=dev, dtype=torch.float32)
    out = torch.empty((S, M, R, dims[-1]), device=dev, dtype=torch.float32)
    _forward_kernel[(triton.cdiv(R, block_m), S * M)](
        x1, x1 if x2 is None else x2, tuple(matrices), tuple(biases), gains or tuple(matrices[:-1]),
        shifts or tuple(matrices[:-1]), tuple(pres), stats, out,
        R, x1.shape[2], 0 if x2 is None else x2.shape[2], _x_strides(x1, x2), dims, M, stored, float(out_scale),
        LAYER_NORM_EPS,
        NUM_HIDDEN=L, ENSEMBLE=layout == "ensemble", LAYER_NORM=layer_norm, TANH=out_scale > 0,
        SAVE=save_activations, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_O=output_block(dims[-1]),
        PRECISION=precision, num_warps=num_warps, num_stages=num_stages,
    )
    if single:
        out, stats, pres = out[0], stats[0], [p[0] for p in pres]
    return (out, (stats, pres)) if save_activations else out


def target_values(s, normal, actor_weights, critic_weights, layer_norm, members, max_action, policy_noise,
                  noise_clip, precision="tf32", block_m=64, block_n=64, block_k=32, num_warps=4, num_stages=2):
    """TD3's target side in one launch (reference.target_values): a' = smoothed pi'(s') and Q'(s', a') of the first
    `members` critics. s (R, D_S), normal (R, m), actor_weights flat in layout "linear" (no LayerNorm, out_scale
    max_action), critic_weights in layout "ensemble" -> (a' (R, m), Q' (members, R)); seed axis: s, normal
    (S, R, .), weights stacked (S, ...) -> (S, R, m), (S, members, R).

    Why one launch: program (row block, seed x member) runs its rows through pi' (recomputed by each member's
    program: +1 actor of FLOPs, 4 networks' instead of 3, ~0.3 MFLOP a row at hidden 3 x 256), smooths a' in
    registers and takes it into its critic's first layer; a' is written once and read by no other launch. At
    a pair's 2B = 512 rows the grid is 8 row blocks x 2 members = 16 programs on 132 SMs: the time is each
    program's chain of layers, not FLOPs, and that chain (actor then critic) is the one the three launches ran
    in sequence, less two launch gaps and the smoothing kernel's; the extra bytes are the actor's weights
    (0.55 MB, L2-resident) read by twice the programs."""
    check_precision(precision)
    single = s.dim() == 2
    s, normal, actor_weights, _, S, _ = _stacked(s, normal, actor_weights, "linear")
    _, _, critic_weights, _, _, stored = _stacked(s[0] if single else s, None, critic_weights, "ensemble")
    a_mats, a_biases, _, _ = split_weights(actor_weights, False)
    c_mats, c_biases, gains, shifts = split_weights(critic_weights, layer_norm)
    a_dims, c_dims = widths(a_mats, "linear"), widths(c_mats, "ensemble")
    D_S, m, R, M = s.shape[2], a_dims[-1], s.shape[1], members
    if a_dims[0] != D_S or c_dims[0] != D_S + m or normal.shape[-1] != m:
        raise ValueError(f"states of width {D_S}, normal of width {normal.shape[-1]}: the actor takes {a_dims[0]} "
                         f"and gives {m}, the critics take {c_dims[0]} = states + actions")
    if not 1 <= M <= stored:
        raise ValueError(f"members={M}: the weights hold {stored} member(s)")
    if normal.shape[:-1] != s.shape[:-1]:
        raise ValueError(f"normal {tuple(normal.shape)} for states {tuple(s.shape)}: one normal row per state row "
                         "(and the same seed axis)")
    new = functools.partial(torch.empty, device=s.device, dtype=torch.float32)
    a_pres = [new((S, M, R, h)) for h in a_dims[1:-1]]
    c_pres = [new((S, M, R, h)) for h in c_dims[1:-1]]
    action, q = new((S, R, m)), new((S, M, R, 1))
    _target_values_kernel[(triton.cdiv(R, block_m), S * M)](
        s, normal, tuple(a_mats), tuple(a_biases), tuple(a_pres), tuple(c_mats), tuple(c_biases),
        gains or tuple(c_mats[:-1]), shifts or tuple(c_mats[:-1]), tuple(c_pres), action, q,
        R, D_S, _x_strides(s, normal), a_dims, c_dims, M, stored, float(max_action), float(policy_noise),
        float(noise_clip), LAYER_NORM_EPS,
        ACTOR_HIDDEN=len(a_mats) - 1, CRITIC_HIDDEN=len(c_mats) - 1, LAYER_NORM=layer_norm, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_A=output_block(m), BLOCK_Q=output_block(1), PRECISION=precision,
        num_warps=num_warps, num_stages=num_stages,
    )
    q = q[..., 0]
    return (action[0], q[0]) if single else (action, q)


def small_mlp_backward(grad_out, x1, x2, weights, out, acts, layout, layer_norm, members=1, out_scale=0.0,
                       need_x1=False, need_x2=False, need_weights=True, precision="tf32", block_m=32, block_h=64,
                       block_k=32, block_r=32, block_i=32, block_j=64, num_warps=4, num_stages=2):
    """Gradients of small_mlp_forward in two launches: grad_out and out ([S,] members, R, N_OUT), acts =
    (stats, pres) from small_mlp_forward(save_activations=True), the other arguments as there.
    Returns (grad x1 ([S,] R, D1) or None, grad x2 or None, the weights' gradients in their shapes (a
    tuple; the members past `members` get 0) or None): the input gradients summed over the members."""
    check_precision(precision)
    stats, pres = acts
    single = x1.dim() == 2
    if single:
        grad_out, out, stats, pres = grad_out[None], out[None], stats[None], [p[None] for p in pres]
    x1, x2, weights, _, S, stored = _stacked(x1, x2, weights, layout)
    matrices, _, gains, _ = split_weights(weights, layer_norm)
    dims = widths(matrices, layout)
    L, R, M, dev = len(matrices) - 1, x1.shape[1], members, x1.device
    D1, D2 = x1.shape[2], 0 if x2 is None else x2.shape[2]
    grad_out, out, stats = grad_out.contiguous(), out.contiguous(), stats.contiguous()
    pres = [p.contiguous() for p in pres]
    dhs = [torch.empty_like(p) for p in pres]
    dzs = [torch.empty_like(p) for p in pres]
    dzo = torch.empty_like(grad_out)
    inputs = [torch.empty((S, M, R, d) if M > 1 else (S, R, d), device=dev, dtype=torch.float32) if need else None
              for need, d in ((need_x1, D1), (need_x2 and x2 is not None, D2))]
    placeholders = tuple(matrices[:-1])
    _backward_deltas_kernel[(triton.cdiv(R, block_m), S * M)](
        grad_out, out, tuple(matrices), gains or placeholders, tuple(pres), stats, tuple(dhs), tuple(dzs), dzo,
        grad_out if inputs[0] is None else inputs[0], grad_out if inputs[1] is None else inputs[1],
        R, D1, D2, dims, M, stored, float(out_scale),
        NUM_HIDDEN=L, ENSEMBLE=layout == "ensemble", LAYER_NORM=layer_norm, TANH=out_scale > 0,
        NEED_X1=inputs[0] is not None, NEED_X2=inputs[1] is not None, BLOCK_M=block_m,
        BLOCK_H=block_h, BLOCK_K=block_k, BLOCK_O=output_block(dims[-1]),
        BLOCK_D=output_block(max(D1, D2)), PRECISION=precision, num_warps=num_warps, num_stages=num_stages,
    )
    inputs = [g if g is None or M == 1 else g.sum(1) for g in inputs]
    grads = None
    if need_weights:
        grads = _weight_grads(x1, x2, weights, layout, layer_norm, M, (stats, pres, dhs, dzs, dzo), precision,
                              block_r, block_i, block_j, num_warps, num_stages)
        grads = tuple(g[0] for g in grads) if single else tuple(grads)
    if single:
        inputs = [None if g is None else g[0] for g in inputs]
    return inputs[0], inputs[1], grads


def _weight_grads(x1, x2, weights, layout, layer_norm, members, saved, precision, block_r, block_i, block_j, num_warps,
                  num_stages):
    """The weights' gradients (stacked (S, ...), the members past `members` 0) in one _weight_grads_kernel launch:
    x1, x2, weights as _stacked gives them, saved = (stats, pres, dhs, dzs, dzo) of the forward and of a deltas
    launch (S, ...)."""
    stats, pres, dhs, dzs, dzo = saved
    matrices, _, gains, shifts = split_weights(weights, layer_norm)
    dims, stored = widths(matrices, layout), weights[0].shape[1] if layout == "ensemble" else 1
    L, (S, R, D1), D2 = len(matrices) - 1, x1.shape, 0 if x2 is None else x2.shape[2]
    new = torch.zeros if members < stored else torch.empty  # members not evaluated: zero gradients
    grads = [new(w.shape, device=x1.device, dtype=torch.float32) for w in weights]
    dws, dbs, dgs, dbetas = split_weights(grads, layer_norm)
    block_o, placeholders = output_block(dims[-1]), tuple(matrices[:-1])
    tiles = sum(triton.cdiv(dims[l], block_i) * triton.cdiv(dims[l + 1], block_j if l < L else block_o)
                for l in range(L + 1))
    _weight_grads_kernel[(tiles, S * members)](
        x1, x1 if x2 is None else x2, gains or placeholders, shifts or placeholders, tuple(pres), stats,
        tuple(dhs), tuple(dzs), dzo, tuple(dws), tuple(dbs), dgs or tuple(dws[:-1]), dbetas or tuple(dws[:-1]),
        R, D1, D2, _x_strides(x1, x2), dims, members, stored,
        NUM_HIDDEN=L, ENSEMBLE=layout == "ensemble", LAYER_NORM=layer_norm, BLOCK_R=block_r, BLOCK_I=block_i,
        BLOCK_J=block_j, BLOCK_O=block_o, PRECISION=precision, num_warps=num_warps, num_stages=num_stages,
    )
    return grads


def policy_value_backward(grad_q, grad_a, s, actor_weights, a, actor_acts, critic_weights, critic_acts, layer_norm,
                          max_action, precision="tf32", block_m=32, block_h=64, block_k=32, block_r=32, block_i=32,
                          block_j=64, num_warps=4, num_stages=2):
    """The actor's weight gradients of grad_q . Q1(s, a) + grad_a . a, a = pi(s) (reference.policy_value_grads),
    in two launches: _policy_value_deltas_kernel takes each row back through Q1 to a, adds grad_a and goes on
    back through the actor (no action gradient written, no add launched), then the actor's _weight_grads_kernel.
    grad_q (R,), grad_a, a (R, m), s (R, n); actor_acts, critic_acts: small_mlp_forward's saved activations of
    pi(s) (layout "linear", no LayerNorm, out_scale max_action) and of Q1(s, a) (layout "ensemble", members 1).
    Seed axis: a leading S on every tensor, weights stacked (S, ...). Returns the actor's weights' gradients."""
    check_precision(precision)
    single = s.dim() == 2
    (a_stats, a_pres), (c_stats, c_pres) = actor_acts, critic_acts
    if single:
        grad_q, grad_a, a, a_stats, c_stats = (x[None] for x in (grad_q, grad_a, a, a_stats, c_stats))
        a_pres, c_pres = [p[None] for p in a_pres], [p[None] for p in c_pres]
    _, _, critic_weights, _, _, stored = _stacked(s, None, critic_weights, "ensemble")
    s, _, actor_weights, _, S, _ = _stacked(s, None, actor_weights, "linear")
    a_mats, (c_mats, _, gains, _) = split_weights(actor_weights, False)[0], split_weights(critic_weights, layer_norm)
    a_dims, c_dims = widths(a_mats, "linear"), widths(c_mats, "ensemble")
    R, D_S, m = s.shape[1], s.shape[2], a_dims[-1]
    if c_stats.shape[-2] != 1 or any(p.shape[-3] != 1 for p in c_pres) or grad_q.shape != (S, R) or \
            grad_a.shape != (S, R, m) or a.shape != (S, R, m):
        raise ValueError("policy_value_backward takes Q1's saved forward (members=1) and grad_q (R,), grad_a and a "
                         f"(R, {m}) for {R} state rows: got critic stats {tuple(c_stats.shape)}, grad_q "
                         f"{tuple(grad_q.shape)}, grad_a {tuple(grad_a.shape)}, a {tuple(a.shape)}")
    grad_q, grad_a, a, a_stats, c_stats = (x.contiguous() for x in (grad_q, grad_a, a, a_stats, c_stats))
    a_pres, c_pres = [p.contiguous() for p in a_pres], [p.contiguous() for p in c_pres]
    c_dhs, c_dzs, a_dhs, a_dzs = ([torch.empty_like(p) for p in pres] for pres in (c_pres, c_pres, a_pres, a_pres))
    c_dzo = torch.empty((S, 1, R, 1), device=s.device, dtype=torch.float32)
    a_dzo = torch.empty((S, 1, R, m), device=s.device, dtype=torch.float32)
    _policy_value_deltas_kernel[(triton.cdiv(R, block_m), S)](
        grad_q, grad_a, a, tuple(c_mats), gains or tuple(c_mats[:-1]), tuple(c_pres), c_stats, tuple(c_dhs),
        tuple(c_dzs), c_dzo, tuple(a_mats), tuple(a_pres), a_stats, tuple(a_dhs), tuple(a_dzs), a_dzo,
        R, D_S, c_dims, a_dims, stored, float(max_action),
        CRITIC_HIDDEN=len(c_mats) - 1, ACTOR_HIDDEN=len(a_mats) - 1, LAYER_NORM=layer_norm, BLOCK_M=block_m,
        BLOCK_H=block_h, BLOCK_K=block_k, BLOCK_Q=output_block(1), BLOCK_A=output_block(m), PRECISION=precision,
        num_warps=num_warps, num_stages=num_stages,
    )
    grads = _weight_grads(s, None, actor_weights, "linear", False, 1, (a_stats, a_pres, a_dhs, a_dzs, a_dzo),
                          precision, block_r, block_i, block_j, num_warps, num_stages)
    return tuple(g[0] for g in grads) if single else tuple(grads)
