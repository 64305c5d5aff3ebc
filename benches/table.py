"""Comparison table (Markdown) from a pytest-benchmark JSON written by
`pytest benches/ --benchmark-only --benchmark-json=out.json`:  python benches/table.py out.json

Per benchmark: median time (per update for the update rows), FLOPs, compulsory bytes, achieved
rates, the floor max(FLOPs / measured matmul rate, bytes / measured copy bandwidth) from the
roofline benchmarks of the same run, time / floor, the speed-up over the reference (the research
variant for the update, the torch reference for a kernel), the H100 bound
max(FLOPs / 495 TFLOP/s TF32 dense, bytes / 3.35 TB/s), and for the eager update rows the kernels one
update pair launches (fastbdm.launch_count's rule; on CUDA torch.profiler's count beside it).
"""
import argparse
import json

H100_TF32_FLOPS = 495e12
H100_BYTES_PER_S = 3.35e12
REFERENCE = {"update": "research"}  # kernels: "torch"


def rows_of(data: dict) -> list:
    rows = []
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        per = info.get("updates_per_round", 1)
        rows.append({"component": info["component"], "variant": info["variant"],
                     "time": bench["stats"]["median"] / per, "flops": info["flops"] / per,
                     "bytes": info["bytes"] / per, "rounds": bench["stats"]["rounds"],
                     "launches": launches(info)})
    return rows


def launches(info: dict) -> str:
    """'56' (the rule's count per pair), '56 (47 serial)' when two streams take some off the serial path,
    '56 (CUDA 60)' with torch.profiler's, '' when not counted."""
    if "launches_per_pair" not in info:
        return ""
    cuda, serial = info.get("cuda_kernels_per_pair"), info.get("serial_launches_per_pair")
    notes = ([f"{serial} serial"] if serial not in (None, info["launches_per_pair"]) else []) + (
        [f"CUDA {cuda['kernels']}"] if cuda else [])
    return f"{info['launches_per_pair']}" + (f" ({', '.join(notes)})" if notes else "")


def ceilings(rows: list) -> tuple:
    """(matmul FLOP/s, copy bytes/s) measured in this run."""
    by = {r["component"]: r for r in rows}
    mm, cp = by["roofline_matmul"], by["roofline_copy"]
    return mm["flops"] / mm["time"], cp["bytes"] / cp["time"]


def fmt_time(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} us" if seconds >= 1e-6 else f"{seconds * 1e9:.1f} ns"


def table(data: dict) -> str:
    rows = rows_of(data)
    flop_rate, byte_rate = ceilings(rows)
    info = data["machine_info"]
    fb = info.get("fastbdm", {})
    ref_time = {(r["component"], r["variant"]): r["time"] for r in rows}
    lines = [
        f"Machine: {info.get('node', '?')}, {info.get('cpu', {}).get('brand_raw', '?')}; device {fb.get('device')} "
        f"({fb.get('device_name')}); torch {fb.get('torch')} threads {fb.get('torch_threads')}; triton "
        f"{fb.get('triton')} TRITON_INTERPRET={fb.get('triton_interpret')}; size {fb.get('size')}; "
        f"date {data.get('datetime', '?')}",
        f"Update variants measured: {', '.join(r['variant'] for r in rows if r['component'] == 'update')}; "
        "not on this device: "
        + (", ".join(f"{k} ({v})" for k, v in fb.get("omitted_variants", {}).items()) or "none"),
        f"Measured ceilings: matmul {flop_rate / 1e9:.1f} GFLOP/s, copy {byte_rate / 1e9:.1f} GB/s",
        "",
        "| component | variant | median | GFLOP | MB | GFLOP/s | GB/s | floor | x floor | speed-up vs ref | H100 bound "
        "| launches / pair |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["component"].startswith("roofline"):
            continue
        floor = max(r["flops"] / flop_rate, r["bytes"] / byte_rate)
        ref = ref_time.get((r["component"], REFERENCE.get(r["component"], "torch")))
        h100 = max(r["flops"] / H100_TF32_FLOPS, r["bytes"] / H100_BYTES_PER_S)
        lines.append(
            f"| {r['component']} | {r['variant']} | {fmt_time(r['time'])} | {r['flops'] / 1e9:.4g} | "
            f"{r['bytes'] / 1e6:.3g} | {r['flops'] / r['time'] / 1e9:.3g} | {r['bytes'] / r['time'] / 1e9:.3g} | "
            f"{fmt_time(floor)} | {r['time'] / floor:.3g} | {ref / r['time'] if ref else float('nan'):.3g} | "
            f"{fmt_time(h100)} | {r['launches']} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="pytest-benchmark JSON (--benchmark-json)")
    with open(parser.parse_args().json) as f:
        print(table(json.load(f)))


if __name__ == "__main__":
    main()
