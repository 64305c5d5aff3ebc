"""Pure-PyTorch reference of every BDM kernel: the specification the Triton kernels are tested
against, and the CPU path of the `torch` backend.

Shapes: R rows, n = obs dim, m = action dim. Denoiser input rows are [x_t (n), s (n), c(t) (1), a (m)]
for the SSM denoiser and [x_t (n), c(t) (1)] for the data denoiser. `weights` is
Denoiser.weights(): (W1, b1, g1, beta1, W2, b2, g2, beta2, ..., W_out, b_out), Linear layout (out, in).
"""
import torch
import torch.nn.functional as F

from .kernels.seed_axis import add_seed_axis, check_stacked
from .kernels.small_mlp import split_weights
from .loss_terms import LossTerm
from .schedule import DiffusionSchedule, network_target, split_prediction

LAYER_NORM_EPS = 1e-5
SAMPLERS = ("ddim", "ddpm", "posterior_mean")


def noised_rows(x0, eps, t, s, a, schedule: DiffusionSchedule) -> torch.Tensor:
    """Denoiser input rows [q(x0, t, eps), s, c(t), a]: x0, eps, s (R, n), t (R,) int64, a (R, m);
    with s = a = None the data denoiser's rows [q(x0, t, eps), c(t)]. Seed axis: every argument with a
    leading S (t (S, R)) -> (S, R, width)."""
    x_t, c = schedule.q_sample(x0, t, eps), schedule.time_input(t)
    return torch.cat([x_t, c] if s is None else [x_t, s, c, a], dim=-1)


def _linear(x, w, b=None):
    """x (S, R, in) @ w (S, out, in)^T + b (S, out), seed by seed (one baddbmm) -> (S, R, out)."""
    if b is None:
        return torch.bmm(x, w.transpose(1, 2))
    return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))


def _layer_norm(x, g, beta):
    """LayerNorm over the last axis of x (S, R, H) with per-seed gain and bias g, beta (S, H)."""
    return torch.addcmul(beta.unsqueeze(1), F.layer_norm(x, x.shape[-1:], eps=LAYER_NORM_EPS), g.unsqueeze(1))


def _hidden_and_output(h_pre, weights):
    """From the first layer's pre-activation (S, R, H1): ReLU -> LayerNorm, remaining layers, output."""
    h = _layer_norm(torch.relu(h_pre), weights[2], weights[3])
    rest = weights[4:]
    while len(rest) > 2:
        w, b, g, beta = rest[:4]
        h = _layer_norm(torch.relu(_linear(h, w, b)), g, beta)
        rest = rest[4:]
    return _linear(h, rest[0], rest[1])


def denoiser_forward(rows: torch.Tensor, weights) -> torch.Tensor:
    """Denoiser MLP: rows (R, in_dim) -> (R, n), or with the seed axis (kernels/seed_axis.py) rows
    (S, R, in_dim) and weights stacked (S, ...) -> (S, R, n). Differentiable in rows and weights."""
    single = rows.dim() == 2
    if single:
        rows, weights = rows.unsqueeze(0), add_seed_axis(*weights)
    check_stacked(rows.shape[0], weights)
    out = _hidden_and_output(_linear(rows, weights[0], weights[1]), weights)
    return out[0] if single else out


def denoiser_forwards(rows_list, weights_list) -> list:
    """denoiser_forward of each network g on its rows_list[g] with its weights_list[g] -> [its output]: the
    Triton backend's one launch for such a group (fastbdm.ops.denoiser_forwards), network by network."""
    return [denoiser_forward(rows, weights) for rows, weights in zip(rows_list, weights_list)]


