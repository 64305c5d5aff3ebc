"""The two row-local chains of small MLPs fused (kernels/small_mlp.py): the target side (pi'(s'), its
smoothing, Q1', Q2'(s', a') in one launch: target_values) and the actor's backward through Q1 (the critic's
action gradient, grad_a added, the actor's deltas in one launch, then its weight gradients:
policy_value_backward), against reference.target_values and reference.policy_value_grads (itself torch
autograd through reference.small_mlp) on fresh random inputs, odd sizes, the seed axis S = 1 and 3, under
torch.func.vmap, and in TD3SBC against its torch backend.

Tolerances as tests/test_kernels_small_mlp.py's (precision "ieee": summation order only, assert_close_scaled).
"""
import pytest
import torch
from torch.func import vmap

from fastbdm import TD3SBC, TD3SBCConfig, ops, reference
from fastbdm.kernels.small_mlp import policy_value_backward, small_mlp_forward, target_values
from fastbdm.launch_count import LaunchCounter
from test_kernels_forward import assert_close_scaled
from test_kernels_small_mlp import N, M, small_weights

BLOCKS = dict(block_m=16, block_n=16, block_k=16)  # several row blocks and column chunks at these widths
BWD_BLOCKS = dict(block_m=16, block_h=16, block_k=16, block_r=16, block_i=16, block_j=16)
ROWS = 37
ACTOR_HIDDEN, CRITIC_HIDDEN = (32, 48), (48, 32, 32)  # unequal depths: each network its own layer count
MAX_ACTION, POLICY_NOISE, NOISE_CLIP = 0.7, 0.5, 0.3  # pi' up to +-0.7 plus noise up to +-0.3: both clamps bite


def networks(seeds, layer_norm, stored=2):
    """Detached random (actor weights "linear", critic weights "ensemble") with a leading seed axis when seeds."""
    actor = small_weights("linear", False, ACTOR_HIDDEN, N, M, seeds=seeds)
    critic = small_weights("ensemble", layer_norm, CRITIC_HIDDEN, N + M, 1, stored=stored, seeds=seeds)
    return [w.detach() for w in actor], [w.detach() for w in critic]


def lead(seeds):
    return () if seeds is None else (seeds,)


@pytest.mark.parametrize("seeds", [None, 1, 3])
@pytest.mark.parametrize("layer_norm", [True, False])
@pytest.mark.parametrize("members", [1, 2])
def test_target_values_match_the_reference(seeds, layer_norm, members):
    actor, critic = networks(seeds, layer_norm)
    s, normal = torch.randn(*lead(seeds), ROWS, N), torch.randn(*lead(seeds), ROWS, M)
    action, q = target_values(s, normal, actor, critic, layer_norm, members, MAX_ACTION, POLICY_NOISE, NOISE_CLIP,
                              "ieee", **BLOCKS)
    want_action, want_q = reference.target_values(s, normal, actor, critic, layer_norm, members, MAX_ACTION,
                                                  POLICY_NOISE, NOISE_CLIP)
    assert action.shape == want_action.shape == (*lead(seeds), ROWS, M)
    assert q.shape == want_q.shape == (*lead(seeds), members, ROWS)
    assert (want_action.abs() == MAX_ACTION).any()  # the clamps are exercised
    assert_close_scaled(action, want_action)
    assert_close_scaled(q, want_q)


