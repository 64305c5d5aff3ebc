"""Hardware numbers the update's performance model needs, measured on the lent GPU (gpu_checks.sh stage
`micro`, right after `env`): one JSON, micro.json, each part under its own try so one failure keeps
the others' numbers, all of it under a total time cap.

Parts (CUDA):
  graph_gap       interval between two dependent tiny Triton kernels replayed in a CUDA graph (us per
                  kernel over a chain of N), and the same with programmatic dependent launch where
                  Triton exposes it (launch_pdl + tl.extra.cuda.gdc_wait), else recorded as not exposed
  grid_barrier    one grid-wide barrier in a persistent Triton kernel: grid = SM count (all programs
                  resident), arrive = atomic add on a global counter, wait = atomic reads until the
                  counter reaches the generation's target; a spin cap turns a would-be deadlock into
                  a recorded timeout. Thread-block-cluster barriers: recorded as not exposed (no
                  cluster barrier in triton.language)
  l2_bandwidth    one program re-reading an L2-resident buffer (GB/s per SM), and 2 programs per SM
                  re-reading it (whole chip)
  mma             tl.dot throughput (TFLOP/s) on register-resident tiles BLOCK_M x 64 x 32 for BLOCK_M
                  32, 64, 128 in tf32 and bf16, num_warps 4, grid 4 programs per SM, with the MMA
                  instruction the compiler chose (wgmma or mma.sync, read off the PTX)
  launches        kernels one eager update pair launches (profiling/launch_count.py: the dispatch rule per
                  phase, and torch.profiler's count; triton backend, paper size)
  chains          the reverse chain, today's kernel ("rows") against the weight-stationary one (persistent
                  and staged), paper shapes, T = 10, B = 1024 and 2048 rows, S = 1, 4, 8 seeds, tf32 and bf16:
                  us per call and relative difference to "rows" (not in the default parts: gpu_checks.sh
                  stage `chains` runs it alone, into chains.json; profiling/chain_model.py --measured reads it)

--dry-run (no GPU): the Triton kernels in the interpreter at tiny sizes, checked against torch (grid
barrier with one program: the interpreter runs programs one after another), the kernels one update pair
launches by fastbdm.launch_count's rule (small size), the JSON; the timed CUDA parts are marked
"cuda-only".

    python profiling/micro.py --out profiling/out [--budget 50]
    python profiling/micro.py --dry-run --out /tmp/micro
    python profiling/micro.py --parts chains --json chains.json --out profiling/out --budget 250
"""
import argparse
import json
import os
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any @triton.jit runs
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # profiling/launch_count.py

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

CHAIN_TILES = (32, 64, 128)  # BLOCK_M of the chain's [BLOCK_M, 32] x [32, 64] dots
TILE_N, TILE_K = 64, 32
PARTS = ("graph_gap", "grid_barrier", "l2_bandwidth", "mma", "launches", "chains")
DEFAULT_PARTS = PARTS[:-1]  # chains: its own stage (compiling six chain kernels takes most of a minute)
CHAIN_ROWS, CHAIN_SEEDS = (1024, 2048), (1, 4, 8)
MAX_SPINS = 1 << 22  # ~ tens of ms of atomic reads: a barrier that never completes ends as a timeout


@triton.jit
def _bump_kernel(x_ptr):
    """x[0] += 1: a tiny kernel that depends on the previous one's result."""
    tl.store(x_ptr, tl.load(x_ptr) + 1.0)


@triton.jit
def _bump_pdl_kernel(x_ptr):
    """_bump_kernel for programmatic dependent launch: waits for the previous grid's memory, then lets
    the next grid start its prologue."""
    tl.extra.cuda.gdc_wait()
    tl.store(x_ptr, tl.load(x_ptr) + 1.0)
    tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def _grid_barrier_kernel(counter_ptr, timeout_ptr, n_programs, ITERS: tl.constexpr, MAX_SPIN: tl.constexpr):
    """ITERS grid-wide barriers. The counter only grows, so generation i completes when it reaches
    (i + 1) n_programs (no reset, no sense flag to race on); every program must be resident."""
    for i in range(ITERS):
        tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
        target = (i + 1) * n_programs
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
        spins = 0
        while (seen < target) & (spins < MAX_SPIN):
            seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
            spins += 1
        if spins >= MAX_SPIN:
            tl.atomic_max(timeout_ptr, 1)