def small_mlp(x1, x2, weights, layout, layer_norm, members=1, out_scale=0.0) -> torch.Tensor:
    """The actor's or the twin critics' MLP (kernels/small_mlp.py) on rows [x1, x2]: x1 (R, D1), x2 (R, D2)
    or None; weights flat (kernels.small_mlp.split_weights) in layout "linear" (W (out, in), b (out,)) or
    "ensemble" (W (M, in, out), b, g, beta (M, 1, out)) -> (members, R, N_OUT); out_scale > 0: out_scale
    * tanh. Seed axis: x1, x2 (S, R, .), weights stacked (S, ...) -> (S, members, R, N_OUT)."""
    single = x1.dim() == 2
    if single:
        x1, x2 = add_seed_axis(x1, x2)
        weights = add_seed_axis(*weights)
    check_stacked(x1.shape[0], weights)
    matrices, biases, gains, shifts = split_weights(weights, layer_norm)
    if layout == "linear":  # (S, out, in) -> (S, 1, in, out), vectors (S, 1, 1, out)
        matrices, biases = [w.transpose(-1, -2)[:, None] for w in matrices], [b[:, None, None] for b in biases]
    else:  # the first `members` of (S, M, ...)
        matrices, biases, gains, shifts = ([w[:, :members] for w in ws] for ws in (matrices, biases, gains, shifts))
    h = (x1 if x2 is None else torch.cat([x1, x2], dim=-1))[:, None]  # (S, 1, R, D): shared by the members
    for i, (w, b) in enumerate(zip(matrices[:-1], biases[:-1])):
        h = torch.relu(h @ w + b)
        if layer_norm:
            h = F.layer_norm(h, h.shape[-1:], eps=LAYER_NORM_EPS) * gains[i] + shifts[i]
    out = h @ matrices[-1] + biases[-1]
    if out_scale > 0:
        out = out_scale * torch.tanh(out)
    return out[0] if single else out


@torch.no_grad()
def reverse_chain(weights, s, a, z, schedule: DiffusionSchedule, prediction="sample", sampler="ddim", noise=None):
    """The whole reverse-diffusion sampler of the (target) SSM denoiser, docs/ALGORITHM.md#samplers.

    s (R, n), a (R, m), z (R, n) start noise at level steps-1; s and a may also be lists of row segments
    (their rows one after another, split alike); noise (steps, R, n) is the DDPM per-level noise (drawn
    when None). Returns x0 samples (R, n). Seed axis (kernels/seed_axis.py):
    s, z (S, R, n), a (S, R, m), noise (S, steps, R, n), weights stacked (S, ...) -> (S, R, n).
    sampler: "ddim" (eta = 0), "ddpm" (ancestral), "posterior_mean" (research code, docs/ALGORITHM.md#departures-of-the-research-code item 1:
    levels steps-1..1, the network told level i, every scheduler coefficient taken at level i-1).
    The first layer's s, a and bias part is computed once per chain; per level only x and c change.
    """
    s, a = (x if isinstance(x, torch.Tensor) else torch.cat(list(x), -2) for x in (s, a))
    single = z.dim() == 2
    if single:
        s, a, z, noise = add_seed_axis(s, a, z, noise)
        weights = add_seed_axis(*weights)
    check_stacked(z.shape[0], weights)
    n = z.shape[2]
    w1, b1 = weights[0], weights[1]
    w_x, w_s, w_c, w_a = w1[..., :n], w1[..., n : 2 * n], w1[..., 2 * n], w1[..., 2 * n + 1 :]
    base = _linear(s, w_s) + _linear(a, w_a, b1)
    steps = schedule.steps
    if sampler == "ddpm" and noise is None:
        noise = torch.randn((z.shape[0], steps, *z.shape[1:]), device=z.device, dtype=z.dtype)
    levels = range(steps - 1, 0, -1) if sampler == "posterior_mean" else range(steps - 1, -1, -1)
    x = z
    for i in levels:
        c = 2.0 * i / steps - 1.0
        out = _hidden_and_output(_linear(x, w_x) + base + c * w_c.unsqueeze(1), weights)
        k = i - 1 if sampler == "posterior_mean" else i
        x0hat, epshat = split_prediction(
            prediction, out, x, schedule.sqrt_ab[k], schedule.sqrt_one_minus_ab[k]
        )
        if sampler == "ddim":
            x = schedule.sqrt_ab_prev[k] * x0hat + schedule.sqrt_one_minus_ab_prev[k] * epshat
        else:
            x = schedule.coef_x0[k] * x0hat + schedule.coef_xt[k] * x
            if sampler == "ddpm" and k > 0:
                x = x + schedule.posterior_std[k] * noise[:, k]
    return x[0] if single else x


