"""A seed's run directory OUT/ENV/seedK: config.json, metrics.csv/jsonl (+ TensorBoard), checkpoint.pt.

A SeedRecord is what one seed of the training command writes, whether the seed trains alone or in a
batch of seeds (fastbdm.seed_runs): the directory's format does not depend on it, so that --resume,
fastbdm.report and a single-seed resume of a seed trained in a batch read it alike.
"""
import csv
import io
import json
import shutil
import sys
from concurrent.futures import Future
from pathlib import Path

import torch

from .checkpoint import CheckpointError, has_checkpoint, load_latest, rng_state, save_checkpoint, space_needed
from .durable import DurableWriteError, megabytes, sync_file, write_durable, write_error
from .monitor import METRICS

EVAL_COLUMNS = ("eval_return", "eval_score")
COLUMNS = ("step", "updates_per_s", *METRICS, *EVAL_COLUMNS)
CHECKPOINT = "checkpoint.pt"


class TrainingError(Exception):
    """A run cannot go on; the message is one line for the user."""


class MetricsLog:
    """metrics.csv and metrics.jsonl (one row per log step), TensorBoard events when available.

    keep_until (resume): the rows up to that update are kept, rewritten durably; a line that does not
    parse (cut short by a crash; rows up to a checkpoint are synced before it) is dropped with a note."""

    def __init__(self, run_dir: Path, keep_until: int = None):
        self.csv_path, self.jsonl_path = run_dir / "metrics.csv", run_dir / "metrics.jsonl"
        rows = []
        if keep_until is not None and self.jsonl_path.exists():
            rows = [r for r in self._read_rows() if r["step"] <= keep_until]
        csv_text = io.StringIO(newline="")
        writer = csv.DictWriter(csv_text, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        write_durable(self.csv_path, csv_text.getvalue().encode())
        write_durable(self.jsonl_path, "".join(json.dumps(row) + "\n" for row in rows).encode())
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            pass

    def _read_rows(self) -> list:
        rows = []
        for number, line in enumerate(self.jsonl_path.read_text().splitlines(), 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"note: {self.jsonl_path} line {number} was cut short by a crash and is dropped", file=sys.stderr)
        return rows

    def _append(self, row: dict) -> None:
        try:
            with self.csv_path.open("a", newline="") as f:
                csv.DictWriter(f, COLUMNS).writerow(row)
            with self.jsonl_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as exc:
            raise TrainingError(str(write_error(self.csv_path.parent, f"cannot append the row of update {row['step']}",
                                                len(json.dumps(row)), exc))) from None

    def sync(self) -> None:
        """Make the rows written so far durable (before a checkpoint that counts on them)."""
        sync_file(self.csv_path)
        sync_file(self.jsonl_path)

    def write(self, row: dict) -> None:
        self._append(row)
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "step":
                    self.tensorboard.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def check_free_space(ckpt_path: Path, size: int) -> None:
    """TrainingError unless the run directory has room for the run's checkpoints of `size` bytes."""
    needed, free = space_needed(ckpt_path, size), shutil.disk_usage(ckpt_path.parent).free
    if free < needed:
        raise TrainingError(f"{ckpt_path.parent} has {megabytes(free)} free but the run's checkpoints need "
                            f"{megabytes(needed)} there ({megabytes(size)} each: the latest, the previous and one "
                            "being written); free some space or pass --out elsewhere")


def finished(evaluation: Future) -> bool:
    """Whether an evaluation ended with a result (not pending, cancelled or failed)."""
    return evaluation.done() and not evaluation.cancelled() and evaluation.exception() is None


class SeedRecord:
    """Seed `seed`'s run directory under args.out/args.env. On creation: refuses a finished run without
    --resume and --resume without a checkpoint; with --resume, `state` is the checkpoint continued from
    (tensors on `device`, where a CUDA Adam keeps its tensor lr; its note, when it fell back to the
    previous checkpoint, printed), else None."""

    def __init__(self, args, seed: int, device: torch.device):
        self.seed, self.algo, self.env = seed, args.algo, args.env
        self.run_dir = Path(args.out) / args.env / f"seed{seed}"
        self.ckpt_path = self.run_dir / CHECKPOINT
        if has_checkpoint(self.ckpt_path) and not args.resume:
            raise TrainingError(f"{self.run_dir} already holds a run; pass --resume to continue it or --out to "
                                "start elsewhere")
        if args.resume and not has_checkpoint(self.ckpt_path):
            raise TrainingError(f"--resume: no checkpoint in {self.run_dir}; run without --resume to start it")
        self.state = None
        if args.resume:
            try:
                self.state, note = load_latest(self.ckpt_path, device)
            except CheckpointError as exc:
                raise TrainingError(f"{exc}; start a new run or point --out at another run") from None
            if note:
                print(f"note: {note}", file=sys.stderr, flush=True)
            trained = self.state.get("algo", "td3sbc")
            if trained != args.algo:
                raise TrainingError(f"--resume: {self.run_dir} was trained with --algo {trained}; "
                                    f"pass --algo {trained}")
        self.run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def start(self) -> int:
        """The update count the seed starts from: its checkpoint's, or 0."""
        return 0 if self.state is None else self.state["step"]

    def generator_state(self):
        """The checkpoint's state of the seed's update stream (torch.Generator.get_state), or None: none
        resumed, or a checkpoint from before per-seed streams (its resumed updates then draw afresh)."""
        state = None if self.state is None else self.state["rng"].get("updates")
        return None if state is None else state.cpu()  # Generator.set_state takes a CPU ByteTensor

    def write_config(self, run: dict) -> None:
        """config.json: `run` (the command's settings) with this seed."""
        write_durable(self.run_dir / "config.json", json.dumps({**run, "seed": self.seed}, indent=2,
                                                               default=str).encode())

    def save(self, log, step: int, agent_state: dict, optimizer_states: dict, monitor_state: dict,
             generator: torch.Generator) -> None:
        """checkpoint.pt at update `step` (fastbdm.checkpoint's format), after making `log`'s rows durable."""
        log.sync()  # the rows up to `step` are on disk before the checkpoint that counts on them
        try:
            save_checkpoint(self.ckpt_path, {
                "step": step, "agent": agent_state, "optimizers": optimizer_states, "monitor": monitor_state,
                "rng": {**rng_state(), "updates": generator.get_state()}, "env": self.env, "seed": self.seed,
                "algo": self.algo,
            })
        except DurableWriteError as exc:
            kept = ("the previous checkpoint and every metric row are" if has_checkpoint(self.ckpt_path)
                    else "every metric row is")
            raise TrainingError(f"{exc}; {kept} kept") from None
