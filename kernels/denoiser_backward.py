"""Backward of the denoiser MLP (reference.denoiser_forward): hidden layers Linear -> ReLU -> LayerNorm,
output Linear. Weights (W1, b1, g1, beta1, ..., W_out, b_out), Linear layout (out, in), fp32 (the
matrices may be bf16); saved activations pre_k fp32 or bf16 (mlp_forward stores them in W1's dtype),
read as fp32. Gradients are fp32.

Per hidden layer k, from the gradient dY (R, K) of the next Linear's output and its weight W (K, H_k),
one fused kernel computes, per BLOCK_R rows:
    dh   = dY @ W                                   (R, H_k)  gradient w.r.t. the LayerNorm output h_k
    dpre = rstd (g dh - mean(g dh) - xhat mean(g dh xhat)),   xhat = (pre - mean) rstd
    dz   = dpre * (pre > 0)                         (R, H_k)  gradient w.r.t. layer k's Linear output
and, when weight gradients are wanted, recomputes h_k = xhat g + beta (the next weight gradient reads
it) and writes per-program column sums of dh xhat, dh, dz (partials of dg_k, dbeta_k, db_k) plus, for
the last hidden layer, of dY (partial of db_out). One column-sum launch reduces every partial, in a
fixed order (deterministic). Weight and input gradients (dW = dZ^T H, d rows = dz_1 W_1) are plain
matmuls left to torch (cuBLAS).

Blocking: the row statistics mean(g dh), mean(g dh xhat) need whole rows, but a [BLOCK_R, 512] fp32
tile does not fit in registers, so a program walks its rows' H columns twice in BLOCK_H chunks:
pass 1 builds each dh chunk by tl.dot over K-chunks, accumulates the row sums and parks dh in the dz
buffer (L2-resident); pass 2 reloads it and writes dz in place. Shared memory per program (fp32,
defaults BLOCK_R=32, BLOCK_H=64, BLOCK_K=32, num_warps=4, num_stages=2): 12 KB. Compiled ahead for
sm_90 with Triton 3.9 and tf32 it has no local-memory spills (mma.sync); block_r=64 with num_warps=8
(32 KB, wgmma) is spill-free too. A full-width [32, 512] tile spilled 600+ bytes.
"""
import torch
import triton
import triton.language as tl

from .denoiser_mlp import _mma, check_precision
from .seed_axis import add_seed_axis, check_stacked