def td_loss(pred, target1, y2, done, gamma: float) -> torch.Tensor:
    """BDM TD loss, docs/ALGORITHM.md#the-bdm-td-loss. pred (2R, n) = online outputs on [x1 rows; x2 rows];
    target1 (R, n) the first term's target; y2 (R, n) the target network's output on x2;
    done (R,) bool/float: on done rows the second term's target is target1 (absorbing terminal).
    Returns mean over rows and dims of (1-gamma)(p1 - target1)^2 + gamma (p2 - y2)^2. Seed axis: pred
    (S, 2R, n), target1, y2 (S, R, n), done (S, R) -> (S,) losses, each over its seed's rows."""
    rows = target1.shape[-2]
    p1, p2 = pred[..., :rows, :], pred[..., rows:, :]
    y2 = torch.where(done.bool().unsqueeze(-1), target1, y2)
    return ((1 - gamma) * (p1 - target1).square() + gamma * (p2 - y2).square()).mean(dim=(-2, -1))


# --- the critic side's losses (issue 14: fused in kernels/noising.py, kernels/td_loss.py) ---------------

def td_loss_term(pred, target1, y2, done, gamma: float) -> LossTerm:
    """td_loss as a LossTerm (the kernels' interface; no output gradient here)."""
    return LossTerm(td_loss(pred, target1, y2, done, gamma))


def td_and_denoising_terms(pred, target1, y2, done, gamma: float, out, x0, eps, t, schedule: DiffusionSchedule,
                           prediction: str):
    """(td_loss_term(pred, target1, y2, done, gamma), denoising_loss(out, x0, eps, t, schedule, prediction)):
    the BDM TD loss and the data denoiser's (one launch in the kernels)."""
    return td_loss_term(pred, target1, y2, done, gamma), denoising_loss(out, x0, eps, t, schedule, prediction)


@torch.no_grad()
def bdm_td_rows(s, a, s_next, a_next, samples, done, t, eps, schedule: DiffusionSchedule, prediction: str,
                mask_done: bool = True, data=None):
    """Every input of the BDM TD loss (docs/ALGORITHM.md#the-bdm-td-loss) but the networks' outputs:
    s, s_next, samples (R, n) the target chain's x0 on (s_next, a_next); a, a_next (R, m); done (R,);
    t (R,) int64; eps (R, n) -> (online rows (2R, 2n+1+m) = [q(s_next); q(s_f)] each with (s, c(t), a),
    target rows (R, 2n+1+m) = [q(s_f), s_next, c(t), a_next], target1 (R, n) = network_target of
    s_next, data rows (R, n+1) = noised_rows(x0, eps, t) of the data denoiser from data = (x0, t, eps) (None
    without data)), q(x) = q_sample(x, t, eps), s_f = where(done, s_next, samples) (samples alone with
    mask_done False: compat unmasked_terminals). Seed axis: every argument with a leading S."""
    s_f = torch.where(done.bool().unsqueeze(-1), s_next, samples) if mask_done else samples
    target_rows = noised_rows(s_f, eps, t, s_next, a_next, schedule)
    online_rows = noised_rows(torch.cat([s_next, s_f], -2), torch.cat([eps, eps], -2), torch.cat([t, t], -1),
                              torch.cat([s, s], -2), torch.cat([a, a], -2), schedule)
    target1 = network_target(prediction, s_next, eps, schedule.gather("sqrt_ab", t),
                             schedule.gather("sqrt_one_minus_ab", t))
    data_rows = None if data is None else noised_rows(data[0], data[2], data[1], None, None, schedule)
    return online_rows, target_rows, target1, data_rows