@triton.jit
def _reread_kernel(x_ptr, out_ptr, n, REPEATS: tl.constexpr, BLOCK: tl.constexpr):
    """Each program sums the whole buffer x (n fp32) REPEATS times, bypassing L1 (.cg): L2 reads."""
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for _ in range(REPEATS):
        for start in range(0, n, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            acc += tl.load(x_ptr + offs, mask=offs < n, other=0.0, cache_modifier=".cg")
    tl.store(out_ptr + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK), acc)


@triton.jit
def _mma_loop_kernel(a_ptr, b_ptr, out_ptr, iters, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                     BF16: tl.constexpr):
    """acc += A @ B `iters` times on tiles loaded once: out (programs, BM, BN) = iters A B."""
    offs_m, offs_n, offs_k = tl.arange(0, BM), tl.arange(0, BN), tl.arange(0, BK)
    a = tl.load(a_ptr + offs_m[:, None] * BK + offs_k[None, :])
    b = tl.load(b_ptr + offs_k[:, None] * BN + offs_n[None, :])
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for _ in range(iters):
        if BF16:
            acc = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
        else:
            acc = tl.dot(a, b, acc, input_precision="tf32")
    tl.store(out_ptr + tl.program_id(0) * BM * BN + offs_m[:, None] * BN + offs_n[None, :], acc)


def median_ms(fn, device, reps: int = 20) -> float:
    """Median of reps timed calls (CUDA events), after one warm-up call."""
    fn()
    torch.cuda.synchronize(device)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def instruction(compiled) -> str:
    """The MMA instruction in a compiled kernel's PTX: wgmma, mma.sync, or none."""
    ptx = getattr(compiled, "asm", {}).get("ptx", "")
    return "wgmma" if "wgmma" in ptx else "mma.sync" if "mma.sync" in ptx else "none"


# --- parts: each returns a dict of numbers ------------------------------------------------------

def graph_gap(device, dry_run: bool) -> dict:
    chain = 4 if dry_run else 200
    x = torch.zeros(1, device=device)
    if dry_run:
        for _ in range(chain):
            _bump_kernel[(1,)](x)
        assert x.item() == chain, x
        return {"status": "cuda-only", "checked": f"_bump_kernel x{chain} in the interpreter"}
    result = {}
    variants = [("plain", lambda: _bump_kernel[(1,)](x))]
    try:
        _bump_pdl_kernel[(1,)](x, launch_pdl=True)
        torch.cuda.synchronize(device)
        variants.append(("pdl", lambda: _bump_pdl_kernel[(1,)](x, launch_pdl=True)))
    except Exception as exc:  # noqa: BLE001 (any failure means: not available here)
        result["pdl"] = f"not exposed ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    for name, launch in variants:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            launch()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(chain):
                launch()
        x.zero_()
        graph.replay()
        torch.cuda.synchronize(device)
        correct = x.item() == chain
        ms = median_ms(graph.replay, device)
        result[name] = {"us_per_dependent_kernel": ms * 1e3 / chain, "kernels_per_graph": chain,
                        "result_correct": correct}
    return result


def grid_barrier(device, dry_run: bool, sms: int) -> dict:
    counter = torch.zeros(1, device=device, dtype=torch.int32)
    timeout = torch.zeros(1, device=device, dtype=torch.int32)
    if dry_run:
        _grid_barrier_kernel[(1,)](counter, timeout, 1, ITERS=3, MAX_SPIN=8)
        assert counter.item() == 3 and timeout.item() == 0, (counter, timeout)
        return {"status": "cuda-only", "checked": "one program, 3 barriers in the interpreter",
                "cluster_barrier": "not exposed by triton.language"}
    result = {"programs": sms, "cluster_barrier": "not exposed by triton.language (no cluster barrier op)"}
    for iters in (1, 101):
        counter.zero_()
        ms = median_ms(lambda: (counter.zero_(), _grid_barrier_kernel[(sms,)](
            counter, timeout, sms, ITERS=iters, MAX_SPIN=MAX_SPINS, num_warps=1)), device, reps=10)
        result[f"ms_{iters}_barriers"] = ms
    result["us_per_barrier"] = (result["ms_101_barriers"] - result["ms_1_barriers"]) * 1e3 / 100
    result["timed_out"] = bool(timeout.item())
    return result