def test_target_values_read_the_normals_as_a_column_view_and_reject_wrong_widths():
    """normal as a column view of a wider draw (UpdateNoise's fields are views of one flat draw) gives the
    contiguous result exactly; a critic that does not take [s, a] is a one-line error."""
    actor, critic = networks(None, True)
    s, draws = torch.randn(ROWS, N), torch.randn(ROWS, M + 3)
    normal = draws[:, 2:2 + M]
    got = target_values(s, normal, actor, critic, True, 2, MAX_ACTION, POLICY_NOISE, NOISE_CLIP, "ieee", **BLOCKS)
    want = target_values(s, normal.contiguous(), actor, critic, True, 2, MAX_ACTION, POLICY_NOISE, NOISE_CLIP, "ieee",
                         **BLOCKS)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    wrong = [w.detach() for w in small_weights("ensemble", True, CRITIC_HIDDEN, N + M + 1, 1)]
    with pytest.raises(ValueError, match="the critics take 24 = states \\+ actions"):
        target_values(s, normal, actor, wrong, True, 2, MAX_ACTION, POLICY_NOISE, NOISE_CLIP, "ieee")
    with pytest.raises(ValueError, match="one normal row per state row"):
        target_values(s, normal[1:], actor, critic, True, 2, MAX_ACTION, POLICY_NOISE, NOISE_CLIP, "ieee")


@pytest.mark.parametrize("seeds", [None, 1, 3])
@pytest.mark.parametrize("layer_norm", [True, False])
def test_policy_value_backward_matches_autograd(seeds, layer_norm):
    """The actor's weight gradients of grad_q . Q1(s, pi(s)) + grad_a . pi(s), from the forwards' saved
    activations, against torch autograd through reference.small_mlp; Q1 read from the first of two stored
    critics (the second's weights are different and must not enter)."""
    actor, critic = networks(seeds, layer_norm)
    s = torch.randn(*lead(seeds), ROWS, N)
    out, actor_acts = small_mlp_forward(s, None, actor, "linear", False, 1, MAX_ACTION, "ieee", save_activations=True,
                                        **BLOCKS)
    a = out[..., 0, :, :]
    _, critic_acts = small_mlp_forward(s, a, critic, "ensemble", layer_norm, 1, 0.0, "ieee", save_activations=True,
                                       **BLOCKS)
    grad_q, grad_a = torch.randn(*lead(seeds), ROWS), torch.randn(*lead(seeds), ROWS, M)
    got = policy_value_backward(grad_q, grad_a, s, actor, a, actor_acts, critic, critic_acts, layer_norm, MAX_ACTION,
                                "ieee", **BWD_BLOCKS)
    want = reference.policy_value_grads(grad_q, grad_a, s, actor, critic, layer_norm, MAX_ACTION)
    weights = [w.requires_grad_() for w in actor]  # the reference itself: autograd of the two outputs' sum
    a_ref = reference.small_mlp(s, None, weights, "linear", False, 1, MAX_ACTION)[..., 0, :, :]
    q_ref = reference.small_mlp(s, a_ref, critic, "ensemble", layer_norm, 1)[..., 0, :, 0]
    by_hand = torch.autograd.grad((grad_q * q_ref).sum() + (grad_a * a_ref).sum(), weights)
    assert len(got) == len(want) == len(actor)
    for g, w, h in zip(got, want, by_hand):
        assert g.shape == w.shape
        assert_close_scaled(g, w)
        assert_close_scaled(w, h)


def test_policy_value_backward_refuses_a_critic_saved_with_two_members():
    """The kernel reads Q1's saved forward as one member: a forward of both critics is a one-line error (on a GPU
    it would read member 2's statistics as member 1's)."""
    actor, critic = networks(None, True)
    s = torch.randn(ROWS, N)
    out, actor_acts = small_mlp_forward(s, None, actor, "linear", False, 1, MAX_ACTION, "ieee", save_activations=True,
                                        **BLOCKS)
    a = out[0]
    _, both = small_mlp_forward(s, a, critic, "ensemble", True, 2, 0.0, "ieee", save_activations=True, **BLOCKS)
    with pytest.raises(ValueError, match="members=1"):
        policy_value_backward(torch.randn(ROWS), torch.randn(ROWS, M), s, actor, a, actor_acts, critic, both, True,
                              MAX_ACTION, "ieee", **BWD_BLOCKS)


