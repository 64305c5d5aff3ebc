"""The weight-stationary reverse chain (kernels/weight_stationary_chain.py) against fastbdm.reference and
against today's chain, in the CPU interpreter at small sizes; compiled on a GPU (FASTBDM_TEST_DEVICE=cuda)
the persistent orchestration against the staged one and float64 at the paper's width.

Sizes: n = 11, m = 3 (input width 26), R = 37, hidden (48, 40): with block_ns = 16 and block_m = 16 the
staged chain has P_c = 3 column blocks (the last one masked: 40 = 16 + 16 + 8) and 3 row groups (the last
partial), so partial LayerNorm statistics are merged across programs and rows are exchanged between
them. The persistent orchestration runs in the interpreter only as one program a seed (block_ns >= H2,
rows_per_group >= R): a barrier among several programs deadlocks there.

Tolerances: the interpreter's tl.dot is exact fp32, so the kernels differ from the reference in
summation order only (the partial statistics merged per column block; the LayerNorm fold's
rstd (h W'^T - mu colsum(W')) instead of LN(h) W^T): test_kernels_forward's rtol 1e-5 of the output's
magnitude. On a GPU at tf32: test_kernels_tf32's derivation, with layer 2's operands uncentred (the
fold rounds h, not h - mu): its error grows by sqrt(E h^2 / var h) = (1 - 1/pi)^-1/2 for post-ReLU h
of a zero-mean Gaussian pre-activation, TOL = 2 sqrt(2 + 1 / (1 - 1/pi)) eps_1.
"""
import importlib.util
import math
import os

import pytest
import torch

from fastbdm import ops, reference as ref
from fastbdm.kernels.reverse_chain import reverse_chain
from fastbdm.kernels.weight_stationary_chain import MAX_HIDDEN, chain_design, weight_stationary_chain
from fastbdm.schedule import DiffusionSchedule
from test_kernels_forward import assert_close_scaled, denoiser_weights, nan_like
from test_kernels_seeds import chain_args, stacked_weights
from test_kernels_tf32 import EPS_1, chain, paper_problem, relative_error

N, M, R, HIDDEN, STEPS = 11, 3, 37, (48, 40), 4
STAGED = dict(orchestration="staged", block_ns=16, rows_per_group=16, block_m=16, block_n=32, block_k=32)
PERSISTENT = dict(orchestration="persistent", block_ns=64, rows_per_group=48, block_m=16, block_n=32, block_k=32)
ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
TOL_CHAIN_TF32 = 2 * math.sqrt(2 + 1 / (1 - 1 / math.pi)) * EPS_1


def problem(seeds):
    """Stacked weights (S, ...) and per-seed tuples, schedule, s, z (S, R, n), a (S, R, m), noise (S, steps, R, n)."""
    weights, singles = stacked_weights(seeds)
    s, z = torch.randn(2, seeds, R, N)
    return weights, singles, DiffusionSchedule(STEPS), s, z, torch.randn(seeds, R, M), torch.randn(seeds, STEPS, R, N)


def ws_chain(weights, s, a, z, sched, prediction, sampler, noise, blocks):
    out = nan_like(z.shape)
    got = weight_stationary_chain(weights, s, a, z, *chain_args(sched), prediction, sampler, noise, out=out,
                                  precision="ieee", **blocks)
    assert got is out
    return got


@pytest.mark.parametrize("prediction, sampler", [("sample", "ddim"), ("epsilon", "ddpm"), ("v", "posterior_mean"),
                                                 ("sample", "ddpm")])
@pytest.mark.parametrize("blocks", [STAGED, PERSISTENT], ids=["staged", "persistent"])
def test_matches_reference(prediction, sampler, blocks):
    weights, _, sched, s, z, a, noise = problem(1)
    want = ref.reverse_chain(weights, s, a, z, sched, prediction, sampler, noise)
    assert_close_scaled(ws_chain(weights, s, a, z, sched, prediction, sampler, noise, blocks), want)


@pytest.mark.parametrize("seeds", [1, 3])
def test_seed_axis(seeds):
    """S seeds stacked: the reference on the stacked inputs; each seed bitwise its single-seed call."""
    weights, singles, sched, s, z, a, noise = problem(seeds)
    got = ws_chain(weights, s, a, z, sched, "v", "ddpm", noise, STAGED)
    assert_close_scaled(got, ref.reverse_chain(weights, s, a, z, sched, "v", "ddpm", noise))
    for k in range(seeds):
        single = weight_stationary_chain(singles[k], s[k], a[k], z[k], *chain_args(sched), "v", "ddpm", noise[k],
                                         precision="ieee", **STAGED)
        assert torch.equal(got[k], single)
    persistent = ws_chain(weights, s, a, z, sched, "v", "ddpm", noise, PERSISTENT)
    assert_close_scaled(persistent, got)


