"""A written performance model of one TD3-SBC update pair on an H100 or H200, per kernel and per update,
for four designs side by side (issue 14): predicted us per update and minutes per 1M-update run, and
measured beside predicted when the GPU stage's JSONs are given. A model, not a measurement.

Designs:
  old            today's launches before issue 14 (OLD_LAUNCHES_PER_PAIR, counted on main), three reverse
                 chains per pair (B, B, 2B rows: 30 serial levels), weights streamed from L2 per level
  merged         one reverse chain over 4B rows per pair (TD3SBC.update_pair; 10 serial levels), the
                 denoisers launched by group (an update's D', D, E forward in one launch, D and E backward in
                 one launch set, the SBC's E and D' in one), the fused actor and critic kernels, one Adam:
                 the launches profiling/launch_count.py counts for the current code (or --launches), with
                 the streaming ("rows") reverse chain (FASTBDM_CHAIN=rows)
  stationary     + the weight-stationary chain: clusters of CLUSTER CTAs hold D' in shared memory for
                 all levels, rows exchanged through distributed shared memory, one barrier per layer; what
                 the code runs on a GPU by default (kernels/weight_stationary_chain.py chain_design: tf32, and
                 bf16 from 3072 rows: the pair's 4B rows at B = 1024)
  streams        + the update's independent work on two CUDA streams (TD3SBC streams=2, fastbdm.branches; one
                 seed: S = 1 only): the launch term is the launches on the serial path (the counter's serial
                 count, or --serial); the kernels' times are not overlapped (a lower bound on the gain)
S > 1 seeds run a SeedBatch (one stream): its pair's launches counted at S = 2 and 3 (a SeedBatchRunner,
profiling/launch_count.py's count_seed_pair) and extrapolated linearly (the seed axis adds draws per seed).

Per kernel: matmul FLOPs at the tensor-core rate (x MMA_FRACTION: Triton's mma.sync/wgmma reach), bytes
through L2 (weights streamed by every program, activations) and HBM (parameters, gradients, Adam state),
programs, programs per SM (ceil(programs / SMs)) and resident slots per SM (from the sm_90 registers and
shared memory, fastbdm.kernels.sm90_compile), and time = max(FLOPs / rate over the busy SMs, L2 bytes / L2
bandwidth, one SM's programs in turn: per pass max(weight stream from L2, arithmetic)) + launches x the
dependent-launch gap + barriers.
Everything not a Triton kernel costs its launches x the gap, its HBM bytes, and its matmul FLOPs (the
actor and critics: benches.workloads.update_flops, counted on the torch backend, less the denoiser
kernels' FLOPs) at the tensor-core rate over the whole chip.

    python profiling/kernel_model.py                         # B 1024, 2048; S 1, 4, 8; tf32, bf16; H100, H200
    python profiling/kernel_model.py --micro out/micro.json --bench out/bench.json --markdown
    python profiling/kernel_model.py --launches 56 --serial 47   # the current code's counts given, not counted
"""
import argparse
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # profiling/launch_count.py

import launch_count  # noqa: E402  (sets TRITON_INTERPRET without CUDA, before fastbdm's kernels load)

N_OBS, N_ACT, HIDDEN, MLP_HIDDEN, STEPS = 17, 6, 512, 256, 10  # halfcheetah, paper networks


@dataclass(frozen=True)
class Device:
    """Peak numbers: NVIDIA's datasheets (H100 SXM5: https://www.nvidia.com/en-us/data-center/h100/ ;
    H200 SXM: https://www.nvidia.com/en-us/data-center/h200/), dense (no sparsity) tensor-core rates."""

    name: str
    sms: int = 132
    tf32_flops: float = 494.7e12  # dense TF32 tensor core
    bf16_flops: float = 989.4e12  # dense BF16 tensor core
    hbm_bytes_per_s: float = 3.35e12
    shared_per_sm: int = 228 * 1024
    registers_per_sm: int = 65536
    max_programs_per_sm: int = 32
    max_warps_per_sm: int = 64


H100 = Device("H100 SXM")
H200 = Device("H200 SXM", hbm_bytes_per_s=4.8e12)  # same GH100 die and clocks, HBM3e
DEVICES = {"H100": H100, "H200": H200}

