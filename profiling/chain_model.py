"""Performance model of the reverse chain: today's row-block kernel (kernels/reverse_chain.py, "rows") against
the weight-stationary one (kernels/weight_stationary_chain.py), per chain of `levels` levels on R rows
and S seeds. A written model, no measurement: docs/PERFORMANCE.md#the-weight-stationary-chain-issue-14-part-4-a-written-model-pending-a-gpu.

Per level, time = max(matmul FLOPs / (tensor-core rate x MMA efficiency x busy SMs / SMs),
bytes through L2 / min(chip L2 bandwidth, busy SMs x one SM's L2 bandwidth)) + barriers x barrier latency;
per chain, levels x that + the prologue (base and the first layer) + one dependent-launch gap.
The hardware constants are public figures (below); `micro` (micro.json of profiling/micro.py) replaces
the barrier latency, the launch gap and the L2 bandwidths when given.

    python profiling/chain_model.py [--micro micro.json] [--measured chains.json]  # PERFORMANCE.md's table
    from chain_model import chain_time; chain_time("weight_stationary", rows=1024, seeds=4, precision="bf16")
"""
import argparse
import json
import math

# H100 SXM and H200: 132 SMs, the same tensor cores; dense rates (NVIDIA datasheets); L2 read bandwidth
# ~5.5 TB/s chip-wide and ~64 B/clk x 1.98 GHz per SM (public microbenchmarks of Hopper); HBM 3.35 / 4.8 TB/s.
GPUS = {
    "H100": dict(sms=132, tf32=495e12, bf16=989e12, l2_chip=5.5e12, l2_sm=127e9, hbm=3.35e12),
    "H200": dict(sms=132, tf32=495e12, bf16=989e12, l2_chip=5.5e12, l2_sm=127e9, hbm=4.8e12),
}
MMA_EFFICIENCY = 0.5  # Triton's mma.sync on these thin tiles: half the dense rate (micro `mma` measures it)
BARRIER_US = 2.0  # one grid/group barrier (atomic arrive + acquire spin): 1-3 us in public grid-sync measurements
LAUNCH_GAP_US = 2.0  # one dependent kernel in a replayed CUDA graph (issue 14: 1.5-2.5 us)
PAPER = dict(n=17, m=6, hidden=512)  # halfcheetah, the paper's denoiser


def _hardware(gpu, micro):
    """The GPU's constants, with micro.json's measurements in place of the public figures."""
    hw = dict(GPUS[gpu], barrier_us=BARRIER_US, launch_gap_us=LAUNCH_GAP_US)
    parts = (micro or {}).get("parts", {})
    barrier = parts.get("grid_barrier", {}).get("us_per_barrier")
    if isinstance(barrier, (int, float)):
        hw["barrier_us"] = barrier
    gap = parts.get("graph_gap", {}).get("plain", {})
    if isinstance(gap, dict) and isinstance(gap.get("us_per_dependent_kernel"), (int, float)):
        hw["launch_gap_us"] = gap["us_per_dependent_kernel"]
    l2 = parts.get("l2_bandwidth", {})
    if isinstance(l2.get("chip_gb_per_s"), (int, float)):
        hw["l2_chip"] = l2["chip_gb_per_s"] * 1e9
    if isinstance(l2.get("one_program_gb_per_s"), (int, float)):
        hw["l2_sm"] = l2["one_program_gb_per_s"] * 1e9
    return hw


def _stage_us(flops, l2_bytes, busy, hw, rate):
    """One stage: its FLOPs at the rate of its busy SMs, or its L2 bytes at their bandwidth, whichever is longer."""
    return max(flops / (rate * busy / hw["sms"]), l2_bytes / min(hw["l2_chip"], busy * hw["l2_sm"])) * 1e6