def test_the_ops_vmap_over_seeds_and_pass_opcheck():
    """ops.target_values and ops.policy_value_grads under torch.func.vmap (SeedBatch's frozen_outputs) give the
    stacked call's results in one launch each; opcheck (schema, fake tensors) with and without the seed axis."""
    seeds = 3
    actor, critic = networks(seeds, True)
    s, normal = torch.randn(seeds, ROWS, N), torch.randn(seeds, ROWS, M)
    args = (True, 2, MAX_ACTION, POLICY_NOISE, NOISE_CLIP)
    with LaunchCounter() as counter:
        mapped = vmap(lambda *x: ops.target_values(*x, *args, precision="ieee"))(s, normal, actor, critic)
    assert counter.ops == {("other", "triton::_target_values_kernel"): 1}
    stacked = ops.target_values(s, normal, actor, critic, *args, precision="ieee")
    assert all(torch.equal(g, w) for g, w in zip(mapped, stacked))

    def grads(s, actor, critic, grad_q, grad_a):
        policy = ops.small_mlp_saved(s, None, actor, "linear", False, 1, MAX_ACTION, "ieee")
        q1 = ops.small_mlp_saved(s, policy.out[0], critic, "ensemble", True, 1, 0.0, "ieee")
        return ops.policy_value_grads(grad_q, grad_a, s, actor, policy, critic, q1, True, MAX_ACTION, "ieee")

    grad_q, grad_a = torch.randn(seeds, ROWS), torch.randn(seeds, ROWS, M)
    mapped = vmap(grads)(s, actor, critic, grad_q, grad_a)
    want = reference.policy_value_grads(grad_q, grad_a, s, actor, critic, True, MAX_ACTION)
    for g, w in zip(mapped, want):
        assert_close_scaled(g, w)
    for k in (None, 0):
        pick = (lambda x: x) if k is None else (lambda x: x[k])
        picked = [pick(w) for w in actor], [pick(w) for w in critic]
        torch.library.opcheck(ops._target_values, (pick(s), pick(normal), *picked, *args, "ieee"))
        policy = ops.small_mlp_saved(pick(s), None, picked[0], "linear", False, 1, MAX_ACTION, "ieee")
        q1 = ops.small_mlp_saved(pick(s), policy.out[..., 0, :, :], picked[1], "ensemble", True, 1, 0.0, "ieee")
        torch.library.opcheck(ops._policy_value_grads, (
            pick(grad_q), pick(grad_a), pick(s), picked[0], policy.out[..., 0, :, :], policy.stats, list(policy.pres),
            picked[1], q1.stats, list(q1.pres), True, MAX_ACTION, "ieee"))


@pytest.mark.parametrize("layer_norm", [True, False])
def test_td3sbc_target_values_on_triton_are_the_torch_modules_target_action_and_critics(layer_norm):
    """TD3SBC.target_values (frozen_outputs' target side): one launch on the triton backend, the torch backend's
    target_action and target critics (the modules' own torch code) up to rounding; target_action alone keeps
    working on both."""
    n, m, rows = 5, 3, 21
    kwargs = dict(actor_hidden=(16, 24), critic_hidden=(16, 16, 24), critic_layer_norm=layer_norm, steps=3)
    device = torch.empty(0).device  # the GPU under FASTBDM_TEST_DEVICE=cuda
    agents = {backend: TD3SBC(n, m, 0.8, TD3SBCConfig.for_algo("rebrac", backend=backend, precision="ieee", **kwargs),
                              device) for backend in ("torch", "triton")}
    agents["triton"].load_state_dict(agents["torch"].state_dict())
    s, normal = torch.randn(rows, n), 3 * torch.randn(rows, m)
    with LaunchCounter() as counter:
        action, q = agents["triton"].target_values(s, normal)
    assert counter.ops == {("other", "triton::_target_values_kernel"): 1}
    want_action, want_q = agents["torch"].target_values(s, normal)
    assert q.shape == want_q.shape == (2, rows) and not q.requires_grad
    torch.testing.assert_close(action, want_action, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q, want_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(agents["triton"].target_action(s, normal), want_action, rtol=1e-5, atol=1e-6)