def critic_td_loss(q, q_target, next_action, data_next_action, rewards, dones, valid, gamma: float, w_bc: float,
                   broadcast_penalty: bool = False):
    """ReBRAC critic loss (docs/ALGORITHM.md#critic-loss) summed over the members, and the mean of q:
    q (members, B) the online critics at (s, a), differentiable; q_target (members, B) the target critics
    at (s', a'), q_next their min; next_action, data_next_action (B, m) a' and the dataset's next action;
    rewards, dones, valid (B,) -> (LossTerm, q mean 0-d).
    y = r + gamma (1 - done) (q_next - w_bc valid ||a' - a_data'||^2);
    broadcast_penalty (compat): y (B, B), row i's reward and q_next with row j's penalty. Seed axis:
    every argument with a leading S -> ((S,) loss, (S,) q mean)."""
    with torch.no_grad():
        q_next = q_target.min(-2).values
        penalty = w_bc * valid * (next_action - data_next_action).square().sum(-1)
        not_done = gamma * (1 - dones)
        if broadcast_penalty:
            y = rewards[..., :, None] + not_done[..., :, None] * (q_next[..., :, None] - penalty[..., None, :])
        else:
            y = rewards + not_done * (q_next - penalty)
    if broadcast_penalty:
        loss = (q[..., :, :, None] - y[..., None, :, :]).square().mean(dim=(-2, -1)).sum(-1)
    else:
        loss = (q - y.unsqueeze(-2)).square().mean(-1).sum(-1)
    return LossTerm(loss), q.detach().mean(dim=(-2, -1))


def denoising_loss(out, x0, eps, t, schedule: DiffusionSchedule, prediction: str) -> LossTerm:
    """The data denoiser's loss: mean over rows and dims of (out - network_target(x0, eps, t))^2; out
    (R, n) the network's output, differentiable; x0, eps (R, n), t (R,). Seed axis: a leading S -> (S,)."""
    target = network_target(prediction, x0, eps, schedule.gather("sqrt_ab", t),
                            schedule.gather("sqrt_one_minus_ab", t))
    return LossTerm((out - target).square().mean(dim=(-2, -1)))


def smoothed_action(action, normal, policy_noise: float, noise_clip: float, max_action: float) -> torch.Tensor:
    """TD3's target policy smoothing: clamp(action + clamp(policy_noise normal, -noise_clip, noise_clip),
    -max_action, max_action); action = pi'(s'), normal N(0, 1), both (..., m) (any leading axes)."""
    noise = (normal * policy_noise).clamp(-noise_clip, noise_clip)
    return (action + noise).clamp(-max_action, max_action)


def target_values(s, normal, actor_weights, critic_weights, layer_norm, members, max_action, policy_noise: float,
                  noise_clip: float):
    """TD3's target side: a' = smoothed_action(pi'(s'), normal, ...) and Q'(s', a') of the first `members`
    critics; s (R, n), normal (R, m), actor_weights small_mlp's layout "linear" (tanh scaled by max_action),
    critic_weights "ensemble" -> (a' (R, m), Q' (members, R)). Seed axis: a leading S on s, normal and the
    results, weights stacked (S, ...)."""
    pi = small_mlp(s, None, actor_weights, "linear", False, 1, max_action)[..., 0, :, :]
    action = smoothed_action(pi, normal, policy_noise, noise_clip, max_action)
    return action, small_mlp(s, action, critic_weights, "ensemble", layer_norm, members)[..., 0]