@triton.jit
def _relu_norm_grad(dh_ptr, dz_ptr, pre_ptr, offs_r, mask_r, offs_h, mask_h, H, mean, rstd, g_ptr, c1, c2,
                    LAYER_NORM: tl.constexpr):
    """dz = ReLU'(pre) N'(dh) on a [rows, chunk] tile of (R, H) buffers -> dz_ptr (may be dh_ptr), returned:
    N' the LayerNorm backward rstd (g dh - c1 - xhat c2) (c1, c2 the row means of g dh and g dh xhat) with
    LAYER_NORM, the identity without."""
    mask = mask_r[:, None] & mask_h[None, :]
    idx = offs_r[:, None] * H + offs_h[None, :]
    dh = tl.load(dh_ptr + idx, mask=mask, other=0.0)
    pre = tl.load(pre_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    if LAYER_NORM:
        xhat = tl.where(mask, (pre - mean[:, None]) * rstd[:, None], 0.0)
        g = tl.load(g_ptr + offs_h, mask=mask_h, other=0.0)
        dh = rstd[:, None] * (dh * g[None, :] - c1[:, None] - xhat * c2[:, None])
    dz = tl.where(pre > 0.0, dh, 0.0)
    tl.store(dz_ptr + idx, dz, mask=mask)
    return dz


@triton.jit
def _ln_relu_bwd_kernel(
    dy_ptr, w_ptr, pre_ptr, mean_ptr, rstd_ptr, g_ptr, beta_ptr, dz_ptr, h_ptr, part_ptr,
    R, K, H,
    stride_dy, stride_w, stride_part, part_col,
    WEIGHT_GRADS: tl.constexpr, DY_SUMS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """One program: BLOCK_R rows of layer k of seed program_id(1) (pre, dz, h contiguous (S, R, H), dY
    (S, R, K) with row stride stride_dy, W (S, K, H), mean, rstd (S, R), g, beta (S, H), partials
    (S, programs, stride_part)), in two passes over BLOCK_H column chunks. Pass 1 builds dh chunk by
    chunk (parked in dz) with the row sums mean(g dh), mean(g dh xhat); pass 2 turns dh into dz in place."""
    pid = tl.program_id(0)
    sid = tl.program_id(1).to(tl.int64)
    dy_ptr += sid * R * stride_dy
    w_ptr += sid * K * stride_w
    pre_ptr += sid * R * H
    dz_ptr += sid * R * H
    h_ptr += sid * R * H
    mean_ptr += sid * R
    rstd_ptr += sid * R
    g_ptr += sid * H
    beta_ptr += sid * H
    offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = offs_r < R
    mean = tl.load(mean_ptr + offs_r, mask=mask_r, other=0.0)
    rstd = tl.load(rstd_ptr + offs_r, mask=mask_r, other=0.0)
    part = part_ptr + (sid * tl.num_programs(0) + pid) * stride_part

    if DY_SUMS:  # column sums of dY: partial of the next Linear's bias gradient
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            dy = tl.load(dy_ptr + offs_r[:, None] * stride_dy + offs_k[None, :],
                         mask=mask_r[:, None] & (offs_k < K)[None, :], other=0.0)
            tl.store(part + offs_k, tl.sum(dy, axis=0), mask=offs_k < K)

    # Pass 1: dh = dY @ W chunk by chunk, streaming K-chunks of dY (BLOCK_R, BLOCK_K) and W (BLOCK_K, BLOCK_H).
    c1 = tl.zeros((BLOCK_R,), dtype=tl.float32)
    c2 = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        mask = mask_r[:, None] & mask_h[None, :]
        dh = tl.zeros((BLOCK_R, BLOCK_H), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < K
            dy = tl.load(dy_ptr + offs_r[:, None] * stride_dy + offs_k[None, :],
                         mask=mask_r[:, None] & mask_k[None, :], other=0.0)
            w = tl.load(w_ptr + offs_k[:, None] * stride_w + offs_h[None, :],
                        mask=mask_k[:, None] & mask_h[None, :], other=0.0)
            dh = _mma(dh, dy, w, PRECISION)
        idx = offs_r[:, None] * H + offs_h[None, :]
        pre = tl.load(pre_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        xhat = tl.where(mask, (pre - mean[:, None]) * rstd[:, None], 0.0)
        g = tl.load(g_ptr + offs_h, mask=mask_h, other=0.0)
        gdh = dh * g[None, :]
        c1 += tl.sum(gdh, axis=1)
        c2 += tl.sum(gdh * xhat, axis=1)
        tl.store(dz_ptr + idx, dh, mask=mask)
        if WEIGHT_GRADS:
            beta = tl.load(beta_ptr + offs_h, mask=mask_h, other=0.0)
            tl.store(h_ptr + idx, xhat * g[None, :] + beta[None, :], mask=mask)
            tl.store(part + part_col + offs_h, tl.sum(dh * xhat, axis=0), mask=mask_h)
            tl.store(part + part_col + H + offs_h, tl.sum(dh, axis=0), mask=mask_h)
    c1 = c1 / H
    c2 = c2 / H
    tl.debug_barrier()  # pass 2 reads dh written by other threads of this program

    # Pass 2: LayerNorm backward dpre = rstd (g dh - c1 - xhat c2), then the ReLU mask.
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        dz = _relu_norm_grad(dz_ptr, dz_ptr, pre_ptr, offs_r, mask_r, offs_h, mask_h, H, mean, rstd, g_ptr, c1, c2,
                             True)
        if WEIGHT_GRADS:
            tl.store(part + part_col + 2 * H + offs_h, tl.sum(dz, axis=0), mask=mask_h)


@triton.jit
def _column_sum_kernel(x_ptr, out_ptr, P, C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[s, c] = sum_p x[s, p, c] for a contiguous (S, P, C) x, out (S, C); one program per BLOCK_C
    columns of seed program_id(1), fixed order."""
    sid = tl.program_id(1).to(tl.int64)
    x_ptr += sid * P * C
    out_ptr += sid * C
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        acc += tl.load(x_ptr + offs_p[:, None] * C + offs_c[None, :],
                       mask=(offs_p < P)[:, None] & mask_c[None, :], other=0.0)
    tl.store(out_ptr + offs_c, tl.sum(acc, axis=0), mask=mask_c)


def _wanted(flags, count):
    return [bool(flags)] * count if isinstance(flags, bool) else [bool(f) for f in flags]


def vector_columns(weights):
    """Columns of the column-sum buffer of mlp_backward: n_out + 3 H_k over the hidden layers."""
    return weights[-1].shape[-1] + 3 * sum(w.shape[-1] for w in weights[1:-2:4])


def vector_grads(sums, weights):
    """The vector gradients (b_k, g_k, beta_k, b_out) as views of mlp_backward's column sums (..., cols),
    laid out [db_out | (dg_k, dbeta_k, db_k) for k = L..1]; a list in weights' order, None at the matrices."""
    grads = [None] * len(weights)
    n_out = weights[-1].shape[-1]
    grads[-1] = sums[..., :n_out]
    col = n_out
    for k in reversed(range((len(weights) - 2) // 4)):
        H = weights[4 * k + 1].shape[-1]
        grads[4 * k + 2], grads[4 * k + 3], grads[4 * k + 1] = (sums[..., col + i * H : col + (i + 1) * H]
                                                                for i in range(3))
        col += 3 * H
    return grads


def mlp_backward(grad_out, rows, weights, acts, need_weight_grads=True, need_input_grad=True,
                 precision="tf32", sums=None, block_r=32, block_h=64, block_k=32, num_warps=4, num_stages=2):
    """Gradients of reference.denoiser_forward.

    grad_out (R, n), rows (R, D), weights (W1, b1, g1, beta1, ..., W_out, b_out),
    acts (pre1, mean1, rstd1, pre2, mean2, rstd2, ...) from mlp_forward(save_activations=True):
    pre_k (R, H_k) = ReLU(W_k h_{k-1} + b_k), mean_k, rstd_k (R,) its LayerNorm statistics.
    Seed axis (seed_axis): grad_out (S, R, n), rows (S, R, D), weights stacked (S, ...), acts with a
    leading S -> every gradient with a leading S (seed k's from seed k's rows only).
    need_weight_grads: bool, or one bool per weight. precision: denoiser_mlp.PRECISIONS, for the fused
    kernels' dY @ W ("bf16": bf16 operands, rounded as in the forward); the weight- and input-gradient
    matmuls are torch's (batched over seeds), in fp32 (tf32 where torch allows it). `sums` (optional,
    contiguous ([S,] vector_columns(weights)) fp32) receives the column sums: the vector gradients
    (biases, gains) are views of it (vector_grads). Returns (grad_rows (R, D) or None, tuple of weight
    grads, None where not wanted)."""
    check_precision(precision)
    layers = len(acts) // 3
    assert len(weights) == 4 * layers + 2, "weights must be (W, b, g, beta) per hidden layer + (W_out, b_out)"
    single = grad_out.dim() == 2
    if single:
        grad_out, rows, weights, acts = grad_out[None], rows[None], add_seed_axis(*weights), add_seed_axis(*acts)
    check_stacked(grad_out.shape[0], weights)
    wanted = _wanted(need_weight_grads, len(weights))
    S, R = grad_out.shape[:2]
    device = grad_out.device
    grad_out = grad_out.contiguous()
    # Column layout of the partial-sum buffer: [db_out | (dg_k, dbeta_k, db_k) for k = L..1].
    n_out = weights[-1].shape[1]
    widths = [w.shape[1] for w in weights[0:-2:4]]
    programs = triton.cdiv(R, block_r)
    any_weight = any(wanted)
    cols = vector_columns(weights)
    part = torch.empty((S, programs, cols), device=device, dtype=torch.float32) if any_weight else None

    grads = [None] * len(weights)
    dy, w_next = grad_out, weights[-2]
    col = n_out
    for k in reversed(range(layers)):
        H = widths[k]
        pre, mean, rstd = acts[3 * k : 3 * k + 3]
        g, beta = weights[4 * k + 2].contiguous(), weights[4 * k + 3].contiguous()  # read with unit stride
        w_next = w_next.contiguous()
        dz = torch.empty((S, R, H), device=device, dtype=torch.float32)
        h = torch.empty((S, R, H), device=device, dtype=torch.float32) if any_weight else dz
        last = k == layers - 1
        K = dy.shape[2]
        _ln_relu_bwd_kernel[(programs, S)](
            dy, w_next, pre.contiguous(), mean.contiguous(), rstd.contiguous(), g, beta, dz, h,
            part if any_weight else dz, R, K, H, dy.stride(1), w_next.stride(1), cols, col,
            WEIGHT_GRADS=any_weight, DY_SUMS=any_weight and last, PRECISION=precision,
            BLOCK_R=block_r, BLOCK_K=max(16, min(block_k, triton.next_power_of_2(K))),
            BLOCK_H=max(16, min(block_h, triton.next_power_of_2(H))), num_warps=num_warps, num_stages=num_stages,
        )
        # The next Linear (index of its weight: 4(k+1), or -2 for the output layer) gets dW = dY^T h_k.
        iw = len(weights) - 2 if last else 4 * (k + 1)
        if wanted[iw]:
            grads[iw] = dy.mT @ h
        col += 3 * H
        dy, w_next = dz, weights[4 * k]

    if wanted[0]:
        grads[0] = dy.mT @ rows
    grad_rows = dy @ weights[0].to(dy.dtype) if need_input_grad else None
    if any_weight:
        if sums is None:
            sums = torch.empty((S, cols), device=device, dtype=torch.float32)
        elif single:
            sums = sums.unsqueeze(0)
        block_c = 128
        _column_sum_kernel[(triton.cdiv(cols, block_c), S)](
            part, sums, programs, cols, BLOCK_P=16, BLOCK_C=block_c, num_warps=4)
        grads = [m if v is None else v for m, v in zip(grads, vector_grads(sums, weights))]
    grads = tuple(gr if want else None for gr, want in zip(grads, wanted))
    if single:
        grad_rows = None if grad_rows is None else grad_rows[0]
        grads = tuple(None if gr is None else gr[0] for gr in grads)
    return grad_rows, grads