def l2_bandwidth(device, dry_run: bool, sms: int) -> dict:
    n = 256 if dry_run else (4 << 20) // 4  # 4 MB: L2-resident on Hopper (50-60 MB)
    repeats = 2 if dry_run else 8
    block = 64 if dry_run else 1024
    x = torch.randn(n, device=device)
    result = {"buffer_mb": n * 4 / 1e6, "repeats": repeats}
    for name, grid in (("one_program", 1), ("chip", 1 if dry_run else 2 * sms)):
        out = torch.empty(grid * block, device=device)
        launch = lambda: _reread_kernel[(grid,)](x, out, n, REPEATS=repeats, BLOCK=block, num_warps=8)  # noqa: E731
        if dry_run:
            launch()
            torch.testing.assert_close(out.view(grid, block).sum(1), repeats * x.sum().expand(grid), rtol=1e-4,
                                       atol=1e-3)
            continue
        ms = median_ms(launch, device, reps=10)
        result[f"{name}_gb_per_s"] = grid * repeats * n * 4 / (ms * 1e-3) / 1e9
    result["programs_chip"] = 2 * sms
    if dry_run:
        result["status"] = "cuda-only"
    return result


def mma(device, dry_run: bool, sms: int) -> dict:
    result = {}
    for dtype in ("tf32", "bf16"):
        for bm in CHAIN_TILES:
            key = f"{dtype}_{bm}x{TILE_N}x{TILE_K}"
            try:
                a = torch.randn(bm, TILE_K, device=device)
                b = torch.randn(TILE_K, TILE_N, device=device)
                iters = 2 if dry_run else 4096
                grid = 1 if dry_run else 4 * sms
                out = torch.empty(grid, bm, TILE_N, device=device)
                launch = lambda: _mma_loop_kernel[(grid,)](a, b, out, iters, BM=bm, BN=TILE_N, BK=TILE_K,  # noqa: E731
                                                           BF16=dtype == "bf16", num_warps=4)
                if dry_run:
                    if dtype == "bf16":  # the interpreter computes bf16 dots wrongly (kernels/denoiser_mlp.py)
                        result[key] = "cuda-only"
                        continue
                    launch()
                    torch.testing.assert_close(out[0], iters * (a @ b), rtol=1e-4, atol=1e-3)
                    result[key] = "checked in the interpreter"
                    continue
                compiled = launch()
                ms = median_ms(launch, device, reps=10)
                result[key] = {"tflop_per_s": 2 * bm * TILE_N * TILE_K * iters * grid / (ms * 1e-3) / 1e12,
                               "instruction": instruction(compiled), "programs": grid}
            except Exception as exc:  # noqa: BLE001 (one shape's failure leaves the others)
                result[key] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    return result


def launches(device, dry_run: bool) -> dict:
    """One eager triton-backend update pair (profiling/launch_count.py): the dispatch rule's count per
    phase, and on CUDA torch.profiler's kernels."""
    from launch_count import count_pair

    from benches.workloads import SIZES

    size = SIZES["small" if dry_run else "paper"]
    result = count_pair("td3sbc", "triton", size, device, cuda=not dry_run)
    if dry_run:
        result["status"] = "cuda-only"
    return result


