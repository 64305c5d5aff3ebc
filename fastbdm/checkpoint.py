"""Checkpoints that are safe to open and survive a power cut, and every RNG stream a run depends on.

A checkpoint file is `torch.save({"format", "step", "sha256", "payload"})`: payload is the uint8 bytes
of `torch.save(state)` and sha256 its checksum. Both levels load with `weights_only=True` (tensors
and plain values only: a file that would run code when unpickled is refused). Saves are durable
(fastbdm.durable) and keep the file before as checkpoint.prev.pt, which a resume falls back to when
the latest is missing, truncated or corrupted. Format 1 files (plain `torch.save(state)` with numpy's
RNG state as a numpy array, written up to commit 6ed2166) still load and are converted.
"""
import hashlib
import io
import os
import random
import re
from pathlib import Path
from typing import Iterable, Optional, Tuple

import numpy as np
import torch

from .durable import write_durable

FORMAT = "fastbdm-checkpoint-2"
KEPT = 2  # the latest checkpoint and the previous one
_reconstruct = np.zeros(0).__reduce__()[0]  # numpy's array constructor for pickles
# numpy arrays (format 1 stored numpy's RNG key as one) under numpy 1 and 2 names: building one runs no code
NUMPY_ARRAY_GLOBALS = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), (_reconstruct, "numpy.core.multiarray._reconstruct"),
                       (_reconstruct, "numpy._core.multiarray._reconstruct")]


class CheckpointError(Exception):
    """A checkpoint cannot be used; the message is one line."""


def rng_state() -> dict:
    """The torch, numpy, python (and cuda) RNG states as tensors and plain values."""
    state = {"torch": torch.get_rng_state(), "numpy": _plain_numpy_state(np.random.get_state()),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _plain_numpy_state(state: tuple) -> dict:
    """numpy's legacy RNG state (name, key (624,) uint32, pos, has_gauss, gauss) as a tensor and plain values."""
    name, key, pos, has_gauss, gauss = state
    return {"bit_generator": str(name), "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    numpy = state["numpy"]
    np.random.set_state((numpy["bit_generator"], numpy["key"].cpu().numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def previous_path(path: Path) -> Path:
    """checkpoint.pt -> checkpoint.prev.pt"""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def damaged_path(path: Path) -> Path:
    """checkpoint.pt -> checkpoint.damaged.pt"""
    return path.with_name(f"{path.stem}.damaged{path.suffix}")


def has_checkpoint(path: Path) -> bool:
    """Whether `path` or its previous checkpoint exists."""
    return path.exists() or previous_path(path).exists()


def _serialize(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` (tensors and plain values; state["step"] the update count) to `path` durably; the
    checkpoint there before becomes checkpoint.prev.pt once the new one is on disk.
    DurableWriteError (one line) when it cannot be written: no temporary file is left."""
    path = Path(path)
    payload = _serialize(state)
    data = _serialize({"format": FORMAT, "step": int(state["step"]), "sha256": hashlib.sha256(payload).hexdigest(),
                       "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)})
    write_durable(path, data, previous=previous_path(path))


def _load_safely(source, path: Path, map_location):
    """torch.load with weights_only=True; CheckpointError for what is refused or unreadable."""
    try:
        with torch.serialization.safe_globals(NUMPY_ARRAY_GLOBALS):
            return torch.load(source, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        if str(exc).startswith("Weights only load failed"):
            culprit = re.search(r"GLOBAL (\S+)|got (<[^>]+>)", str(exc))
            named = f" ({next(g for g in culprit.groups() if g)})" if culprit else ""
            raise CheckpointError(f"checkpoint {path} is refused: it holds objects other than tensors and plain "
                                  f"values{named}, which could run code when opened") from None
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted ({type(exc).__name__})") from None


def load_checkpoint(path: Path, device) -> dict:
    """The state saved at `path`, tensors on `device`, after checking its checksum.
    CheckpointError (one line) when it is refused, truncated or corrupted; FileNotFoundError when absent."""
    path = Path(path)
    stored = _load_safely(path, path, device)
    if isinstance(stored, dict) and stored.get("format") == FORMAT:
        payload = stored["payload"].cpu().numpy().tobytes()
        if hashlib.sha256(payload).hexdigest() != stored["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupted (its checksum does not match its content)")
        state = _load_safely(io.BytesIO(payload), path, device)
        if state.get("step") != stored["step"]:
            raise CheckpointError(f"checkpoint {path} is corrupted (update count {stored['step']} outside, "
                                  f"{state.get('step')} inside)")
        return state
    if isinstance(stored, dict) and {"step", "agent", "rng"} <= stored.keys():  # format 1
        stored["rng"]["numpy"] = _plain_numpy_state(stored["rng"]["numpy"])
        return stored
    raise CheckpointError(f"{path} is not a fastbdm checkpoint")


def load_latest(path: Path, device) -> Tuple[dict, Optional[str]]:
    """The checkpoint at `path`, or its previous checkpoint when that one is missing or unusable, and then a
    one-line note saying why (else None); an unusable latest is moved to checkpoint.damaged.pt, so that
    the next save keeps the previous one. CheckpointError when neither can be used."""
    path = Path(path)
    previous = previous_path(path)
    try:
        return load_checkpoint(path, device), None
    except FileNotFoundError:
        if not previous.exists():
            raise
        reason = f"{path} is missing"
    except CheckpointError as exc:
        if not previous.exists():
            raise
        reason = str(exc)
    try:
        state = load_checkpoint(previous, device)
    except CheckpointError as exc:
        raise CheckpointError(f"{reason}, and the previous one too: {exc}") from None
    if path.exists():
        os.replace(path, damaged_path(path))
        reason += f" (moved to {damaged_path(path).name})"
    return state, f"{reason}; resuming from {previous.name} at update {state['step']}"


def estimated_size(module: torch.nn.Module, optimizers: Iterable[torch.optim.Optimizer]) -> int:
    """Bytes of one checkpoint of `module` and its Adam `optimizers`: the state dict, two moments per
    optimised parameter, and 1 KiB per tensor plus 1 MiB for the archive and the RNG states."""
    tensors = list(module.state_dict().values())
    params = [p for opt in optimizers for group in opt.param_groups for p in group["params"]]
    data = sum(t.numel() * t.element_size() for t in tensors) + 2 * sum(p.numel() * p.element_size() for p in params)
    return data + 1024 * (len(tensors) + 3 * len(params)) + 2 ** 20


def space_needed(path: Path, size: int) -> int:
    """Free bytes a run needs beside `path` for its checkpoints of `size` bytes: the latest, the previous
    and the one being written, less those already there."""
    present = sum(p.exists() for p in (path, previous_path(path)))
    return size * (KEPT + 1 - present)
