"""kernels/small_mlp.py (the actor and the twin critics fused) against reference.small_mlp, and the
networks on the triton backend against their torch code.

Exact-arithmetic tests (precision "ieee", and every fp32 tl.dot in the CPU interpreter): the kernels and
the reference differ only in summation order, fp32 rounding of ~1e-7 relative per result (K <= 64
terms, four layers), so rtol 1e-5 of the result's magnitude (assert_close_scaled) leaves two orders of
room while a wrong weight, member, seed or LayerNorm term moves results by O(1) relative.

The shipped precision "tf32" (test_small_mlp_tf32_default_blocks) follows tests/test_kernels_tf32.py's
derivation with four layers (three hidden + output) instead of three: TOL_SMALL = sqrt(4) EPS_1 for the
outputs and the gradients behind no ReLU gate (the output layer's W and b), and for the gradients
behind a gate the flipped-gate fraction of three gated layers, sqrt(2 rho_0 EPS_1 (1 + sqrt 2 + sqrt 3)).
In the interpreter those dots are exact, so there the test checks the default blocks and shapes only.
"""
import math
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch
from torch.func import grad, vmap
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import ON_GPU
from fastbdm import ops, reference
from fastbdm.kernels import small_mlp
from fastbdm.kernels.small_mlp import small_mlp_backward, small_mlp_forward
from fastbdm.launch_count import LaunchCounter
from fastbdm.networks import Actor, TwinCritic
from test_kernels_forward import assert_close_scaled
from test_kernels_tf32 import EPS_1

BLOCKS = dict(block_m=16, block_n=16, block_k=16)  # several chunks at the test's widths
BWD_BLOCKS = dict(block_m=16, block_h=16, block_k=16, block_r=16, block_i=16, block_j=16)
N, M = 17, 6  # hopper-like obs and act widths: both narrower than a 16-wide tl.dot, padded by masks


def small_weights(layout, layer_norm, hidden, d_in, n_out, stored=2, seeds=None):
    """Random weights of `layout` (reference.small_mlp), requiring grad; a leading seed axis when seeds."""
    lead, weights, dims = (() if seeds is None else (seeds,)), [], [d_in, *hidden, n_out]
    for i, (k, n) in enumerate(zip(dims[:-1], dims[1:])):
        if layout == "ensemble":
            weights += [torch.randn(*lead, stored, k, n) / k ** 0.5, 0.1 * torch.randn(*lead, stored, 1, n)]
            vector = (*lead, stored, 1, n)
        else:
            weights += [torch.randn(*lead, n, k) / k ** 0.5, 0.1 * torch.randn(*lead, n)]
            vector = (*lead, n)
        if layer_norm and i < len(hidden):
            weights += [1 + 0.1 * torch.randn(vector), 0.1 * torch.randn(vector)]
    return [w.requires_grad_() for w in weights]


CASES = {  # (layout, layer_norm, members evaluated of 2 stored, out_scale, x2 width, n_out)
    "critics": ("ensemble", True, 2, 0.0, M, 1),
    "q1": ("ensemble", True, 1, 0.0, M, 1),
    "critics_no_layer_norm": ("ensemble", False, 2, 0.0, M, 1),
    "actor": ("linear", False, 1, 0.7, 0, M),
}


@pytest.mark.parametrize("seeds", [None, 1, 3])
@pytest.mark.parametrize("case", CASES)
def test_small_mlp_forward_and_backward(case, seeds):
    layout, layer_norm, members, scale, d2, n_out = CASES[case]
    rows, lead = 37, (() if seeds is None else (seeds,))
    weights = small_weights(layout, layer_norm, (32, 48, 32), N + d2, n_out, seeds=seeds)
    x1 = torch.randn(*lead, rows, N, requires_grad=True)
    x2 = (torch.rand(*lead, rows, d2) * 2 - 1).requires_grad_() if d2 else None
    expected = reference.small_mlp(x1, x2, weights, layout, layer_norm, members, scale)
    got, acts = small_mlp_forward(x1, x2, weights, layout, layer_norm, members, scale, "ieee",
                                  save_activations=True, **BLOCKS)
    assert got.shape == expected.shape == (*lead, members, rows, n_out)
    assert_close_scaled(got, expected.detach())
    grad_out = torch.randn_like(expected)
    inputs = [x for x in (x1, x2) if x is not None]
    want = torch.autograd.grad(expected, [*inputs, *weights], grad_out, allow_unused=True)
    gx1, gx2, grads = small_mlp_backward(grad_out, x1, x2, weights, got, acts, layout, layer_norm, members, scale,
                                         need_x1=True, need_x2=x2 is not None, precision="ieee", **BWD_BLOCKS)
    for got_grad, want_grad in zip([g for g in (gx1, gx2) if g is not None] + list(grads), want):
        want_grad = torch.zeros_like(got_grad) if want_grad is None else want_grad  # Q1 alone: Q2's are 0
        assert got_grad.shape == want_grad.shape
        assert_close_scaled(got_grad, want_grad)
    if layout == "ensemble" and members < 2:  # the member not evaluated gets exactly zero gradients
        assert all(g[..., 1, :, :].abs().max() == 0 for g in grads)


