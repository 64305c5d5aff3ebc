"""profiling/kernel_model.py: its FLOP counts against hand counts, and its launch term built from the
launch counter's number (profiling/launch_count.py) and micro.json's measured gap."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "profiling", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model():
    return load("kernel_model")


def test_flops_of_the_chain_and_a_denoiser_forward_match_hand_counts(model):
    # D's layers at halfcheetah: 41 -> 512 -> 512 -> 17, 2 FLOPs per multiply-add
    assert model.denoiser_row_flops(41) == 2 * (41 * 512 + 512 * 512 + 512 * 17) == 583_680
    # the chain on 4 rows: the s (17) and a (6) columns of layer 1 once, then per level x (17), W2, W_out
    assert model.chain_flops(4) == 2 * 4 * 23 * 512 + 10 * 2 * 4 * (17 * 512 + 512 * 512 + 512 * 17)
    device, rates = model.H100, model.Rates.from_micro(None, model.H100)
    result = model.predict("merged", 1024, 1, "tf32", device, rates, {}, launches=100)
    rows = {k["kernel"]: k for k in result["kernels"]}
    # per update one launch of D' (B rows), D (2B) and E (B rows, input 18 wide): FLOPs summed, programs side by side
    group = rows["D', D, E forward (one launch), 4B"]
    assert group["gflop"] == pytest.approx(2 * (3 * 1024 * 583_680 + 1024 * model.denoiser_row_flops(18)) / 1e9)
    assert group["programs"] == 16 + 32 + 16 and group["launches"] == 2
    old = {k["kernel"]: k for k in model.predict("old", 1024, 1, "tf32", device, rates, {}, 100)["kernels"]}
    assert old["D forward (train), 2B"]["gflop"] == pytest.approx(2 * 2048 * 583_680 / 1e9)  # 2 launches
    # one wave either way: the group takes its slowest part's time, the old design the sum of three launches'
    separate = sum(old[name]["us"] for name in ("D forward (train), 2B", "E forward (train), B", "D' on x2, B"))
    assert group["us"] < separate / 2
    assert rows["reverse chain 4096 rows"]["gflop"] == pytest.approx(model.chain_flops(4096) / 1e9)
    assert result["serial_chain_levels_per_pair"] == 10
    assert model.predict("old", 1024, 1, "tf32", device, rates, {}, 100)["serial_chain_levels_per_pair"] == 30


def test_launch_term_is_the_counters_launches_times_the_measured_gap(model, tmp_path):
    micro = {"parts": {"graph_gap": {"plain": {"us_per_dependent_kernel": 3.0}}}}
    bench = {"benchmarks": [{"extra_info": {"component": "update", "variant": "triton+graphs", "median_s": 1e-3,
                                            "updates_per_round": 2}}]}
    (tmp_path / "micro.json").write_text(json.dumps(micro))
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    (tmp_path / "resources.json").write_text("{}")
    rows = model.main(["--batch", "1024", "--seeds", "1", "--precision", "tf32", "--device", "H100", "--micro",
                       str(tmp_path / "micro.json"), "--bench", str(tmp_path / "bench.json"), "--resources",
                       str(tmp_path / "resources.json")])
    from benches.workloads import SIZES  # importable once kernel_model put the repository root on sys.path

    counted = model.launch_count.count_pair("td3sbc", "triton", SIZES["small"], "cpu")["launches"]
    serial = model.launch_count.count_pair("td3sbc", "triton+streams", SIZES["small"], "cpu")["serial"]
    by_design = {r["design"]: r for r in rows}
    assert by_design["merged"]["launches_per_pair"] == by_design["merged"]["serial_launches_per_pair"] == counted <= 60
    assert by_design["merged"]["launch_us_per_update"] == pytest.approx(counted * 3.0 / 2)
    assert by_design["old"]["launch_us_per_update"] == pytest.approx(model.OLD_LAUNCHES_PER_PAIR * 3.0 / 2)
    # the weight-stationary chain: the same launches, a shorter chain; two streams: the same launches, fewer of
    # them one after another, the kernels' term unchanged
    assert by_design["stationary"]["launch_us_per_update"] == by_design["merged"]["launch_us_per_update"]
    assert by_design["stationary"]["kernel_us_per_update"] < by_design["merged"]["kernel_us_per_update"]
    assert by_design["streams"]["launches_per_pair"] == counted
    assert by_design["streams"]["launch_us_per_update"] == pytest.approx(serial * 3.0 / 2)
    assert serial < counted
    assert by_design["streams"]["kernel_us_per_update"] == by_design["stationary"]["kernel_us_per_update"]
    assert model.measured(bench, micro) == {"triton+graphs": pytest.approx(500.0)}


def test_seed_batches_run_one_stream_with_their_counted_launches_extrapolated_in_seeds(model):
    """S > 1: a SeedBatch's pair (counted at S = 2 and 3) grows by the per-seed draws; no streams design."""
    by_design = model.launches_by_design(56, 47, seeds=8, seed_batch=(105, 107))
    assert by_design == {"old": (model.OLD_LAUNCHES_PER_PAIR,) * 2, "merged": (117, 117), "stationary": (117, 117)}
    assert model.launches_by_design(56, 47)["streams"] == (47, 56)
    assert model.launches_by_design(56, 47)["stationary"] == (56, 56)
