"""Durable file writes: after a crash or power cut a file holds its old or its new content, never a
mix, and a failed write (disk full, permission, quota) leaves no temporary file behind.

A write goes to NAME.tmp beside the target, which is flushed and fsynced, renamed over the target,
and the directory is fsynced so that the rename itself is on disk.
"""
import contextlib
import os
import shutil
from pathlib import Path


class DurableWriteError(Exception):
    """A file could not be written; the message is one line naming the directory and the space needed."""


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def sync_file(path: Path) -> None:
    """fsync a file (or, opened read-only, a directory: makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(root: Path) -> None:
    """fsync every file and directory under `root`, `root` included."""
    for directory, _, files in os.walk(root):
        for name in files:
            sync_file(Path(directory) / name)
        sync_file(Path(directory))


def write_durable(path: Path, data: bytes, previous: Path = None) -> None:
    """Write `data` to `path` durably. With `previous`, the file at `path` (when there is one) is renamed to
    `previous` once the new content is on disk. DurableWriteError on failure, the temporary file removed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
        sync_file(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise write_error(path.parent, f"cannot write {path.name}", len(data), exc) from None


def write_error(directory: Path, what: str, size: int, exc: OSError) -> DurableWriteError:
    """One line: what failed in `directory`, why, and the free space it needs (`size` bytes) beside what is free."""
    try:
        free = f" ({megabytes(free_bytes(directory))} free now)"
    except OSError:
        free = ""
    return DurableWriteError(f"{what} in {directory}: {exc.strerror or exc}; it needs {megabytes(size)} free there{free}")
