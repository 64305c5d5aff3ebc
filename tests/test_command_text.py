"""What the training command prints about itself is true: the preset line and --help."""
import re

import numpy as np
import pytest

from fastbdm import train as train_cli


def parsed(*argv):
    return train_cli.build_parser().parse_args(list(argv))


def test_preset_line_prints_the_values_the_run_uses_and_marks_overrides():
    args = parsed("--env", "hopper-medium-replay", "--w-rel", "0", "--w-actor-bc", "0.2")
    line = train_cli.preset_line(args, train_cli.resolve_config(args))
    assert line.startswith("preset hopper-medium-replay, algo td3sbc: ")
    assert "w_actor_bc=0.2 (preset 0.05)" in line
    assert "w_rel=0.0 (preset 1.0)" in line
    assert re.search(r"w_critic_bc=0\.5(,|$)", line)  # not overridden: the preset's value, unmarked


def test_preset_line_without_overrides_has_no_marks():
    args = parsed("--env", "walker2d-medium")
    line = train_cli.preset_line(args, train_cli.resolve_config(args))
    assert line == "preset walker2d-medium, algo td3sbc: w_actor_bc=0.05, w_critic_bc=0.1, w_rel=0.1"


def test_the_command_prints_the_overridden_value(tmp_path, capsys, monkeypatch):
    """End to end: the line the run prints once its data are loaded (training itself is skipped)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, observations=rng.normal(size=(8, 17)), actions=rng.uniform(-1, 1, (8, 6)), rewards=np.zeros(8),
             terminals=np.zeros(8, bool))
    monkeypatch.setattr(train_cli, "train_batch", lambda args, records, *rest: [0.0] * len(records))
    code = train_cli.main(["--env", "halfcheetah-medium-replay", "--w-rel", "0", "--device", "cpu",
                           "--dataset", str(path), "--no-progress", "--out", str(tmp_path)])
    assert code == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "w_rel=0.0 (preset 0.1)" in first and "w_actor_bc=0.01," in first


def help_entries(monkeypatch) -> dict:
    """--help, one entry per option: {'--flag': its help text on one line}."""
    monkeypatch.setenv("COLUMNS", "400")  # one line per help text
    text = train_cli.build_parser().format_help().split("options:\n", 1)[1]
    entries = {}
    for block in re.split(r"\n(?=  -)", text):  # an entry: "  --flag ARG  help", the help maybe on the next line
        flag, _, rest = block.strip().partition(" ")
        entries[flag.rstrip(",")] = " ".join(rest.split())
    return entries


def test_help_shows_each_default_at_most_once(monkeypatch):
    entries = help_entries(monkeypatch)
    assert len(entries) > 25, entries  # every option was parsed out of the help text
    doubled = {flag: text for flag, text in entries.items() if text.count("default") > 1}
    assert not doubled, doubled
    assert "(default: None)" not in "".join(entries.values())


@pytest.mark.parametrize("flag,shown", [("--steps", "(default: 1000000)"), ("--w-rel", "(default: the preset's)"),
                                        ("--graphs", "(default: on with CUDA; ignored on CPU)")])
def test_help_still_shows_defaults(monkeypatch, flag, shown):
    assert help_entries(monkeypatch)[flag].endswith(shown)


class _Transitions(list):
    def __init__(self, n, source, source_kind):
        super().__init__(range(n))
        self.source, self.source_kind, self.partial = source, source_kind, False


@pytest.mark.parametrize("source, kind, line", [
    ("minari:fastbdm/halfcheetah/medium-replay-v0 (generated)", "generated",
     "dataset: 5 transitions from minari:fastbdm/halfcheetah/medium-replay-v0 (generated)"),
    ("/data/tiny.npz", "npz", "dataset: 5 transitions from /data/tiny.npz (npz)")])
def test_the_dataset_line_names_its_kind_once(source, kind, line):
    assert train_cli.dataset_line(_Transitions(5, source, kind)) == line