# Measured by others (overridden by the `micro` stage's micro.json when given):
LAUNCH_GAP_US = 2.0  # per dependent kernel in a replayed CUDA graph: 1.5-2.5 us in public measurements
# (e.g. NVIDIA's "Getting started with CUDA Graphs" blog, https://developer.nvidia.com/blog/cuda-graphs/ :
# ~2 us per kernel for short kernels); micro.json parts.graph_gap.plain.us_per_dependent_kernel
L2_BYTES_PER_S = 5.5e12  # whole-chip L2 read bandwidth of an H100, Chips and Cheese, "Nvidia's H100: Funny
# L2, and Tons of Bandwidth" (2023); micro.json parts.l2_bandwidth.chip_gb_per_s
L2_BYTES_PER_S_PER_SM = 120e9  # one SM streaming from L2 (~64 B/clk at 1.8 GHz, same source);
# micro.json parts.l2_bandwidth.one_program_gb_per_s
DSMEM_BYTES_PER_S = 3.3e12  # SM-to-SM (distributed shared memory) throughput of the whole chip, Luo et al.,
# "Benchmarking and Dissecting the Nvidia Hopper GPU Architecture" (arXiv:2402.13499, 2024)
BARRIER_US = 1.0  # one grid/cluster-wide barrier; micro.json parts.grid_barrier.us_per_barrier
MMA_FRACTION = 0.6  # of the dense peak a Triton tl.dot loop reaches (mma.sync on sm_90, same paper);
# micro.json parts.mma.<precision>_64x64x32.tflop_per_s / peak

OLD_LAUNCHES_PER_PAIR = 571  # profiling/launch_count.py, td3sbc triton, on main at 4acda70 (before issue 14;
# 556 by the counter before it counted the matmuls inside custom ops' bodies)
CLUSTER = {"bf16": 4, "tf32": 8}  # CTAs per cluster of the stationary chain: W2's slice fits shared memory
BLOCK_M = {"reverse_chain": 32, "mlp_forward": 64, "ln_relu_bwd": 32}  # the kernels' default row blocks


def denoiser_row_flops(in_dim: int, hidden: int = HIDDEN, out: int = N_OBS) -> int:
    """Matmul FLOPs of one denoiser evaluation per row: 2 (in H + H H + H n)."""
    return 2 * (in_dim * hidden + hidden * hidden + hidden * out)


def chain_flops(rows: int, steps: int = STEPS, hidden: int = HIDDEN) -> int:
    """The reverse chain on `rows` rows: the s, a part of layer 1 once, then per level x W_x, W2, W_out."""
    return 2 * rows * (N_OBS + N_ACT) * hidden + steps * 2 * rows * (N_OBS * hidden + hidden * hidden + hidden * N_OBS)


def weight_bytes(in_dim: int, precision: str, hidden: int = HIDDEN) -> int:
    """The matrices a denoiser kernel streams: W1, W2, W_out at the precision's operand width."""
    return (in_dim * hidden + hidden * hidden + hidden * N_OBS) * (2 if precision == "bf16" else 4)


@dataclass
class Kernel:
    """One Triton kernel of the pair: `count` launches, each on `rows` rows (per seed) with `flops` (per
    launch, all seeds) and a `weights`-byte matrix stream per program per pass (`passes` = levels for a
    chain). `parts`: the networks of a group launch (kernels/denoiser_mlp.py, denoiser_backward.py), each a
    Kernel of its own rows, FLOPs and weights, whose programs share the launch's waves; rows, flops and
    weights are then their sums."""

    name: str
    count: int
    rows: int
    flops: float
    weights: int
    passes: int = 1
    config: str = "mlp_forward"
    parts: Tuple["Kernel", ...] = ()


def group(name: str, count: int, parts: List[Kernel]) -> Kernel:
    """One launch (`count` times) of several networks' kernels (same config), their programs side by side."""
    return Kernel(name, count, sum(p.rows for p in parts), sum(p.flops for p in parts), sum(p.weights for p in parts),
                  parts[0].passes, parts[0].config, tuple(parts))


