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
fixed order (deterministic), into each vector gradient's own contiguous ([S,] width) tensor (not views of
one buffer: with the seed axis those would be strided, and the fused Adam would need a copy of each). When
the input gradient is wanted, the layer-1 launch also computes d rows = dz_1 W_1 (see Blocking) for inputs
up to FOLD_MAX_WIDTH columns; the weight gradients (dW = dZ^T H) and wider input gradients are plain matmuls
left to torch (cuBLAS), per network.

Launches (mlp_backward_group): up to MAX_NETWORKS networks with the same hidden widths and output width
(their input widths and row counts may differ: D on 2B rows of 2n+1+m columns, E on B rows of n+1)
take one _ln_relu_bwd_kernel launch per hidden layer and one _column_sum_kernel launch in all: grid
axis 1 is network x seed, axis 0 the row blocks of the network with the most rows (a program past its
network's rows does nothing); every per-network pointer, row count, input width and flag is a tuple
entry, read in one constexpr-unrolled branch per network that calls the one body, _ln_relu_bwd_rows.
mlp_backward is the one-network case. Two networks with weight gradients: 2 + 1 = 3 Triton launches
(6 one at a time); the input gradient alone: 2 (and no matmul).

Blocking: the row statistics mean(g dh), mean(g dh xhat) need whole rows, but a [BLOCK_R, 512] fp32
tile does not fit in registers, so a program walks its rows' H columns twice in BLOCK_H chunks:
pass 1 builds each dh chunk by tl.dot over K-chunks, accumulates the row sums and parks dh in the dz
buffer (L2-resident); pass 2 reloads it and writes dz in place. The folded input gradient is a third
pass over the same chunks: it reloads dz (just written, L2-resident) and accumulates dz W_1 into a
[BLOCK_R, BLOCK_D] fp32 tile, BLOCK_D = next power of two >= max(16, input width), stored masked.
Shared memory per program (fp32, defaults BLOCK_R=32, BLOCK_H=64, BLOCK_K=32, num_warps=4,
num_stages=2): 12 KB; with the folded input gradient 24 KB (BLOCK_D 64), 40 KB (BLOCK_D 128).
Compiled ahead for sm_90 with Triton 3.9 and tf32 (kernels/sm90_compile.py) it has no local-memory
spills (mma.sync), one network or grouped, with or without the fold (166-192 registers); block_r=64
with num_warps=8 (32 KB, wgmma) is spill-free too. A full-width [32, 512] tile spilled 600+ bytes;
accumulating d rows inside pass 2 instead held 255 registers and 41 KB (BLOCK_D 64) and spilled 8 bytes
for three networks.
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
def _ln_relu_bwd_rows(
    pid, sid, dy_ptr, w_ptr, pre_ptr, mean_ptr, rstd_ptr, g_ptr, beta_ptr, dz_ptr, h_ptr, part_ptr, w1_ptr, dx_ptr,
    R, K, H, D, stride_dy, stride_w, stride_part, part_col,
    WEIGHT_GRADS: tl.constexpr, DY_SUMS: tl.constexpr, INPUT_GRAD: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Row block pid of layer k of one network's seed sid (pre, dz, h contiguous (S, R, H), dY (S, R, K) with row
    stride stride_dy, W (S, K, H), mean, rstd (S, R), g, beta (S, H), partials (S, cdiv(R, BLOCK_R), stride_part)),
    in passes over BLOCK_H column chunks. Pass 1 builds dh chunk by chunk (parked in dz) with the row sums
    mean(g dh), mean(g dh xhat); pass 2 turns dh into dz in place; with INPUT_GRAD (layer 1) pass 3 accumulates
    d rows = dz @ W1 (W1 (S, H, D), d rows (S, R, D) contiguous) into a [BLOCK_R, BLOCK_D] tile."""
    dy_ptr += sid * R * stride_dy
    w_ptr += sid * K * stride_w
    pre_ptr += sid * R * H
    dz_ptr += sid * R * H
    h_ptr += sid * R * H
    mean_ptr += sid * R
    rstd_ptr += sid * R
    g_ptr += sid * H
    beta_ptr += sid * H
    w1_ptr += sid * H * D
    dx_ptr += sid * R * D
    offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = offs_r < R
    mean = tl.load(mean_ptr + offs_r, mask=mask_r, other=0.0)
    rstd = tl.load(rstd_ptr + offs_r, mask=mask_r, other=0.0)
    part = part_ptr + (sid * tl.cdiv(R, BLOCK_R) + pid) * stride_part

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
    if INPUT_GRAD:  # Pass 3: d rows = dz @ W1, from the dz chunks pass 2 wrote
        tl.debug_barrier()
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        dx = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            offs_h = h0 + tl.arange(0, BLOCK_H)
            mask_h = offs_h < H
            dz = tl.load(dz_ptr + offs_r[:, None] * H + offs_h[None, :], mask=mask_r[:, None] & mask_h[None, :],
                         other=0.0)
            w1 = tl.load(w1_ptr + offs_h[:, None] * D + offs_d[None, :],
                         mask=mask_h[:, None] & mask_d[None, :], other=0.0)
            dx = _mma(dx, dz, w1, PRECISION)
        tl.store(dx_ptr + offs_r[:, None] * D + offs_d[None, :], dx, mask=mask_r[:, None] & mask_d[None, :])


@triton.jit
def _ln_relu_bwd_kernel(
    dy_ptrs, w_ptrs, pre_ptrs, mean_ptrs, rstd_ptrs, g_ptrs, beta_ptrs, dz_ptrs, h_ptrs, part_ptrs, w1_ptrs, dx_ptrs,
    rows, widths, K, H, stride_dy, stride_w, stride_part, part_col, seeds,
    WEIGHT_GRADS: tl.constexpr, DY_SUMS: tl.constexpr, INPUT_GRAD: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Layer k of up to three networks: program (pid, net * seeds + seed) runs _ln_relu_bwd_rows on row block
    pid of network net (a tuple entry per network of every pointer, rows, widths (input widths) and of the
    constexpr flags and BLOCK_D), nothing past its network's rows. One branch per network, unrolled."""
    pid = tl.program_id(0)
    net = tl.program_id(1) // seeds
    sid = (tl.program_id(1) % seeds).to(tl.int64)
    for i in tl.static_range(len(WEIGHT_GRADS)):
        if net == i:
            if pid * BLOCK_R < rows[i]:
                _ln_relu_bwd_rows(pid, sid, dy_ptrs[i], w_ptrs[i], pre_ptrs[i], mean_ptrs[i], rstd_ptrs[i], g_ptrs[i],
                                  beta_ptrs[i], dz_ptrs[i], h_ptrs[i], part_ptrs[i], w1_ptrs[i], dx_ptrs[i], rows[i], K,
                                  H, widths[i], stride_dy, stride_w, stride_part, part_col, WEIGHT_GRADS[i],
                                  DY_SUMS[i], INPUT_GRAD[i], PRECISION, BLOCK_R, BLOCK_K, BLOCK_H, BLOCK_D[i])


@triton.jit
def _column_sum_kernel(x_ptrs, out_ptrs, programs, starts, widths, C, seeds, chunks, BLOCK_P: tl.constexpr,
                       BLOCK_C: tl.constexpr):
    """Each network's vector gradients from its partial sums: out_b[s, j] = sum_p x[s, p, starts[b] + j] for the
    column blocks b (vector_blocks: columns starts[b] .. starts[b] + widths[b] - 1, the same for every network);
    x a tuple entry per network (contiguous (S, programs, C)), out_ptrs len(starts) entries per network (each a
    contiguous (S, widths[b]) vector gradient). Program (block * chunks + chunk, net * seeds + seed): BLOCK_C
    columns of one block of one network's seed, summed in a fixed order."""
    net = tl.program_id(1) // seeds
    sid = (tl.program_id(1) % seeds).to(tl.int64)
    block = tl.program_id(0) // chunks
    offs = (tl.program_id(0) % chunks) * BLOCK_C + tl.arange(0, BLOCK_C)
    for i in tl.static_range(len(programs)):
        if net == i:
            P = programs[i]
            for j in tl.static_range(len(starts)):
                if block == j:
                    mask_c = offs < widths[j]
                    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
                    for p0 in range(0, P, BLOCK_P):
                        offs_p = p0 + tl.arange(0, BLOCK_P)
                        acc += tl.load(x_ptrs[i] + sid * P * C + offs_p[:, None] * C + starts[j] + offs[None, :],
                                       mask=(offs_p < P)[:, None] & mask_c[None, :], other=0.0)
                    tl.store(out_ptrs[i * len(starts) + j] + sid * widths[j] + offs, tl.sum(acc, axis=0), mask=mask_c)


def _wanted(flags, count):
    return [bool(flags)] * count if isinstance(flags, bool) else [bool(f) for f in flags]


def vector_columns(weights):
    """Columns of the column-sum buffer of mlp_backward: n_out + 3 H_k over the hidden layers."""
    return weights[-1].shape[-1] + 3 * sum(w.shape[-1] for w in weights[1:-2:4])


def vector_blocks(weights):
    """(index in weights, first column, width) of each vector gradient in the partial-sum columns, laid out
    [db_out | (dg_k, dbeta_k, db_k) for k = L..1]."""
    n_out = weights[-1].shape[-1]
    blocks, col = [(len(weights) - 1, 0, n_out)], n_out
    for k in reversed(range((len(weights) - 2) // 4)):
        H = weights[4 * k + 1].shape[-1]
        blocks += [(4 * k + 2, col, H), (4 * k + 3, col + H, H), (4 * k + 1, col + 2 * H, H)]
        col += 3 * H
    return blocks


MAX_NETWORKS = 3  # networks one mlp_backward_group call takes: D, D', E of an update
FOLD_MAX_WIDTH = 128  # input widths whose d rows the layer-1 launch accumulates in registers; wider: a torch matmul


def mlp_backward(grad_out, rows, weights, acts, need_weight_grads=True, need_input_grad=True,
                 precision="tf32", **blocks):
    """Gradients of reference.denoiser_forward.

    grad_out (R, n), rows (R, D), weights (W1, b1, g1, beta1, ..., W_out, b_out),
    acts (pre1, mean1, rstd1, pre2, mean2, rstd2, ...) from mlp_forward(save_activations=True):
    pre_k (R, H_k) = ReLU(W_k h_{k-1} + b_k), mean_k, rstd_k (R,) its LayerNorm statistics.
    Seed axis (seed_axis): grad_out (S, R, n), rows (S, R, D), weights stacked (S, ...), acts with a
    leading S -> every gradient with a leading S (seed k's from seed k's rows only).
    need_weight_grads: bool, or one bool per weight. precision: denoiser_mlp.PRECISIONS, for the fused
    kernels' dY @ W and dz_1 @ W_1 ("bf16": bf16 operands, rounded as in the forward); the weight-gradient
    matmuls are torch's (batched over seeds), in fp32 (tf32 where torch allows it), and so is the input
    gradient of inputs wider than FOLD_MAX_WIDTH. Returns (grad_rows (R, D) or None, tuple of weight grads,
    None where not wanted), each contiguous (the vector gradients too: the fused Adam reads them in the
    parameters' layout). The one-network case of mlp_backward_group."""
    return mlp_backward_group([grad_out], [rows], [weights], [acts], [need_weight_grads], [need_input_grad],
                              precision, **blocks)[0]


def mlp_backward_group(grad_outs, rows, weights, acts, need_weight_grads, need_input_grads, precision="tf32",
                       block_r=32, block_h=64, block_k=32, num_warps=4, num_stages=2):
    """mlp_backward of up to MAX_NETWORKS networks in one set of launches: one _ln_relu_bwd_kernel per hidden
    layer and one _column_sum_kernel for all of them (the weight-gradient matmuls stay per network). Each
    argument a list with one entry per network, as mlp_backward takes it; the networks share the hidden widths,
    the output width and the seed axis (all 2-D, or all stacked on S seeds), their row counts and input widths
    may differ. Returns a list of mlp_backward's
    results, one per network."""
    check_precision(precision)
    nets = len(grad_outs)
    if not 1 <= nets <= MAX_NETWORKS:
        raise ValueError(f"mlp_backward_group takes 1 to {MAX_NETWORKS} networks, got {nets}: split the group")
    layers = len(acts[0]) // 3
    shape = [tuple(w.shape[-2:]) for w in weights[0][1:]]
    single = grad_outs[0].dim() == 2
    for i in range(nets):
        assert len(weights[i]) == 4 * layers + 2, "weights must be (W, b, g, beta) per hidden layer + (W_out, b_out)"
        if rows[i].shape[-1] != weights[i][0].shape[-1]:
            raise ValueError(f"network {i}: rows of width {rows[i].shape[-1]} for a W1 that takes "
                             f"{weights[i][0].shape[-1]} inputs: give each network its own rows")
        if [tuple(w.shape[-2:]) for w in weights[i][1:]] != shape or (grad_outs[i].dim() == 2) != single:
            raise ValueError(f"network {i} of a backward group differs from network 0 in its hidden or output "
                             "widths or its seed axis: group only networks that share them")
    if single:
        grad_outs, rows = [g[None] for g in grad_outs], [x[None] for x in rows]
        weights, acts = [add_seed_axis(*w) for w in weights], [add_seed_axis(*a) for a in acts]
    S = grad_outs[0].shape[0]
    for w in weights:
        check_stacked(S, w)
    wanted = [_wanted(flags, len(weights[0])) for flags in need_weight_grads]
    any_weight = [any(w) for w in wanted]
    R = [g.shape[1] for g in grad_outs]
    D = [x.shape[-1] for x in rows]
    fold = [bool(need) and width <= FOLD_MAX_WIDTH for need, width in zip(need_input_grads, D)]
    device = grad_outs[0].device
    # Column layout of each network's partial-sum buffer: [db_out | (dg_k, dbeta_k, db_k) for k = L..1].
    n_out = weights[0][-1].shape[1]
    widths = [w.shape[1] for w in weights[0][0:-2:4]]
    programs = [triton.cdiv(r, block_r) for r in R]
    cols = vector_columns(weights[0])
    part = [torch.empty((S, p, cols), device=device, dtype=torch.float32) if a else None
            for p, a in zip(programs, any_weight)]

    grads = [[None] * len(w) for w in weights]
    dy, w_next = [g.contiguous() for g in grad_outs], [w[-2] for w in weights]
    grad_rows = [None] * nets
    col = n_out
    for k in reversed(range(layers)):
        H, last, K = widths[k], k == layers - 1, dy[0].shape[2]
        w_next = [w.contiguous() for w in w_next]
        dz = [torch.empty((S, r, H), device=device, dtype=torch.float32) for r in R]
        h = [torch.empty_like(z) if a else z for z, a in zip(dz, any_weight)]
        folds = [f and k == 0 for f in fold]
        for i in range(nets):
            if folds[i]:
                grad_rows[i] = torch.empty((S, R[i], D[i]), device=device, dtype=torch.float32)
        layer = [(dy[i], w_next[i], *(x.contiguous() for x in acts[i][3 * k : 3 * k + 3]),
                  *(x.contiguous() for x in weights[i][4 * k + 2 : 4 * k + 4]),  # g, beta: read with unit stride
                  dz[i], h[i], part[i] if any_weight[i] else dz[i],
                  weights[i][0].contiguous() if folds[i] else dz[i], grad_rows[i] if folds[i] else dz[i])
                 for i in range(nets)]
        _ln_relu_bwd_kernel[(triton.cdiv(max(R), block_r), nets * S)](
            *(tuple(x) for x in zip(*layer)), tuple(R), tuple(D), K, H, K, H, cols,
            col, S, WEIGHT_GRADS=tuple(any_weight), DY_SUMS=tuple(a and last for a in any_weight),
            INPUT_GRAD=tuple(folds), PRECISION=precision,
            BLOCK_R=block_r, BLOCK_K=max(16, min(block_k, triton.next_power_of_2(K))),
            BLOCK_H=max(16, min(block_h, triton.next_power_of_2(H))),
            BLOCK_D=tuple(triton.next_power_of_2(max(16, d)) if f else 16 for d, f in zip(D, folds)),
            num_warps=num_warps, num_stages=num_stages,
        )
        # The next Linear (index of its weight: 4(k+1), or -2 for the output layer) gets dW = dY^T h_k.
        iw = len(weights[0]) - 2 if last else 4 * (k + 1)
        for i in range(nets):
            if wanted[i][iw]:
                grads[i][iw] = dy[i].mT @ h[i]
        col += 3 * H
        dy, w_next = dz, [w[4 * k] for w in weights]

    for i in range(nets):
        if wanted[i][0]:
            grads[i][0] = dy[i].mT @ rows[i]
        if need_input_grads[i] and not fold[i]:
            grad_rows[i] = dy[i] @ weights[i][0].to(dy[i].dtype)
    summed = [i for i in range(nets) if any_weight[i]]
    if summed:  # every vector gradient its own contiguous tensor, written by one launch for all networks
        blocks = vector_blocks(weights[0])
        vectors = {i: [torch.empty((S, width), device=device, dtype=torch.float32) for _, _, width in blocks]
                   for i in summed}
        block_c = 128
        chunks = triton.cdiv(max(width for _, _, width in blocks), block_c)
        _column_sum_kernel[(len(blocks) * chunks, len(summed) * S)](
            tuple(part[i] for i in summed), tuple(v for i in summed for v in vectors[i]),
            tuple(programs[i] for i in summed), tuple(start for _, start, _ in blocks),
            tuple(width for _, _, width in blocks), cols, S, chunks, BLOCK_P=16, BLOCK_C=block_c, num_warps=4)
        for i in summed:
            for (index, _, _), vector in zip(blocks, vectors[i]):
                grads[i][index] = vector
    results = []
    for i in range(nets):
        net_grads = tuple(gr if want else None for gr, want in zip(grads[i], wanted[i]))
        if single:
            results.append((None if grad_rows[i] is None else grad_rows[i][0],
                            tuple(None if gr is None else gr[0] for gr in net_grads)))
        else:
            results.append((grad_rows[i], net_grads))
    return results
