"""Checkpoints: safe to open, durable, checked, kept beside the previous one; format 1 still loads."""
import errno
import os
import random
import subprocess

import numpy as np
import pytest
import torch

from fastbdm import TD3SBC
from fastbdm.checkpoint import (FORMAT, CheckpointError, estimated_size, load_checkpoint, load_latest, rng_state,
                                save_checkpoint, set_rng_state)
from fastbdm.durable import DurableWriteError


def state_at(step: int) -> dict:
    return {"step": step, "weights": torch.full((1000,), float(step)), "rng": rng_state()}


class CreatesFile:
    """Unpickled by an unrestricted loader, this opens (creates) `path` for writing."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def envelope(payload: bytes) -> dict:
    """A format 2 checkpoint around `payload` with a valid checksum (anyone can compute one)."""
    import hashlib

    return {"format": FORMAT, "step": 1, "sha256": hashlib.sha256(payload).hexdigest(),
            "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}


def test_a_pickle_that_would_create_a_file_is_refused_in_one_line(tmp_path):
    target = tmp_path / "created"
    torch.save({"step": 1, "agent": CreatesFile(target), "rng": {}}, tmp_path / "unsafe.pt")
    torch.load(tmp_path / "unsafe.pt", weights_only=False)  # what an unrestricted load does
    assert target.exists()
    target.unlink()

    torch.save({"step": 1, "agent": CreatesFile(target), "rng": {}}, tmp_path / "format1.pt")
    torch.save(envelope((tmp_path / "format1.pt").read_bytes()), tmp_path / "format2.pt")
    for name in ("format1.pt", "format2.pt"):
        with pytest.raises(CheckpointError) as refused:
            load_checkpoint(tmp_path / name, "cpu")
        message = str(refused.value)
        assert "\n" not in message and "refused" in message and "open" in message and name in message
        assert not target.exists()


def test_saves_fsync_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state_at(1))
    save_checkpoint(path, state_at(2))
    tmp, prev = f"{path}.tmp", str(tmp_path / "checkpoint.prev.pt")
    second = [("fsync", tmp), ("replace", str(path), prev), ("replace", tmp, str(path)), ("fsync", str(tmp_path))]
    assert events == second[:1] + second[2:] + second
    assert load_checkpoint(path, "cpu")["step"] == 2 and load_checkpoint(tmp_path / "checkpoint.prev.pt", "cpu")["step"] == 1


def test_a_checkpoint_holds_tensors_and_plain_values_only(tmp_path):
    save_checkpoint(tmp_path / "checkpoint.pt", state_at(3))
    stored = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # no allow-list needed
    assert stored["format"] == FORMAT and stored["step"] == 3 and len(stored["sha256"]) == 64


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    save_checkpoint(tmp_path / "checkpoint.pt", state_at(1))
    expected = torch.rand(3), np.random.rand(3), random.random()
    set_rng_state(load_checkpoint(tmp_path / "checkpoint.pt", "cpu")["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU check (pending until a GPU machine runs it)")
def test_a_checkpoint_loaded_onto_the_gpu_restores_the_cpu_and_cuda_rngs(tmp_path):
    save_checkpoint(tmp_path / "checkpoint.pt", state_at(1))
    expected = torch.rand(3), torch.rand(3, device="cuda")
    state = load_checkpoint(tmp_path / "checkpoint.pt", "cuda")
    assert state["weights"].is_cuda
    set_rng_state(state["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and torch.equal(torch.rand(3, device="cuda"), expected[1])


@pytest.mark.parametrize("damage", ["half", "flipped byte"])
def test_a_damaged_latest_is_reported_and_the_previous_one_used(tmp_path, damage):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state_at(1))
    save_checkpoint(path, state_at(2))
    data = bytearray(path.read_bytes())
    if damage == "half":
        data = data[:len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF  # inside the payload: only the checksum sees it
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated" if damage == "half" else "checksum"):
        load_checkpoint(path, "cpu")
    state, note = load_latest(path, "cpu")
    assert state["step"] == 1 and torch.equal(state["weights"], torch.full((1000,), 1.0))
    assert "\n" not in note and "checkpoint.prev.pt at update 1" in note
    assert not path.exists() and (tmp_path / "checkpoint.damaged.pt").exists()
    save_checkpoint(path, state_at(3))  # the next save keeps the good previous checkpoint
    assert load_checkpoint(tmp_path / "checkpoint.prev.pt", "cpu")["step"] == 1


def test_nothing_usable_is_one_line(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as only:
        load_latest(path, "cpu")
    (tmp_path / "checkpoint.prev.pt").write_bytes(b"")
    with pytest.raises(CheckpointError) as both:
        load_latest(path, "cpu")
    assert "\n" not in str(only.value) and "previous one too" in str(both.value) and "\n" not in str(both.value)


def fail_writes_to(suffix: str, monkeypatch, code=errno.ENOSPC):
    """os.write raises OSError(code) for files whose name ends with `suffix`, after writing 100 bytes."""
    write = os.write

    def failing_write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(suffix):
            if os.fstat(fd).st_size >= 100:
                raise OSError(code, os.strerror(code))
            return write(fd, bytes(data[:100]))
        return write(fd, data)

    monkeypatch.setattr(os, "write", failing_write)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EDQUOT])
def test_a_failed_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, code):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state_at(1))
    fail_writes_to("checkpoint.pt.tmp", monkeypatch, code)
    with pytest.raises(DurableWriteError) as failed:
        save_checkpoint(path, state_at(2))
    message = str(failed.value)
    assert "\n" not in message and str(tmp_path) in message and os.strerror(code) in message
    assert "MB free there" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert load_checkpoint(path, "cpu")["step"] == 1


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MB tmpfs at tmp_path/fs where this user may mount one (root), else a skip."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here; test_a_failed_save_is_one_line_... covers ENOSPC with a patched write")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_save_onto_a_full_tmpfs(small_tmpfs):
    path = small_tmpfs / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "weights": torch.zeros(100_000)})  # 0.4 MB
    with pytest.raises(DurableWriteError, match="No space left on device; it needs 0.8 MB free there"):
        save_checkpoint(path, {"step": 2, "weights": torch.zeros(200_000)})
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["checkpoint.pt"]
    assert load_checkpoint(path, "cpu")["step"] == 1


def format_1(state: dict) -> dict:
    """`state` laid out as fastbdm wrote checkpoints up to commit 6ed2166: numpy's RNG state as its tuple."""
    numpy = state["rng"]["numpy"]
    legacy = (numpy["bit_generator"], numpy["key"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
              numpy["gauss"])
    return {**state, "rng": {**state["rng"], "numpy": legacy}}


def test_format_1_checkpoints_load_and_convert(tmp_path):
    np.random.seed(7)
    np.random.rand(5)
    torch.save(format_1({"step": 9, "agent": {"w": torch.ones(3)}, "rng": rng_state()}), tmp_path / "checkpoint.pt")
    expected = np.random.rand(4)
    with pytest.raises(Exception, match="Weights only load failed"):  # numpy arrays are not allowed by default
        torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    state = load_checkpoint(tmp_path / "checkpoint.pt", "cpu")
    assert state["step"] == 9 and torch.equal(state["agent"]["w"], torch.ones(3))
    set_rng_state(state["rng"])
    assert np.array_equal(np.random.rand(4), expected)


def test_the_size_estimate_covers_a_checkpoint_of_a_trained_agent(tmp_path):
    agent = TD3SBC(17, 6)
    for opt in agent.optimizers.values():  # one Adam step gives every parameter its two moments
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        opt.step()
    save_checkpoint(tmp_path / "checkpoint.pt", {
        "step": 1, "agent": agent.state_dict(), "optimizers": {k: o.state_dict() for k, o in agent.optimizers.items()},
        "rng": rng_state()})
    size = (tmp_path / "checkpoint.pt").stat().st_size
    assert size <= estimated_size(agent, agent.optimizers.values()) <= 1.1 * size