def pair_kernels(batch: int, precision: str, seeds: int, design: str) -> List[Kernel]:
    """The denoiser kernels of one pair (td3sbc), seeds stacked; chains by design. The old design launches
    each network's forward and backward alone; the others launch them by group: per update D', D and E
    forward in one launch, D and E backward in one launch set; per actor step E and D' forward in one."""
    d_in, e_in = 2 * N_OBS + N_ACT + 1, N_OBS + 1
    b, s = batch, seeds
    wd, we = weight_bytes(d_in, precision), weight_bytes(e_in, precision)

    def fwd(name, rows, in_dim, w, count):
        return Kernel(name, count, rows, s * rows * denoiser_row_flops(in_dim), w)

    def bwd(name, rows, in_dim, w, count, factor=2):  # weight and hidden gradients: 2 x the forward's matmuls
        return Kernel(name, count, rows, s * factor * rows * denoiser_row_flops(in_dim), w, config="ln_relu_bwd")

    chains = [(b, 2), (2 * b, 1)] if design == "old" else [(4 * b, 1)]
    kernels = [Kernel(f"reverse chain {rows} rows", count, rows, s * chain_flops(rows), wd, STEPS, "reverse_chain")
               for rows, count in chains]
    d_fwd, e_fwd, t_fwd = (fwd("D forward (train), 2B", 2 * b, d_in, wd, 2), fwd("E forward (train), B", b, e_in, we, 2),
                           fwd("D' on x2, B", b, d_in, wd, 2))
    d_bwd, e_bwd = bwd("D backward, 2B", 2 * b, d_in, wd, 2), bwd("E backward, B", b, e_in, we, 2)
    sbc = [fwd("SBC: E forward, 2B", 2 * b, e_in, we, 1), fwd("SBC: D' forward, 2B", 2 * b, d_in, wd, 1)]
    sbc_bwd = bwd("SBC: D' input backward, 2B", 2 * b, d_in, wd, 1, factor=1)
    if design == "old":
        return kernels + [d_fwd, d_bwd, e_fwd, e_bwd, t_fwd, *sbc, sbc_bwd]
    return kernels + [group("D', D, E forward (one launch), 4B", 2, [t_fwd, d_fwd, e_fwd]),
                      group("D, E backward (one launch set), 3B", 2, [d_bwd, e_bwd]),
                      group("SBC: E, D' forward (one launch), 4B", 1, sbc), sbc_bwd]