@pytest.mark.parametrize("seeds", [None, 3])
@pytest.mark.parametrize("case", ["critics", "actor"])
def test_column_views_of_a_row_matrix_are_read_in_place(case, seeds):
    """x1, x2 as column views of a batch's (R, width) row matrix (fastbdm.replay; a seed axis S in front):
    the kernels read them with their strides, no copy launched, and give exactly the results of contiguous
    inputs (the same arithmetic in the same order)."""
    layout, layer_norm, members, scale, d2, n_out = CASES[case]
    lead, rows = (() if seeds is None else (seeds,)), 37
    weights = [w.detach() for w in small_weights(layout, layer_norm, (32, 48, 32), N + d2, n_out, seeds=seeds)]
    matrix = torch.randn(*lead, rows, N + 3 + d2)
    x1, x2 = matrix[..., 1:N + 1], (matrix[..., N + 3:] if d2 else None)
    assert not x1.is_contiguous()
    dense = [x1.contiguous(), None if x2 is None else x2.contiguous()]
    with LaunchCounter() as counter:
        out, acts = small_mlp_forward(x1, x2, weights, layout, layer_norm, members, scale, "ieee",
                                      save_activations=True, **BLOCKS)
        grad_out = torch.ones_like(out)
        got = small_mlp_backward(grad_out, x1, x2, weights, out, acts, layout, layer_norm, members, scale,
                                 need_x1=True, need_x2=x2 is not None, precision="ieee", **BWD_BLOCKS)
    assert not any(op.startswith("aten::clone") or op.startswith("aten::_to_copy") for _, op in counter.ops)
    want_out, want_acts = small_mlp_forward(*dense, weights, layout, layer_norm, members, scale, "ieee",
                                            save_activations=True, **BLOCKS)
    want = small_mlp_backward(grad_out, *dense, weights, want_out, want_acts, layout, layer_norm, members, scale,
                              need_x1=True, need_x2=x2 is not None, precision="ieee", **BWD_BLOCKS)
    assert torch.equal(out, want_out)
    for g, w in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]]):
        assert (g is None and w is None) or torch.equal(g, w)


def test_small_mlp_backward_only_what_is_asked():
    """The action gradient alone (the actor loss through the critic) skips the weight-gradient launch."""
    layout, layer_norm, members, scale, d2, n_out = CASES["q1"]
    weights = small_weights(layout, layer_norm, (32, 32), N + d2, n_out)
    s, a = torch.randn(37, N), torch.rand(37, d2) * 2 - 1
    out, acts = small_mlp_forward(s, a, weights, layout, layer_norm, members, scale, "ieee", save_activations=True)
    gx1, gx2, grads = small_mlp_backward(torch.ones_like(out), s, a, weights, out, acts, layout, layer_norm, members,
                                         need_x2=True, need_weights=False, precision="ieee")
    assert gx1 is None and grads is None
    a = a.requires_grad_()
    want, = torch.autograd.grad(reference.small_mlp(s, a, weights, layout, layer_norm, members).sum(), a)
    assert_close_scaled(gx2, want)


def test_small_mlp_op_vmaps_over_seeds():
    """ops.small_mlp under torch.func.vmap and grad (SeedBatch's use): one stacked launch per op, the
    same values and gradients as seed-by-seed calls."""
    seeds, rows = 3, 21
    weights = [w.detach() for w in small_weights("ensemble", True, (32, 32), N + M, 1, seeds=seeds)]
    s, a = torch.randn(seeds, rows, N), torch.rand(seeds, rows, M) * 2 - 1

    def loss(ws, s, a):
        q = ops.small_mlp(s, a, ws, "ensemble", True, 2, precision="ieee")
        return q.square().mean() + ops.small_mlp(s, a, ws, "ensemble", True, 1, precision="ieee").mean()

    grads = vmap(grad(loss, argnums=(0, 2)))(weights, s, a)
    for k in range(seeds):
        single = grad(loss, argnums=(0, 2))([w[k] for w in weights], s[k], a[k])
        for got, want in zip([*grads[0], grads[1]], [*single[0], single[1]]):
            assert_close_scaled(got[k], want)


