"""fastbdm.monitor.UpdateMonitor: running means of the finite values, counts of every record, the first
update where a term was NaN or inf; one seed's monitor, or S seeds' stacked (UpdateMonitor.stack); each
recording in torch kernels and in its one fused launch."""
import math

import pytest
import torch

from fastbdm.monitor import UpdateMonitor

NAN, INF = float("nan"), float("inf")
# both record paths: seven torch kernels, or one Triton launch (kernels/record_metrics.py, the triton backend's)
FUSED = pytest.mark.parametrize("fused", [False, True], ids=["torch", "fused"])
# updates of a run with policy delay 2: the actor's terms on every second update, some non-finite
UPDATES = [{"critic_loss": 1.0, "q_mean": 2.0}, {"critic_loss": NAN, "q_mean": 4.0, "actor_loss": -1.0, "bc": 0.5},
           {"critic_loss": 3.0, "q_mean": -INF}, {"critic_loss": 5.0, "q_mean": 6.0, "actor_loss": INF, "bc": 1.5}]


def expected(updates, start=0):
    """(means of the finite values over all records, {term: first non-finite update number}) by hand."""
    sums, counts, first = {}, {}, {}
    for step, metrics in enumerate(updates, start + 1):
        for name, value in metrics.items():
            counts[name] = counts.get(name, 0) + 1
            sums[name] = sums.get(name, 0.0) + (value if math.isfinite(value) else 0.0)
            if not math.isfinite(value):
                first.setdefault(name, step)
    return {n: sums[n] / counts[n] for n in counts}, first


@FUSED
def test_record_read_and_nonfinite_follow_the_records(fused):
    monitor = UpdateMonitor("cpu", fused=fused)
    for metrics in UPDATES:
        monitor.record({n: torch.tensor(v) for n, v in metrics.items()})
    means, first = expected(UPDATES)
    assert monitor.read() == means  # critic_loss (1 + 0 + 3 + 5) / 4: a NaN counts as a record of 0
    assert monitor.nonfinite() == sorted(first.items(), key=lambda x: x[1]) == [
        ("critic_loss", 2), ("q_mean", 3), ("actor_loss", 4)]
    assert monitor.read() == {}  # read resets the sums, not the non-finite record
    state = monitor.state_dict()
    assert state == {"step": 4, "first_nonfinite": [2, 3, -1, -1, 4, -1, -1, -1]}
    resumed = UpdateMonitor("cpu", fused=fused)
    resumed.load_state_dict(state)
    resumed.record({"critic_loss": torch.tensor(NAN)})  # not the first: update 2 stays
    assert resumed.nonfinite() == monitor.nonfinite() and resumed.state_dict()["step"] == 5


@FUSED
def test_stacked_monitors_record_each_seed_as_its_own_monitor(fused):
    """UpdateMonitor.stack: one record of (S,) values updates seed k's monitor as recording seed k's
    values into it alone would, from the state it had (a resumed seed's step and non-finite record)."""
    seeds = 3
    runs = [[{n: v * (seed + 1) if seed != 1 or n != "q_mean" else 1.0 for n, v in m.items()} for m in UPDATES]
            for seed in range(seeds)]
    resumed = {"step": 7, "first_nonfinite": [-1, -1, -1, -1, -1, 2, -1, -1]}
    alone, joined = [UpdateMonitor("cpu", fused=fused) for _ in range(seeds)], [UpdateMonitor("cpu", fused=fused) for _ in range(seeds)]
    for monitors in (alone, joined):
        monitors[2].load_state_dict(resumed)
    stacked = UpdateMonitor.stack(joined)
    for i, metrics in enumerate(UPDATES):
        for seed, monitor in enumerate(alone):
            monitor.record({n: torch.tensor(runs[seed][i][n]) for n in metrics})
        stacked.record({n: torch.tensor([runs[seed][i][n] for seed in range(seeds)]) for n in metrics})
    for one, other in zip(alone, joined):
        assert other.nonfinite() == one.nonfinite() and other.state_dict() == one.state_dict()
        assert other.read() == one.read()
    assert joined[2].state_dict()["step"] == 11 and joined[2].nonfinite()[0] == ("bc", 2)
    assert joined[1].nonfinite() == [("critic_loss", 2), ("actor_loss", 4)]  # its q_mean was always finite
    assert stacked.sums.abs().sum() == 0  # each seed's read reset its slice of the stack


@FUSED
def test_a_pair_in_one_record_equals_its_two_updates_recorded_one_by_one(fused):
    """record(first, second): each update keeps its own number in the non-finite record (update 2's NaN
    critic_loss is update 2, not 1 or 3) and the first's absent actor terms count nothing; one seed or
    S seeds stacked, single records and pairs mixed as the runner mixes them."""
    by_one, by_pairs = UpdateMonitor("cpu", fused=fused), UpdateMonitor("cpu", fused=fused)
    grouping = [[UPDATES[0]], UPDATES[1:3], [UPDATES[3]], UPDATES[:2], UPDATES[2:]]
    for group in grouping:
        for metrics in group:
            by_one.record({n: torch.tensor(v) for n, v in metrics.items()})
        by_pairs.record(*({n: torch.tensor(v) for n, v in metrics.items()} for metrics in group))
    means, first = expected([m for group in grouping for m in group])
    assert by_pairs.read() == by_one.read() == means  # actor_loss, bc: 4 records, not 8
    assert by_pairs.state_dict() == by_one.state_dict() == {"step": 8, "first_nonfinite": [2, 3, -1, -1, 4, -1, -1, -1]}
    seeds = 3  # seed 1's critic_loss is finite on the pair's first update, NaN on its second
    runs = [[{n: v * (seed + 1) if seed != 1 or n != "critic_loss" else (NAN if i % 2 else 1.0) for n, v in m.items()}
             for i, m in enumerate(UPDATES)] for seed in range(seeds)]
    alone = [UpdateMonitor("cpu", fused=fused) for _ in range(seeds)]
    stacked = UpdateMonitor.stack(joined := [UpdateMonitor("cpu", fused=fused) for _ in range(seeds)])
    for pair in ((0, 1), (2, 3)):
        for seed, monitor in enumerate(alone):
            for i in pair:
                monitor.record({n: torch.tensor(v) for n, v in runs[seed][i].items()})
        stacked.record(*({n: torch.tensor([runs[seed][i][n] for seed in range(seeds)]) for n in UPDATES[i]}
                         for i in pair))
    for one, other in zip(alone, joined):
        assert other.state_dict() == one.state_dict() and other.read() == one.read()
    assert joined[1].nonfinite() == [("critic_loss", 2), ("q_mean", 3), ("actor_loss", 4)]


@FUSED
def test_record_refuses_more_updates_than_a_pair(fused):
    with pytest.raises(ValueError, match="1 to 2 updates"):
        UpdateMonitor("cpu", fused=fused).record(*[{"critic_loss": torch.tensor(1.0)}] * 3)


@pytest.mark.parametrize("seeds", [None, 3])
def test_a_record_is_seven_torch_kernels_or_one_fused_launch(seeds):
    from fastbdm.launch_count import LaunchCounter

    lead = () if seeds is None else (seeds,)
    pair = [{n: torch.full(lead, v) for n, v in metrics.items()} for metrics in UPDATES[:2]]
    for fused, launches in ((False, 7), (True, 1)):
        monitor = UpdateMonitor("cpu", seeds=seeds, fused=fused)
        monitor.record(*pair)  # the cached index tensors exist before the counted record
        with LaunchCounter() as counter:
            monitor.record(*pair)
        assert counter.total() == launches, fused