def chain_time(design, rows=1024, seeds=1, precision="tf32", gpu="H100", levels=10, n=PAPER["n"], m=PAPER["m"],
               hidden=PAPER["hidden"], micro=None, block_m=32, block_ns=64):
    """Predicted cost of one chain call (design "rows" or "weight_stationary"): dict with us (per call),
    us_per_seed, flops, l2_mb (per call), programs, barriers, level_us and its stages (stage_us)."""
    hw = _hardware(gpu, micro)
    act = 2 if precision == "bf16" else 4  # weight and activation element size
    rate = hw["bf16" if precision == "bf16" else "tf32"] * MMA_EFFICIENCY
    d_in = 2 * n + 1 + m
    tiles = seeds * math.ceil(rows / block_m)
    hidden_flops = seeds * rows * 2 * hidden * hidden  # layer 2, per level
    edge_flops = seeds * rows * 2 * 2 * n * hidden  # layers 1 (x part) and 3, per level
    prologue_flops = seeds * rows * 2 * (n + m) * hidden
    if design == "rows":
        programs = tiles
        busy = min(programs, hw["sms"])
        # every program streams its seed's whole denoiser each level and writes and reads back its pre1, pre2
        weights = (hidden * d_in + hidden * hidden + n * hidden) * act
        stages = [_stage_us(hidden_flops + edge_flops, programs * weights + seeds * rows * 4 * hidden * act, busy, hw,
                            rate)]
        barriers = 0
    elif design == "weight_stationary":
        col_blocks = math.ceil(hidden / block_ns)
        groups = max(1, min(math.ceil(rows / block_m), hw["sms"] // (col_blocks * seeds)))
        programs = seeds * col_blocks * groups
        # columns stage: each of a group's P_c programs reads all the group's pre1 rows, writes its pre2 columns
        columns = _stage_us(hidden_flops, programs * (rows / groups) * hidden * act + seeds * rows * hidden * act,
                            min(programs, hw["sms"]), hw, rate)
        # rows stage, one program a row tile: pre2 read, base read (fp32), pre1 written, W_x and W_out per tile
        rows_stage = _stage_us(edge_flops, seeds * rows * hidden * (2 * act + 4) + tiles * 2 * n * hidden * act,
                               min(tiles, programs, hw["sms"]), hw, rate)
        stages = [columns, rows_stage]
        barriers = 2 * levels
    else:
        raise ValueError(f"design must be 'rows' or 'weight_stationary', got {design!r}")
    level_us = sum(stages)
    prologue_us = _stage_us(prologue_flops, seeds * rows * (d_in * 4 + hidden * 4), min(tiles, hw["sms"]), hw, rate)
    us = levels * level_us + prologue_us + barriers * hw["barrier_us"] + hw["launch_gap_us"]
    return dict(us=us, us_per_seed=us / seeds, flops=levels * (hidden_flops + edge_flops) + prologue_flops,
                programs=programs, barriers=barriers, level_us=level_us, stage_us=stages,
                barrier_us=barriers * hw["barrier_us"])


def table(micro=None):
    """Markdown rows: each GPU, precision, B (= R) and S: us per chain, rows vs weight-stationary."""
    lines = ["| GPU | precision | B | S | rows: programs, us | weight-stationary: programs, us (of it barriers) | "
             "speed-up |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for gpu in GPUS:
        for precision in ("tf32", "bf16"):
            for rows in (1024, 2048):
                for seeds in (1, 4, 8):
                    old = chain_time("rows", rows, seeds, precision, gpu, micro=micro)
                    new = chain_time("weight_stationary", rows, seeds, precision, gpu, micro=micro)
                    lines.append(f"| {gpu} | {precision} | {rows} | {seeds} | {old['programs']}, {old['us']:.0f} | "
                                 f"{new['programs']}, {new['us']:.0f} ({new['barrier_us']:.0f}) | "
                                 f"{old['us'] / new['us']:.2f}x |")
    return "\n".join(lines)


def measured_table(measured, micro=None):
    """Markdown rows: micro.py's `chains` part (chains.json) beside this model's prediction for that GPU."""
    gpu = next((name for name in GPUS if name in measured.get("device", "")), "H100")
    lines = [f"Measured on {measured.get('device')} (predicted for {gpu}):", "",
             "| precision | B | S | rows: measured / predicted us | weight-stationary: measured / predicted us "
             "| staged: measured us |", "| --- | --- | --- | --- | --- | --- |"]
    for key, entry in measured["parts"]["chains"].items():
        if not (isinstance(entry, dict) and "rows_us" in entry):
            continue
        precision, rows, seeds = key.split("_")
        rows, seeds = int(rows[1:]), int(seeds[1:])
        old = chain_time("rows", rows, seeds, precision, gpu, micro=micro)["us"]
        new = chain_time("weight_stationary", rows, seeds, precision, gpu, micro=micro)["us"]
        lines.append(f"| {precision} | {rows} | {seeds} | {entry['rows_us']:.0f} / {old:.0f} | "
                     f"{entry['weight_stationary_us']:.0f} / {new:.0f} | {entry['weight_stationary_staged_us']:.0f} |")
    return "\n".join(lines)


def _read(path):
    if not path:
        return None
    with open(path) as f:
        return json.load(f)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro", help="micro.json of profiling/micro.py: measured constants")
    parser.add_argument("--measured", help="chains.json of profiling/micro.py --parts chains: measured chain times")
    args = parser.parse_args(argv)
    micro = _read(args.micro)
    print(table(micro))
    if args.measured:
        print()
        print(measured_table(_read(args.measured), micro))


if __name__ == "__main__":
    main()