@pytest.mark.parametrize("layer_norm", [True, False])
def test_networks_on_the_triton_backend_match_their_torch_code(layer_norm):
    """Actor and TwinCritic (both members, Q1 alone) forward, weight and action gradients."""
    torch.manual_seed(1)
    critic = TwinCritic(N, M, (32, 32), layer_norm=layer_norm)
    fused = TwinCritic(N, M, (32, 32), layer_norm=layer_norm, backend="triton", precision="ieee")
    fused.load_state_dict(critic.state_dict())
    actor, fused_actor = Actor(N, M, 0.5, (32, 32)), Actor(N, M, 0.5, (32, 32), backend="triton", precision="ieee")
    fused_actor.load_state_dict(actor.state_dict())
    s = torch.randn(37, N)
    for net, a_net in ((critic, actor), (fused, fused_actor)):
        net.zero_grad(), a_net.zero_grad()
        a = a_net(s)
        (net(s, a.detach()).square().mean() - net(s, a, members=1).mean()).backward()
    torch.testing.assert_close(fused_actor(s), actor(s), rtol=1e-5, atol=1e-6)
    for p, q in [*zip(fused.parameters(), critic.parameters()), *zip(fused_actor.parameters(), actor.parameters())]:
        assert_close_scaled(p.grad, q.grad)


class _Launches:
    """A kernel whose launches (kernel[grid](...)) are counted in `counts` under `name`."""

    def __init__(self, kernel, counts, name):
        self.kernel, self.counts, self.name = kernel, counts, name

    def __getitem__(self, grid):
        self.counts[self.name] += 1
        return self.kernel[grid]


class _AtenOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_a_whole_network_per_launch(monkeypatch):
    """The twin critics (three hidden layers, LayerNorm) forward in one launch and backward in two, the
    action gradient alone (the actor loss) in one; no torch matmul, ReLU or LayerNorm around them."""
    launches = Counter()
    for name in ("_forward_kernel", "_backward_deltas_kernel", "_weight_grads_kernel"):
        monkeypatch.setattr(small_mlp, name, _Launches(getattr(small_mlp, name), launches, name))
    critic = TwinCritic(N, M, (32, 32, 32), backend="triton", precision="ieee")
    s, a = torch.randn(37, N), (torch.rand(37, M) * 2 - 1).requires_grad_()
    with _AtenOps() as aten:
        critic(s, a.detach()).square().mean().backward()
    assert launches == {"_forward_kernel": 1, "_backward_deltas_kernel": 1, "_weight_grads_kernel": 1}
    assert not {"mm", "bmm", "addmm", "baddbmm", "relu", "native_layer_norm", "cat"} & set(aten.names)
    launches.clear()
    critic.requires_grad_(False)
    torch.autograd.grad(critic(s, a, members=1).mean(), a)
    assert launches == {"_forward_kernel": 1, "_backward_deltas_kernel": 1}


TOL_SMALL = 2 * EPS_1
TOL_SMALL_GATED = math.sqrt(2 / math.sqrt(2 * math.pi) * EPS_1 * (1 + math.sqrt(2) + math.sqrt(3)))


def relative(got, exact):
    return ((got.double() - exact).norm() / exact.norm()).item()


@pytest.mark.parametrize("case", ["critics", "actor"])
def test_small_mlp_tf32_default_blocks(case):
    """The shipped configuration: precision "tf32", default blocks, hidden 3 x 256, against float64."""
    layout, layer_norm, members, scale, d2, n_out = CASES[case]
    rows = 1024 if ON_GPU else 96
    weights = [w.detach() for w in small_weights(layout, layer_norm, (256, 256, 256), N + d2, n_out)]
    x1, x2 = torch.randn(rows, N), (torch.rand(rows, d2) * 2 - 1) if d2 else None
    exact_w = [w.double().requires_grad_() for w in weights]
    exact_x = [None if x is None else x.double().requires_grad_() for x in (x1, x2)]
    exact = reference.small_mlp(*exact_x, exact_w, layout, layer_norm, members, scale)
    got, acts = small_mlp_forward(x1, x2, weights, layout, layer_norm, members, scale, "tf32", save_activations=True)
    assert relative(got, exact) < TOL_SMALL
    grad_out = torch.randn(exact.shape, dtype=torch.float64)
    wanted = [x for x in exact_x if x is not None] + exact_w
    want = torch.autograd.grad(exact, wanted, grad_out)
    gx1, gx2, grads = small_mlp_backward(grad_out.float(), x1, x2, weights, got, acts, layout, layer_norm, members,
                                         scale, need_x1=True, need_x2=x2 is not None, precision="tf32")
    got_grads = [g for g in (gx1, gx2) if g is not None] + list(grads)
    behind_no_gate = len(got_grads) - 2  # W_out, b_out
    for i, (g, w) in enumerate(zip(got_grads, want)):
        assert relative(g, w) < (TOL_SMALL if i >= behind_no_gate else TOL_SMALL_GATED), i


