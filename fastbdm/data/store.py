"""Writing a generated dataset into the local Minari root, all or nothing.

The dataset is first written under a hidden staging root inside the Minari root (hidden directories
are invisible to Minari and to our loaders), fsynced, then moved to its id with one rename and the
rename fsynced; an interruption or error removes the staging directory, so a half-written dataset can
never load as complete, not even after a power cut. A failed write (disk full, permission, quota) is
a one-line DatasetError naming the directory and the space needed.
"""
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import List

import minari
from minari.data_collector import EpisodeBuffer

from ..durable import DurableWriteError, sync_file, sync_tree, write_durable, write_error
from .errors import DatasetError
from .names import minari_root


@contextmanager
def _minari_root_at(path: Path):
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def dataset_dir(dataset_id: str) -> Path:
    return minari_root() / dataset_id


def ensure_absent(dataset_id: str) -> None:
    """DatasetError if `dataset_id` already exists (checked before spending time on generation)."""
    if dataset_dir(dataset_id).exists():
        raise DatasetError(f"Minari dataset {dataset_id} already exists at {dataset_dir(dataset_id)}; "
                           "delete that directory to generate it again.")


def write_minari(dataset_id: str, episodes: List[EpisodeBuffer], env_id: str, ref_scores: tuple,
                 description: str, extra_metadata: dict, replace: bool = False) -> Path:
    """Store `episodes` as Minari dataset `dataset_id` with D4RL reference scores (random, expert)
    and `extra_metadata` under the metadata key 'fastbdm'; returns the dataset directory.
    replace: an existing `dataset_id` is replaced (partial datasets: the newest attempt wins), else
    DatasetError."""
    if not replace:
        ensure_absent(dataset_id)
    root = minari_root()
    staging = root / f".staging-{uuid.uuid4().hex}"
    try:
        with _minari_root_at(staging):
            dataset = minari.create_dataset_from_buffers(
                dataset_id, buffer=episodes, env=env_id, eval_env=env_id, algorithm_name="fastbdm TD3",
                author="fastbdm", author_email="fastbdm@localhost", code_permalink="fastbdm/data/generate.py",
                ref_min_score=float(ref_scores[0]), ref_max_score=float(ref_scores[1]),
                description=description)
            dataset.storage.update_metadata({"fastbdm": extra_metadata})
        sync_tree(staging / dataset_id)
        for namespace_file in staging.rglob("namespace_metadata.json"):  # Minari's namespace records
            target = root / namespace_file.relative_to(staging)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                write_durable(target, namespace_file.read_bytes())
        final = dataset_dir(dataset_id)
        if final.exists():  # replace: the old one moves into the staging directory, removed below
            os.rename(final, staging / "replaced")
        os.rename(staging / dataset_id, final)
        for directory in final.relative_to(root).parents:  # the rename and new namespace directories
            sync_file(root / directory)
        return final
    except DurableWriteError as exc:
        raise DatasetError(str(exc)) from None
    except OSError as exc:
        size = sum(ep.observations.nbytes + ep.actions.nbytes + 3 * 8 * len(ep.rewards) for ep in episodes)
        raise DatasetError(f"{write_error(root, f'cannot write dataset {dataset_id}', size, exc)}; "
                           "nothing of it is kept") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