def policy_value_grads(grad_q, grad_a, s, actor_weights, critic_weights, layer_norm, max_action):
    """The actor's weights' gradients of grad_q . Q1(s, a) + grad_a . a at a = pi(s) (the actor loss's backward
    from its two outputs, Q1's weights constants): grad_q (R,), grad_a (R, m), s (R, n), the weights as
    target_values' -> a tuple in actor_weights' order. Seed axis: a leading S, weights stacked (S, ...)."""
    with torch.enable_grad():
        weights = [w.detach().requires_grad_() for w in actor_weights]
        a = small_mlp(s, None, weights, "linear", False, 1, max_action)[..., 0, :, :]
        q = small_mlp(s, a, [w.detach() for w in critic_weights], "ensemble", layer_norm, 1)[..., 0, :, 0]
        return torch.autograd.grad([q, a], weights, [grad_q, grad_a])

# --- the actor loss's terms (issue 14: kernels/state_bc.py, kernels/actor_terms.py) -----------------------

def sbc_states(s, normal) -> torch.Tensor:
    """The state-BC term's states S = [s; s_rand] (2B, n) from s (B, n): s_rand = mean + std * normal
    (normal (B, n)), or with normal None the standardised s (compat standardised_sbc_half); mean and the
    unbiased std per dim over the B rows. Seed axis: (S, B, n) -> (S, 2B, n)."""
    mean, std = s.mean(-2, keepdim=True), s.std(-2, keepdim=True)
    return torch.cat([s, (s - mean) / std if normal is None else mean + std * normal], dim=-2)


def sbc_rows(x0, eps, t, s, a, schedule: DiffusionSchedule):
    """The state-BC term's denoiser rows from one q(x0, t, eps): (E's [x_t, c(t)] (R, n+1), D''s
    [x_t, s, c(t), a] (R, 2n+1+m)); shapes and seed axis as noised_rows. Differentiable in a."""
    x_t, c = schedule.q_sample(x0, t, eps), schedule.time_input(t)
    return torch.cat([x_t, c], dim=-1), torch.cat([x_t, s, c, a], dim=-1)


def sbc_loss(e_out, d_out, t, schedule: DiffusionSchedule, scale: float, broadcast: bool) -> torch.Tensor:
    """scale * mean_rows(eta_t ||e_out - d_out||^2), eta_t = schedule.eta[t] / its mean over the rows;
    e_out, d_out (R, n), t (R,) int64. broadcast (compat broadcast_sbc_weights): the research code's (R, 1)
    weights times (R,) errors, an (R, R) outer product whose mean is mean(eta_t) mean(err): the level
    weighting lost. Seed axis: (S, R, n), t (S, R) -> (S,)."""
    eta = schedule.eta[t]
    eta = eta / eta.mean(-1, keepdim=True)
    err = (e_out - d_out).square().sum(-1)
    weighted = eta.mean(-1) * err.mean(-1) if broadcast else (eta * err).mean(-1)
    return scale * weighted


def sbc_loss_term(e_out, d_out, t, schedule: DiffusionSchedule, scale: float, broadcast: bool) -> LossTerm:
    """sbc_loss as a LossTerm (the kernels' interface; no output gradient here)."""
    return LossTerm(sbc_loss(e_out, d_out, t, schedule, scale, broadcast))


def actor_terms(a, actions, q1, alpha: float, w_bc: float, mean_squared: bool):
    """The actor loss's terms besides state-BC: a (RA, m), q1 (RA,) whose first B rows are pi(s) and
    Q1(s, pi(s)) (the rest unused), actions (B, m) -> (loss, bc, lambda): bc = w_bc mean_rows ||pi(s) - a||^2
    (mean_squared: w_bc mean over all elements, TD3+BC's), lambda = alpha / mean_rows |Q1| (detached),
    loss = -lambda mean_rows Q1 + bc, the means over the B rows. Seed axis: a leading S on every tensor -> (S,) each."""
    rows = actions.shape[-2]
    if a.shape[-2] > rows:  # else no slice: its backward would be a zero fill and a copy
        a, q1 = a[..., :rows, :], q1[..., :rows]
    squared = (a - actions).square()
    bc = w_bc * (squared.mean((-2, -1)) if mean_squared else squared.sum(-1).mean(-1))
    lam = alpha / q1.abs().mean(-1).detach()
    return -lam * q1.mean(-1) + bc, bc, lam