SM90_COMPILE = r"""
import os, subprocess, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastbdm.kernels.small_mlp import (_backward_deltas_kernel, _forward_kernel, _policy_value_deltas_kernel,
                                       _target_values_kernel, _weight_grads_kernel)

L = 3  # hidden layers: the tuples of per-layer pointers (L, or L + 1 with the output layer) and widths (L + 2)
LONG = {"w_ptrs": L + 1, "b_ptrs": L + 1, "dw_ptrs": L + 1, "db_ptrs": L + 1, "aw_ptrs": L + 1, "ab_ptrs": L + 1,
        "cw_ptrs": L + 1, "cb_ptrs": L + 1, "widths": L + 2, "actor_widths": L + 2, "critic_widths": L + 2}
FLOATS = ("eps", "out_scale", "max_action", "policy_noise", "noise_clip")
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")

def compile_sm90(fn, constexprs, label, num_warps=4, num_stages=2):
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):  # R = 1024 and every width a multiple of 16: divisibility hints
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("x_strides", "strides"):  # the inputs' seed and row strides: no divisibility assumed
            sig[name] = ("i32",) * 4
        elif name.endswith("_ptrs") or name.endswith("widths"):
            count = LONG.get(name, L)
            sig[name] = tuple(["i32" if name.endswith("widths") else "*fp32"] * count)
            attrs.update({(i, k): [["tt.divisibility", 16]] for k in range(count)})
        else:
            sig[name] = "*fp32" if name.endswith("_ptr") else "fp32" if name in FLOATS else "i32"
            if name.endswith("_ptr") or name == "R":
                attrs[(i,)] = [["tt.divisibility", 16]]
    kernel = triton.compile(ASTSource(fn, sig, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=num_warps, num_stages=num_stages))
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True, text=True,
                               check=True).stdout.strip().splitlines()[-1]
    print(fn.__name__, constexprs["PRECISION"], label,
          usage.split("CONSTANT")[0].strip(), "shared", kernel.metadata.shared)
    assert "LOCAL:0 " in usage, (fn.__name__, usage)  # no register spills
    assert kernel.metadata.shared < 200 * 1024, (fn.__name__, kernel.metadata.shared)  # sm_90: 227 KB per block

NETS = ((True, True, False), (False, False, True))  # (ENSEMBLE, LAYER_NORM, TANH): the critics, the actor
NAMES = {True: "critics", False: "actor"}
for (ensemble, layer_norm, tanh), precision in [*((net, "tf32") for net in NETS), (NETS[0], "bf16")]:
    net, label = dict(NUM_HIDDEN=L, ENSEMBLE=ensemble, LAYER_NORM=layer_norm, PRECISION=precision), NAMES[ensemble]
    compile_sm90(_forward_kernel, dict(net, TANH=tanh, SAVE=True, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, BLOCK_O=16),
                 label)
    compile_sm90(_backward_deltas_kernel, dict(net, TANH=tanh, NEED_X1=False, NEED_X2=ensemble, BLOCK_M=32,
                                               BLOCK_H=64, BLOCK_K=32, BLOCK_O=16, BLOCK_D=32), label)
    compile_sm90(_weight_grads_kernel, dict(net, BLOCK_R=32, BLOCK_I=32, BLOCK_J=64, BLOCK_O=16), label)
# the two chains (actor and critics, three hidden layers each): the target side, the actor's backward through Q1
chains = dict(ACTOR_HIDDEN=L, CRITIC_HIDDEN=L, LAYER_NORM=True, BLOCK_A=16, BLOCK_Q=16, PRECISION="tf32")
compile_sm90(_target_values_kernel, dict(chains, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32), "target side")
compile_sm90(_policy_value_deltas_kernel, dict(chains, BLOCK_M=32, BLOCK_H=64, BLOCK_K=32), "critic then actor")
"""


def test_small_mlp_kernels_compile_for_sm90():
    """Forward, deltas and weight-gradient kernels of the critics and the actor at their defaults (three
    hidden layers, tf32; the critics also bf16), and the two chains' kernels (target_values, the deltas of
    policy_value_backward), compile for sm_90 offline with no register spills and
    shared memory < 200 KB; the registers and shared memory are printed (pytest -s)."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run([sys.executable, "-c", SM90_COMPILE], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout)
    assert done.stdout.count("REG:") == 11


def test_bf16_is_the_denoisers_precision_only():
    """precision "bf16" (GPU) puts the denoisers' kernels on bf16; the actor and critics keep fp32 operands
    with TF32 dots, as torch's matmuls gave them before they were fused."""
    from fastbdm import TD3SBC, TD3SBCConfig

    agent = TD3SBC(N, M, config=TD3SBCConfig(actor_hidden=(32,), critic_hidden=(32,), denoiser_hidden=(32, 32),
                                             backend="triton", precision="bf16"))
    assert agent.bdm.precision == "bf16"
    assert (agent.actor.precision, agent.critic.precision, agent.actor_target.precision) == ("tf32",) * 3