def chains(device, dry_run: bool) -> dict:
    from fastbdm.kernels.reverse_chain import reverse_chain
    from fastbdm.kernels.weight_stationary_chain import weight_stationary_chain
    from fastbdm.networks import Denoiser
    from fastbdm.schedule import DiffusionSchedule

    n, m, hidden, steps = (11, 3, 64, 2) if dry_run else (17, 6, 512, 10)
    sched = DiffusionSchedule(steps).to(device)
    buffers = (sched.sqrt_ab, sched.sqrt_one_minus_ab, sched.sqrt_ab_prev, sched.sqrt_one_minus_ab_prev,
               sched.coef_x0, sched.coef_xt, sched.posterior_std, steps)
    # the interpreter runs the persistent kernel only as one program a seed
    one_program = dict(block_ns=hidden, rows_per_group=64) if dry_run else {}
    result = {"shapes": dict(n=n, m=m, hidden=hidden, steps=steps)}
    for precision in ("ieee",) if dry_run else ("tf32", "bf16"):
        for rows in (37,) if dry_run else CHAIN_ROWS:
            for seeds in (2,) if dry_run else CHAIN_SEEDS:
                nets = [Denoiser(n, m, hidden=(hidden, hidden)).to(device) for _ in range(seeds)]
                weights = [torch.stack(ws).detach() for ws in zip(*(net.weights() for net in nets))]
                s, z = torch.randn(2, seeds, rows, n, device=device)
                a = torch.rand(seeds, rows, m, device=device) * 2 - 1
                args = (weights, s, a, z, *buffers, "sample", "ddim")
                calls = {
                    "rows": lambda: reverse_chain(*args, precision=precision),
                    "weight_stationary": lambda: weight_stationary_chain(
                        *args, precision=precision, orchestration="persistent", **one_program),
                    "weight_stationary_staged": lambda: weight_stationary_chain(
                        *args, precision=precision, orchestration="staged"),
                }
                want = calls["rows"]()
                entry = {}
                for name, call in calls.items():
                    got = call()
                    entry[f"{name}_rel_diff"] = ((got - want).norm() / want.norm()).item()
                    if dry_run:
                        assert entry[f"{name}_rel_diff"] < 1e-5, (name, entry)
                    else:
                        entry[f"{name}_us"] = median_ms(call, device, reps=10) * 1e3
                result[f"{precision}_B{rows}_S{seeds}"] = entry
    if dry_run:
        result["status"] = "cuda-only"
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="profiling/out", help="directory for micro.json")
    parser.add_argument("--budget", type=float, default=50.0, help="seconds; parts not started by then are skipped")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: interpreter checks, op counts, the JSON")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(DEFAULT_PARTS),
                        help="which parts, in this order (default: all but chains)")
    parser.add_argument("--json", default="micro.json", help="file name of the results in --out")
    args = parser.parse_args(argv)
    dry_run = args.dry_run
    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("micro.py measures a CUDA GPU; on the CPU run it with --dry-run")
    device = torch.device("cuda" if not dry_run else "cpu")
    sms = torch.cuda.get_device_properties(device).multi_processor_count if not dry_run else 1
    results = {"device": torch.cuda.get_device_name(device) if not dry_run else "cpu (Triton interpreter)",
               "torch": torch.__version__, "triton": triton.__version__, "dry_run": dry_run, "sms": sms, "parts": {}}
    parts = {"graph_gap": lambda: graph_gap(device, dry_run), "grid_barrier": lambda: grid_barrier(device, dry_run, sms),
             "l2_bandwidth": lambda: l2_bandwidth(device, dry_run, sms), "mma": lambda: mma(device, dry_run, sms),
             "launches": lambda: launches(device, dry_run), "chains": lambda: chains(device, dry_run)}
    start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    for name in args.parts:
        part = parts[name]
        if time.perf_counter() - start > args.budget:
            results["parts"][name] = f"skipped: the {args.budget:.0f} s budget was spent"
            continue
        t0 = time.perf_counter()
        try:
            results["parts"][name] = part()
        except Exception as exc:  # noqa: BLE001 (one part's failure keeps the others' numbers)
            results["parts"][name] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        results.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 2)
        with open(os.path.join(args.out, args.json), "w") as f:  # after each part: a cut run keeps them
            json.dump(results, f, indent=1)
        print(name, json.dumps(results["parts"][name]), flush=True)
    return results


if __name__ == "__main__":
    main()