def slots_per_sm(resource: Optional[dict], device: Device) -> int:
    """Programs of one kernel resident on an SM at once, by registers, shared memory, warps."""
    if not resource:
        return 1
    warps = resource["num_warps"]
    by_regs = device.registers_per_sm // max(1, resource["registers"] * 32 * warps)
    by_shared = device.shared_per_sm // max(1, resource["shared"] + 1024)  # + the 1 KB reserved per block
    return max(1, min(by_regs, by_shared, device.max_programs_per_sm, device.max_warps_per_sm // warps))


@dataclass
class Rates:
    """The constants above, with micro.json's measurements where given."""

    gap_us: float = LAUNCH_GAP_US
    l2: float = L2_BYTES_PER_S
    l2_per_sm: float = L2_BYTES_PER_S_PER_SM
    barrier_us: float = BARRIER_US
    mma_fraction: Dict[str, float] = None

    @classmethod
    def from_micro(cls, micro: Optional[dict], device: Device) -> "Rates":
        rates = cls(mma_fraction={"tf32": MMA_FRACTION, "bf16": MMA_FRACTION})
        parts = (micro or {}).get("parts", {})
        gap = parts.get("graph_gap", {})
        if isinstance(gap, dict) and isinstance(gap.get("plain"), dict):
            rates.gap_us = gap["plain"]["us_per_dependent_kernel"]
        l2 = parts.get("l2_bandwidth", {})
        if isinstance(l2, dict) and "chip_gb_per_s" in l2:
            rates.l2, rates.l2_per_sm = l2["chip_gb_per_s"] * 1e9, l2["one_program_gb_per_s"] * 1e9
        barrier = parts.get("grid_barrier", {})
        if isinstance(barrier, dict) and "us_per_barrier" in barrier:
            rates.barrier_us = barrier["us_per_barrier"]
        for precision, peak in (("tf32", device.tf32_flops), ("bf16", device.bf16_flops)):
            mma = parts.get("mma", {}).get(f"{precision}_64x64x32") if isinstance(parts.get("mma"), dict) else None
            if isinstance(mma, dict):
                rates.mma_fraction[precision] = mma["tflop_per_s"] * 1e12 / peak
        return rates


def kernel_time(k: Kernel, precision: str, seeds: int, device: Device, rates: Rates, resources: dict) -> dict:
    """One launch of k (streaming design): its programs (a group's parts' side by side), waves and the three
    bounds, in us."""
    key = k.config + ("_bf16" if precision == "bf16" and k.config + "_bf16" in resources else "")
    resource = resources.get(key)
    peak = (device.bf16_flops if precision == "bf16" else device.tf32_flops) * rates.mma_fraction[precision]
    parts = k.parts or (k,)
    block = BLOCK_M[k.config]
    part_programs = [seeds * math.ceil(p.rows / block) for p in parts]
    programs = sum(part_programs)
    per_sm = math.ceil(programs / device.sms)
    busy = min(programs, device.sms) / device.sms
    l2 = sum(n * p.passes * p.weights for n, p in zip(part_programs, parts))
    # one SM's programs in turn, each pass streaming the weights while its tiles compute (pipelined: max);
    # in a group the slowest part's program sets the pace
    program_us = max(p.passes * max(p.weights / rates.l2_per_sm, block * p.flops / seeds / p.rows / p.passes
                                    / (peak / device.sms)) for p in parts)
    us = 1e6 * max(k.flops / (peak * busy), l2 / rates.l2, per_sm * program_us)
    return {"kernel": k.name, "launches": k.count, "programs": programs, "programs_per_sm": per_sm,
            "slots_per_sm": slots_per_sm(resource, device), "registers": resource and resource["registers"],
            "shared": resource and resource["shared"], "gflop": k.count * k.flops / 1e9,
            "l2_mb": k.count * l2 / 1e6, "us": k.count * us}


def stationary_chain(rows: int, precision: str, seeds: int, device: Device, rates: Rates) -> dict:
    """The weight-stationary chain: weights loaded once into shared memory, per level the arithmetic over
    all SMs, the hidden rows exchanged inside each cluster (the other CTAs' column slices), and one
    barrier per layer (3 per level)."""
    peak = (device.bf16_flops if precision == "bf16" else device.tf32_flops) * rates.mma_fraction[precision]
    act = 2 if precision == "bf16" else 4
    cluster = CLUSTER[precision]
    flops = seeds * chain_flops(rows)
    exchange = STEPS * seeds * rows * HIDDEN * act * (cluster - 1)
    us = 1e6 * max(flops / peak, exchange / DSMEM_BYTES_PER_S) + 3 * STEPS * rates.barrier_us
    return {"kernel": f"stationary chain {rows} rows", "launches": 1, "programs": device.sms,
            "programs_per_sm": 1, "slots_per_sm": 1, "registers": None, "shared": None, "gflop": flops / 1e9,
            "l2_mb": exchange / 1e6, "us": us}


def hbm_bytes_per_pair(batch: int, seeds: int) -> float:
    """Parameters, gradients, Adam state and target lerps of a pair, and both batches: 2 x
    benches.workloads.update_bytes (compulsory fp32 traffic) at this batch, times seeds."""
    from benches.workloads import SIZES, update_bytes

    size = replace(SIZES["paper"], batch=batch)
    return 2 * seeds * update_bytes(size)


_SMALL_NET_GFLOP = {}


def small_net_flops_per_pair(batch: int, seeds: int) -> float:
    """Matmul FLOPs of a pair outside the denoiser kernels (actor, critics, their targets): the update's
    FLOPs (benches.workloads.update_flops at B = 1024, scaled by rows) less the old design's kernels."""
    if not _SMALL_NET_GFLOP:
        from benches.workloads import SIZES, update_flops

        denoisers = sum(k.count * k.flops for k in pair_kernels(1024, "tf32", 1, "old"))
        _SMALL_NET_GFLOP[1024] = (2 * update_flops(SIZES["paper"]) - denoisers) / 1e9
    return seeds * batch / 1024 * _SMALL_NET_GFLOP[1024] * 1e9


def predict(design: str, batch: int, seeds: int, precision: str, device: Device, rates: Rates,
            resources: dict, launches: int, total: Optional[int] = None) -> dict:
    """us per update of one design: the kernels (per-kernel rows), the launch term (launches on the serial
    path x gap, per update: half the pair's), HBM, and the total. total: the pair's launches on all
    streams (default: launches, one stream)."""
    kernels = [kernel_time(k, precision, seeds, device, rates, resources)
               for k in pair_kernels(batch, precision, seeds, design)]
    if design in ("stationary", "streams"):
        kernels = [stationary_chain(4 * batch, precision, seeds, device, rates)] + [
            k for k in kernels if not k["kernel"].startswith("reverse")]
    hbm_us = 1e6 * hbm_bytes_per_pair(batch, seeds) / device.hbm_bytes_per_s
    launch_us = launches * rates.gap_us
    kernel_us = sum(k["us"] for k in kernels)
    peak = (device.bf16_flops if precision == "bf16" else device.tf32_flops) * rates.mma_fraction[precision]
    small_us = 1e6 * small_net_flops_per_pair(batch, seeds) / peak
    per_update = (kernel_us + launch_us + hbm_us + small_us) / 2
    return {"design": design, "batch": batch, "seeds": seeds, "precision": precision, "device": device.name,
            "launches_per_pair": launches if total is None else total, "serial_launches_per_pair": launches,
            "launch_us_per_update": launch_us / 2,
            "kernel_us_per_update": kernel_us / 2, "hbm_us_per_update": hbm_us / 2,
            "small_nets_us_per_update": small_us / 2, "us_per_update": per_update,
            "minutes_per_1m_updates": per_update * 1e6 / 1e6 / 60, "kernels": kernels,
            "serial_chain_levels_per_pair": 3 * STEPS if design == "old" else STEPS}


def current_launches() -> Tuple[int, int]:
    """The current code's launches per pair (td3sbc, triton backend) and those on the serial path with two
    streams: profiling/launch_count.py."""
    from benches.workloads import SIZES, bench_device

    count = launch_count.count_pair("td3sbc", "triton+streams", SIZES["small"], bench_device())
    return count["launches"], count["serial"]


def seed_batch_launches() -> Tuple[int, int]:
    """A SeedBatchRunner pair's launches (td3sbc, triton backend) at S = 2 and 3 seeds: profiling/launch_count.py."""
    from benches.workloads import SIZES, bench_device

    return tuple(launch_count.count_seed_pair(seeds, SIZES["small"], bench_device()) for seeds in (2, 3))


def launches_by_design(current: int, serial: int, seeds: int = 1, seed_batch: Tuple[int, int] = None
                       ) -> Dict[str, Tuple[int, int]]:
    """{design: (launches on the serial path, launches in all)}. Two streams are a single seed's (TD3SBC);
    S > 1 seeds run a SeedBatch on one stream: no streams design, its launches extrapolated from seed_batch
    (the counts at S = 2 and 3: linear in S, the seed axis adding draws per seed) and every launch serial."""
    if seeds > 1:
        two, three = seed_batch
        batch = two + (three - two) * (seeds - 2)
        return {"old": (OLD_LAUNCHES_PER_PAIR,) * 2, "merged": (batch, batch), "stationary": (batch, batch)}
    return {"old": (OLD_LAUNCHES_PER_PAIR,) * 2, "merged": (current, current), "stationary": (current, current),
            "streams": (serial, current)}


def sm90_resources() -> dict:
    """fastbdm.kernels.sm90_compile's table, compiled in a subprocess without TRITON_INTERPRET; {} when
    Triton's NVIDIA backend cannot compile here."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run([sys.executable, "-m", "fastbdm.kernels.sm90_compile"], env=env, capture_output=True,
                          text=True)
    return json.loads(done.stdout) if done.returncode == 0 else {}


def measured(bench: Optional[dict], micro: Optional[dict]) -> Dict[str, float]:
    """us per update by variant from a bench JSON (test_update), and micro's CUDA launch count."""
    out = {}
    for b in (bench or {}).get("benchmarks", []):
        info = b.get("extra_info", {})
        if info.get("component") == "update" and "median_s" in info:
            out[info["variant"]] = 1e6 * info["median_s"] / info.get("updates_per_round", 1)
    launches = (micro or {}).get("parts", {}).get("launches")
    if isinstance(launches, dict) and "cuda" in launches:
        out["cuda kernels per pair (micro)"] = launches["cuda"]["kernels"]
    return out


# the bench variant that measures a design today, at the bench's paper size (B = 1024, one seed): on a GPU the
# code runs the weight-stationary chain by default (the stationary design)
MEASURED_VARIANT = {("stationary", "tf32"): "triton+graphs", ("stationary", "bf16"): "triton-bf16+graphs",
                    ("streams", "tf32"): "triton+streams+graphs"}
BENCH_BATCH = 1024


def table(rows: List[dict], measured_us: Dict[str, float]) -> str:
    head = ["device", "precision", "B", "S", "design", "launches / pair", "serial / pair", "chain levels / pair",
            "launch us", "kernel us", "small nets us", "HBM us", "us / update", "min / 1M updates",
            "measured us / update"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        variant = MEASURED_VARIANT.get((r["design"], r["precision"]))
        got = measured_us.get(variant) if variant and r["seeds"] == 1 and r["batch"] == BENCH_BATCH else None
        lines.append("| " + " | ".join([
            r["device"], r["precision"], str(r["batch"]), str(r["seeds"]), r["design"], str(r["launches_per_pair"]),
            str(r["serial_launches_per_pair"]), str(r["serial_chain_levels_per_pair"]), f"{r['launch_us_per_update']:.0f}",
            f"{r['kernel_us_per_update']:.0f}", f"{r['small_nets_us_per_update']:.0f}",
            f"{r['hbm_us_per_update']:.0f}", f"{r['us_per_update']:.0f}",
            f"{r['minutes_per_1m_updates']:.1f}", "" if got is None else f"{got:.0f}"]) + " |")
    return "\n".join(lines)


def kernel_table(result: dict) -> str:
    head = ["kernel", "launches", "programs", "programs / SM", "slots / SM", "registers", "shared B", "GFLOP",
            "L2 MB", "us"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for k in result["kernels"]:
        lines.append("| " + " | ".join(str(x) if not isinstance(x, float) else f"{x:.2f}" for x in (
            k["kernel"], k["launches"], k["programs"], k["programs_per_sm"], k["slots_per_sm"], k["registers"] or "",
            k["shared"] if k["shared"] is not None else "", k["gflop"], k["l2_mb"], k["us"])) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--precision", nargs="+", default=["tf32", "bf16"], choices=["tf32", "bf16"])
    parser.add_argument("--device", nargs="+", default=list(DEVICES), choices=list(DEVICES))
    parser.add_argument("--micro", help="micro.json of the GPU stage `micro` (rates and the CUDA launch count)")
    parser.add_argument("--bench", help="bench JSON (pytest benches/ --benchmark-json): measured us per update")
    parser.add_argument("--resources", help="a JSON of fastbdm.kernels.sm90_compile (else compiled here)")
    parser.add_argument("--launches", type=int,
                        help="the current code's launches per pair (default: counted, profiling/launch_count.py)")
    parser.add_argument("--serial", type=int,
                        help="of those, the launches on the serial path with two streams (default: counted; with "
                             "--launches given: --launches)")
    parser.add_argument("--seed-launches", type=int, nargs=2, metavar=("S2", "S3"),
                        help="a SeedBatchRunner pair's launches at 2 and 3 seeds (default: counted)")
    parser.add_argument("--kernels", action="store_true", help="also the per-kernel table of each first case")
    parser.add_argument("--json", help="write every prediction here")
    args = parser.parse_args(argv)
    load = lambda path: json.load(open(path)) if path else None  # noqa: E731
    micro, bench = load(args.micro), load(args.bench)
    resources = sm90_resources() if args.resources is None else load(args.resources)
    if args.launches is None:
        current, serial = current_launches()
    else:
        current, serial = args.launches, args.launches if args.serial is None else args.serial
    seed_batch = args.seed_launches or (seed_batch_launches() if max(args.seeds) > 1 else None)
    rows = []
    for name in args.device:
        device = DEVICES[name]
        rates = Rates.from_micro(micro, device)
        for precision in args.precision:
            for batch in args.batch:
                for seeds in args.seeds:
                    for design, (launches, total) in launches_by_design(current, serial, seeds, seed_batch).items():
                        rows.append(predict(design, batch, seeds, precision, device, rates, resources, launches,
                                            total))
    print(table(rows, measured(bench, micro)))
    if args.kernels:
        for r in rows[:4]:
            print(f"\n{r['design']}: {r['device']} {r['precision']} B={r['batch']} S={r['seeds']}")
            print(kernel_table(r))
    if not resources:
        print("\n(no sm_90 compile here: registers, shared memory and slots per SM left out)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
