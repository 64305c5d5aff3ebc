"""profiling/micro.py's dry run (the CPU half of gpu_checks.sh's `micro` stage): its Triton kernels in
the interpreter against torch, and the JSON it leaves. The launch count's dry run (the ops of a
triton-backend update pair, ~4 interpreted updates) is left to `python profiling/micro.py --dry-run`."""
import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_micro_dry_run_checks_its_kernels_and_writes_the_json(tmp_path):
    spec = importlib.util.spec_from_file_location("micro", os.path.join(ROOT, "profiling", "micro.py"))
    micro = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(micro)
    parts = ["graph_gap", "grid_barrier", "l2_bandwidth", "mma"]
    micro.main(["--dry-run", "--out", str(tmp_path), "--parts", *parts])
    written = json.loads((tmp_path / "micro.json").read_text())
    assert written["dry_run"] is True and list(written["parts"]) == parts
    for name in parts[:3]:  # kernels checked against torch inside the part, else an "error: ..." string
        assert written["parts"][name]["status"] == "cuda-only", written["parts"][name]
    assert written["parts"]["grid_barrier"]["cluster_barrier"].startswith("not exposed")
    assert written["parts"]["mma"]["tf32_32x64x32"] == "checked in the interpreter"
    assert written["parts"]["mma"]["bf16_128x64x32"] == "cuda-only"


def test_micro_chains_dry_run_agree_in_the_interpreter(tmp_path):
    """The `chains` part (gpu_checks.sh stage chains): today's chain, the persistent and the staged
    weight-stationary chain on the same inputs agree (checked inside the part) and land in the JSON."""
    spec = importlib.util.spec_from_file_location("micro", os.path.join(ROOT, "profiling", "micro.py"))
    micro = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(micro)
    micro.main(["--dry-run", "--out", str(tmp_path), "--parts", "chains", "--json", "chains.json"])
    part = json.loads((tmp_path / "chains.json").read_text())["parts"]["chains"]
    assert part["status"] == "cuda-only", part
    assert part["ieee_B37_S2"]["weight_stationary_rel_diff"] < 1e-5
