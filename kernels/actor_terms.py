"""The TD3 actor loss's terms besides the state-BC one, with their gradients, in one launch
(docs/ALGORITHM.md#one-td3-sbc-update, reference.actor_terms):

loss = -lambda mean_rows Q1(s, pi(s)) + bc, lambda = alpha / mean_rows |Q1| (a constant for the gradient),
bc = w_bc mean_rows ||pi(s) - a||^2 (MEAN_SQUARED, TD3+BC's: w_bc mean over all elements of (pi(s) - a)^2);
with the actor loss's other term (TD3-SBC's state-BC term: its value and its gradient w.r.t. pi(s), computed
before) added into the loss and d loss / d pi(s), so that the actor's backward starts from one gradient.

One program per seed (seed_axis), its reductions in row order: deterministic.
"""
import torch
import triton
import triton.language as tl

from .seed_axis import add_seed_axis, unit_columns


@triton.jit
def _actor_terms_kernel(a_ptr, act_ptr, q_ptr, other_loss_ptr, other_grad_ptr, loss_ptr, bc_ptr, lam_ptr,
                        grad_a_ptr, grad_q_ptr, RA, B, m, act_seed, act_row, other_seed, other_row, alpha, bc_scale,
                        MEAN_SQUARED: tl.constexpr, HAS_OTHER: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr):
    """Seed program_id(0): a (S, RA, m) and q (S, RA) whose first B rows are pi(s) and Q1(s, pi(s)),
    actions (S, B, m) (seed and row strides act_seed, act_row) -> loss, bc, lambda (S,), grad_a (S, RA, m),
    grad_q (S, RA) (zero rows past B). HAS_OTHER: other_loss (S,) added into loss, other_grad (S, RA, m)
    (seed and row strides other_seed, other_row) into grad_a."""
    sid = tl.program_id(0).to(tl.int64)
    a_ptr += sid * RA * m
    grad_a_ptr += sid * RA * m
    act_ptr += sid * act_seed
    other_grad_ptr += sid * other_seed
    q_ptr += sid * RA
    grad_q_ptr += sid * RA
    cols = tl.arange(0, BLOCK_N)[None, :]
    if MEAN_SQUARED:
        denominator = B * m
    else:
        denominator = B
    squares = tl.zeros([BLOCK_M], dtype=tl.float32)
    q_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    q_abs = tl.zeros([BLOCK_M], dtype=tl.float32)
    for r0 in range(0, RA, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        batch = rows < B
        mask = batch[:, None] & (cols < m)
        idx = rows[:, None] * m + cols
        action = tl.load(act_ptr + rows[:, None] * act_row + cols, mask=mask, other=0.0)
        diff = tl.load(a_ptr + idx, mask=mask, other=0.0) - action
        grad_a = (2.0 * bc_scale / denominator) * diff
        in_a = (rows < RA)[:, None] & (cols < m)
        if HAS_OTHER:
            grad_a += tl.load(other_grad_ptr + rows[:, None] * other_row + cols, mask=in_a, other=0.0)
        tl.store(grad_a_ptr + idx, grad_a, mask=in_a)
        squares += tl.sum(diff * diff, axis=1)
        q = tl.load(q_ptr + rows, mask=batch, other=0.0)
        q_sum += q
        q_abs += tl.abs(q)
    lam = alpha / (tl.sum(q_abs, axis=0) / B)
    bc = bc_scale * (tl.sum(squares, axis=0) / denominator)
    for r0 in range(0, RA, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        tl.store(grad_q_ptr + rows, tl.where(rows < B, -lam / B, 0.0), mask=rows < RA)
    loss = bc - lam * (tl.sum(q_sum, axis=0) / B)
    if HAS_OTHER:
        loss += tl.load(other_loss_ptr + sid)
    tl.store(loss_ptr + sid, loss)
    tl.store(bc_ptr + sid, bc)
    tl.store(lam_ptr + sid, lam)


def actor_terms(a, actions, q1, alpha, w_bc, mean_squared, other_loss=None, other_grad=None, block_m=64,
                num_warps=4):
    """a (RA, m), q1 (RA,), RA >= B, their first B rows pi(s) and Q1(s, pi(s)) (the rest unused: zero
    gradient); actions (B, m) -> (loss, bc, lambda (0-d), d loss / d a (RA, m), d loss / d q1 (RA,)),
    lambda held constant. other_loss (0-d) and other_grad (RA, m; a column view is read in place), both or
    neither: another term's value and d / d a, added into the loss and d loss / d a. Seed axis: a leading S
    on every tensor, the scalars (S,)."""
    if (other_loss is None) != (other_grad is None):
        raise ValueError("actor_terms: give the other term's loss and its gradient w.r.t. a together, or neither")
    if other_grad is not None and other_grad.shape != a.shape:
        raise ValueError(f"actor_terms: other_grad has shape {tuple(other_grad.shape)}: it is d other / d a, "
                         f"a's shape {tuple(a.shape)}")
    single = actions.dim() == 2
    if single:
        a, actions, q1, other_loss, other_grad = add_seed_axis(a, actions, q1, other_loss, other_grad)
    S, B, m = actions.shape
    RA = a.shape[-2]
    if RA < B or q1.shape[-1] != RA:
        raise ValueError(f"actor_terms: a has {RA} rows and q1 {q1.shape[-1]}: both need the same count, at least "
                         f"the batch's {B}, pi(s) and Q1(s, pi(s)) on the batch first")
    loss, bc, lam = (torch.empty((S,), device=a.device, dtype=torch.float32) for _ in range(3))
    grad_a = torch.empty((S, RA, m), device=a.device, dtype=torch.float32)
    grad_q = torch.empty((S, RA), device=a.device, dtype=torch.float32)
    actions = unit_columns(actions)  # a batch's column view read in place
    has_other = other_grad is not None
    other_grad = unit_columns(other_grad) if has_other else grad_a  # the SBC rows' action columns in place
    other_loss = other_loss.contiguous() if has_other else loss
    _actor_terms_kernel[(S,)](a.contiguous(), actions, q1.contiguous(), other_loss, other_grad, loss, bc, lam,
                              grad_a, grad_q, RA, B, m, actions.stride(0), actions.stride(1), other_grad.stride(0),
                              other_grad.stride(1), float(alpha), float(w_bc), MEAN_SQUARED=bool(mean_squared),
                              HAS_OTHER=has_other, BLOCK_M=block_m, BLOCK_N=triton.next_power_of_2(m),
                              num_warps=num_warps)
    results = (loss, bc, lam, grad_a, grad_q)
    return tuple(x[0] for x in results) if single else results