def test_persistent_equals_staged_with_one_group():
    """With the same partition (one program a seed) the two orchestrations run the same tile functions in
    the same order: bitwise equal."""
    weights, _, sched, s, z, a, noise = problem(3)
    staged = ws_chain(weights, s, a, z, sched, "epsilon", "ddim", noise, dict(PERSISTENT, orchestration="staged"))
    assert torch.equal(ws_chain(weights, s, a, z, sched, "epsilon", "ddim", noise, PERSISTENT), staged)


def test_agrees_with_todays_chain():
    weights, _, sched, s, z, a, noise = problem(1)
    today = reverse_chain(weights, s, a, z, *chain_args(sched), "sample", "ddpm", noise, precision="ieee",
                          block_m=64, block_n=64, block_k=64)
    assert_close_scaled(ws_chain(weights, s, a, z, sched, "sample", "ddpm", noise, STAGED), today)


def test_ddpm_ignores_level0_noise():
    weights, _, sched, s, z, a, noise = problem(1)
    noise[:, 0] = float("nan")
    got = ws_chain(weights, s, a, z, sched, "sample", "ddpm", noise, STAGED)
    assert_close_scaled(got, ref.reverse_chain(weights, s, a, z, sched, "sample", "ddpm", noise))


def test_wide_input_layer_and_large_layernorm_mean():
    """H1 = 96 (not a power of two: the slice's masked K), first-layer bias 100 (LayerNorm input mean ~100
    against std ~0.6): the fold's mu colsum(W') cancels a large term; rtol 1e-4 as in test_kernels_forward."""
    weights = denoiser_weights(N, M, (96, 40), offset=100.0)
    sched = DiffusionSchedule(STEPS)
    s, z = torch.randn(2, R, N)
    a = torch.randn(R, M)
    got = ws_chain(weights, s, a, z, sched, "sample", "ddim", None, STAGED)
    assert_close_scaled(got, ref.reverse_chain(weights, s, a, z, sched, "sample", "ddim"), rtol=1e-4)


def test_persistent_refuses_several_programs_in_the_interpreter():
    if ON_GPU:
        pytest.skip("the interpreter's refusal; on a GPU the persistent grid runs")
    weights, _, sched, s, z, a, noise = problem(1)
    with pytest.raises(ValueError, match="deadlocks in Triton's CPU interpreter"):
        ws_chain(weights, s, a, z, sched, "sample", "ddim", noise, dict(STAGED, orchestration="persistent"))


def test_op_dispatch(monkeypatch):
    """fastbdm::reverse_chain runs the design FASTBDM_CHAIN names (the interpreter's default: rows)."""
    weights, _, sched, s, z, a, noise = problem(1)
    single = [w[0] for w in weights]
    want = ref.reverse_chain(single, s[0], a[0], z[0], sched, "sample", "ddim")
    assert chain_design(z.device, R, 1, HIDDEN[0], "ieee") == ("weight_stationary" if ON_GPU else "rows")
    monkeypatch.setenv("FASTBDM_CHAIN", "weight_stationary")
    assert_close_scaled(ops.with_precision("ieee").reverse_chain(single, s[0], a[0], z[0], sched), want)
    monkeypatch.setenv("FASTBDM_CHAIN", "fast")
    with pytest.raises(ValueError, match="FASTBDM_CHAIN must be one of"):
        ops.with_precision("ieee").reverse_chain(single, s[0], a[0], z[0], sched)


@pytest.mark.parametrize("orchestration", ["staged", "persistent"] if ON_GPU else ["staged"])
def test_default_blocks_at_the_paper_width(orchestration):
    """hidden 512 at the shipped blocks and precision (BLOCK_NS = 64: P_c = 8; BLOCK_M = 32; tf32) against
    float64; in the interpreter 20 rows and 2 levels (test_kernels_tf32's sizes), compiled 1024 rows, T = 10."""
    rows, steps = (20, 2) if not ON_GPU else (1024, 10)
    weights, _, _, s, a, z = paper_problem(rows)
    sched = DiffusionSchedule(steps)
    want = chain([w.double() for w in weights], s.double(), a.double(), z.double(), sched.double())
    got = weight_stationary_chain(weights, s, a, z, *chain_args(sched), "sample", "ddim", orchestration=orchestration)
    assert relative_error(got, want) <= TOL_CHAIN_TF32


