"""Benchmark settings: `pytest benches/ --benchmark-only [--bench-size small|paper|paper2048] [--bench-threads N]
[--bench-rounds N] [--benchmark-json=out.json]`, then `python benches/table.py out.json`.

Collects benches/bench_*.py. Without CUDA, Triton runs in its CPU interpreter: TRITON_INTERPRET=1 is
set here, before any @triton.jit decorator runs. Which update variants this device runs (and which
it cannot, with the reason) is printed in the header and the summary and stored in the JSON's
machine_info["fastbdm"].
"""
import os
from dataclasses import dataclass

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import triton  # noqa: E402

from .workloads import (SIZES, Size, baseline_variants, bench_device, default_size, kernel_variants, sync,  # noqa: E402
                        update_variants)


def pytest_addoption(parser):
    group = parser.getgroup("fastbdm benches")
    group.addoption("--bench-size", choices=["auto", *SIZES], default="auto",
                    help="problem size: small (CPU default: tiny, for interpreter-mode Triton) or paper "
                         "(B=1024, halfcheetah shapes, T=10, hidden 512; CUDA default) or paper2048 (B=2048)")
    group.addoption("--bench-threads", type=int, default=1, help="torch CPU threads (default 1)")
    group.addoption("--bench-rounds", type=int, default=0,
                    help="timed rounds per benchmark (default: by device and backend)")


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)


@dataclass(frozen=True)
class BenchSetup:
    device: torch.device
    size: Size
    threads: int
    rounds: int  # 0: by device and backend

    def rounds_for(self, backend: str) -> int:
        """Interpreter-mode Triton is ~1000x slower than the kernels it emulates: few rounds there."""
        if self.rounds:
            return self.rounds
        if self.device.type == "cuda":
            return 50
        return 5 if backend.startswith("triton") else 20

    @property
    def warmup(self) -> int:
        """Untimed rounds first (Triton compiles its kernels on the first CUDA call)."""
        return 3 if self.device.type == "cuda" else 1

    def describe(self) -> list:
        ran, omitted = update_variants(self.device)
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        sz = self.size
        lines = [f"fastbdm benches: device {self.device} ({name}), size {sz.name} (B={sz.batch}, rows {sz.rows}, "
                 f"denoiser hidden {sz.hidden}, actor/critic hidden {sz.mlp_hidden}, T={sz.steps}), "
                 f"torch threads {self.threads}, "
                 f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')}",
                 f"fastbdm benches: update variants on this device: {', '.join(ran)}; baselines rebrac and td3bc: "
                 f"{', '.join(baseline_variants(self.device)[0])}"]
        lines += [f"fastbdm benches: update variant {v} not on this device: {why}" for v, why in omitted.items()]
        lines += [f"fastbdm benches: kernel variant {v} not on this device: {why}"
                  for v, why in kernel_variants(self.device)[1].items()]
        return lines


def _setup(config) -> BenchSetup:
    device = bench_device()
    size = config.getoption("--bench-size")
    return BenchSetup(device, SIZES[default_size(device) if size == "auto" else size],
                      config.getoption("--bench-threads"), config.getoption("--bench-rounds"))


def pytest_configure(config):
    config._fastbdm_bench = _setup(config)
    torch.set_num_threads(config._fastbdm_bench.threads)


def pytest_report_header(config):
    return config._fastbdm_bench.describe()


def pytest_terminal_summary(terminalreporter, config):
    for line in config._fastbdm_bench.describe():
        terminalreporter.write_line(line)


def pytest_benchmark_update_machine_info(config, machine_info):
    setup = config._fastbdm_bench
    ran, omitted = update_variants(setup.device)
    machine_info["fastbdm"] = {
        "device": str(setup.device),
        "device_name": torch.cuda.get_device_name(setup.device) if setup.device.type == "cuda" else "cpu",
        "size": setup.size.name, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "triton": triton.__version__, "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
        "update_variants_supported": ran, "omitted_variants": omitted,
    }


@pytest.fixture(scope="session")
def bench_setup(pytestconfig) -> BenchSetup:
    return pytestconfig._fastbdm_bench


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def measure(benchmark, bench_setup):
    """measure(fn, component=, variant=, backend=, flops=, bytes=, setup=None, updates=None):
    times fn (synchronising the device after each call) and records the cost and achieved rates in
    benchmark.extra_info. `setup` (optional) returns fn's positional args, fresh for each round."""

    def run(fn, *, component, variant, backend, flops, bytes, setup=None, updates=None):
        device = bench_setup.device

        def target(*args):
            fn(*args)
            sync(device)

        def prepared():
            args = setup()
            sync(device)
            return args, {}

        benchmark.pedantic(target, setup=prepared if setup else None,
                           rounds=bench_setup.rounds_for(backend), warmup_rounds=bench_setup.warmup,
                           iterations=1)
        info = benchmark.extra_info
        info.update(component=component, variant=variant, backend=backend, flops=flops, bytes=bytes,
                    size=bench_setup.size.name, device=str(device), torch_threads=torch.get_num_threads())
        if updates:
            info["updates_per_round"] = updates
        if benchmark.stats is not None:
            median = benchmark.stats.stats.median
            info.update(median_s=median, gflop_per_s=flops / median / 1e9, gb_per_s=bytes / median / 1e9)

    return run