def load_chain_model():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "profiling", "chain_model.py")
    spec = importlib.util.spec_from_file_location("chain_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_gpu_default_is_the_models_faster_design(precision, monkeypatch):
    """On a GPU the op's default design is the one profiling/chain_model.py predicts faster, at every
    B = R in 256..4096 and S in 1..8 (H100 and H200)."""
    monkeypatch.delenv("FASTBDM_CHAIN", raising=False)
    model = load_chain_model()
    for gpu in model.GPUS:
        for rows in (256, 512, 1024, 2048, 4096):
            for seeds in (1, 2, 3, 4, 8):
                times = {d: model.chain_time(d, rows, seeds, precision, gpu)["us"] for d in ("rows", "weight_stationary")}
                assert chain_design(torch.device("cuda"), rows, seeds, MAX_HIDDEN, precision) == min(times, key=times.get), (
                    gpu, rows, seeds, times)
    assert chain_design(torch.device("cuda"), 4096, 8, 2 * MAX_HIDDEN, precision) == "rows"  # the slice would not fit


@pytest.mark.skipif(not ON_GPU, reason="compiled on a CUDA GPU only (FASTBDM_TEST_DEVICE=cuda, gpu_checks.sh kernels)")
@pytest.mark.parametrize("rows", [1024, 2048])
@pytest.mark.parametrize("seeds", [1, 4])
def test_persistent_on_gpu_at_tf32(rows, seeds):
    """The shipped path (persistent, default blocks, tf32, hidden 512, T = 10) against float64 and against
    the staged orchestration and today's chain on the same inputs."""
    weights, _, _, s, a, z = paper_problem(rows)
    sched = DiffusionSchedule(10)
    stacked = [torch.stack([w] * seeds) for w in weights]
    s, a, z = (t.expand(seeds, *t.shape).contiguous() for t in (s, a, z))
    want = chain([w.double() for w in weights], s[0].double(), a[0].double(), z[0].double(), sched.double())
    got = weight_stationary_chain(stacked, s, a, z, *chain_args(sched), "sample", "ddim", orchestration="persistent")
    staged = weight_stationary_chain(stacked, s, a, z, *chain_args(sched), "sample", "ddim", orchestration="staged")
    today = reverse_chain(stacked, s, a, z, *chain_args(sched), "sample", "ddim")
    for k in range(seeds):
        assert relative_error(got[k], want) <= TOL_CHAIN_TF32
    assert relative_error(got, staged.double()) <= 1e-5
    assert relative_error(got, today.double()) <= 2 * TOL_CHAIN_TF32


def test_model_takes_measured_constants():
    """micro.json's barrier latency replaces the public figure: 20 barriers a 10-level chain."""
    model = load_chain_model()
    public = model.chain_time("weight_stationary", 1024, 4, "tf32")
    measured = model.chain_time("weight_stationary", 1024, 4, "tf32",
                                micro={"parts": {"grid_barrier": {"us_per_barrier": model.BARRIER_US + 5.0}}})
    assert public["barriers"] == 20
    assert measured["us"] - public["us"] == pytest.approx(20 * 5.0)
    assert model.chain_time("rows", 1024, 4, "tf32", micro={"parts": {"grid_barrier": {"us_per_barrier": 50.0}}}
                            )["us"] == pytest.approx(model.chain_time("rows", 1024, 4, "tf32")["us"])


@pytest.mark.parametrize("seeds", [1, 3])
@pytest.mark.parametrize("design", ["reverse_chain", "staged", "persistent"])
def test_rows_in_two_segments_equal_the_concatenated_rows(seeds, design):
    """s and a as [head, tail] row segments (TD3SBC.frozen_outputs: the target rows, then the SBC rows; 13 + 24
    rows, the boundary inside a row tile): bit for bit the chain on the concatenated rows, both chain kernels,
    the 2-D call and the seed axis; s and a split alike or a one-line error."""
    weights, singles, sched, s, z, a, noise = problem(seeds)
    if seeds == 1:
        weights, s, z, a, noise = singles[0], s[0], z[0], a[0], noise[0]
    head = [x[..., :13, :].clone() for x in (s, a)]
    tail = [x[..., 13:, :].clone() for x in (s, a)]

    def run(s_rows, a_rows):
        if design == "reverse_chain":
            return reverse_chain(weights, s_rows, a_rows, z, *chain_args(sched), "v", "ddpm", noise, precision="ieee",
                                 block_m=16, block_n=32, block_k=32)
        return ws_chain(weights, s_rows, a_rows, z, sched, "v", "ddpm", noise,
                        STAGED if design == "staged" else PERSISTENT)

    whole = run(s, a)
    assert torch.equal(run([head[0], tail[0]], [head[1], tail[1]]), whole)
    assert torch.equal(run([s], [a]), whole)
    with pytest.raises(ValueError, match="row segments alike"):
        run([head[0], tail[0]], a)


def test_the_chain_op_reads_segments_under_vmap_as_the_reference_concatenated():
    """ops.reverse_chain with two row segments each, vmapped over 3 seeds (SeedBatch): each seed the reference
    on its concatenated rows."""
    weights, singles, sched, s, z, a, _ = problem(3)
    split = lambda x: [x[:, :20], x[:, 20:]]  # noqa: E731
    got = torch.func.vmap(lambda w, s1, s2, a1, a2, z: ops.reverse_chain(w, [s1, s2], [a1, a2], z, sched,
                                                                         precision="ieee"))(
        list(weights), *split(s), *split(a), z)
    for k in range(3):
        assert_close_scaled(got[k], ref.reverse_chain(singles[k], s[k], a[k], z[k], sched))
        assert torch.equal(ref.reverse_chain(singles[k], [s[k, :20], s[k, 20:]], [a[k, :20], a[k, 20:]], z[k], sched),
                           ref.reverse_chain(singles[k], s[k], a[k], z[k], sched))
