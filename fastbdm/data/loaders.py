"""Readers for D4RL hdf5 files, npz files and Minari datasets, and `load_transitions`, which finds a
dataset by name in the order: explicit path, D4RL directories, local Minari root, Minari download
(only with download=True), local generation (unless generate=False).

Each source fixes the evaluation environment: D4RL hdf5 files and npz files with D4RL's keys (whose
collection environment is not recorded; their layout is D4RL's, so D4RL's is assumed) -> the task's
gymnasium v4 environment (the models of gym's v3, where D4RL's -v2 data were collected); Minari and
generated data -> the environment recorded in the dataset (v5 for ours and Minari's mujoco/ data).
Generated data that stopped short of their level (fastbdm.data.levels) load only with allow_partial.
"""
import json
import os
import socket
import zipfile
from pathlib import Path
from typing import Dict, Tuple

import h5py
import numpy as np

from .errors import DatasetError, PartialDatasetError
from .levels import level_of, shortfall_message
from .names import (ENV_IDS, d4rl_dirs, d4rl_filename, local_minari_ids, minari_root, parse_name,
                    partial_minari_id, remote_minari_id)
from .transitions import Transitions, build_transitions

D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")
HF_HOST = ("huggingface.co", 443)


def read_hdf5(path: Path) -> Dict[str, np.ndarray]:
    """Top-level D4RL arrays of an hdf5 file (infos/ and metadata/ groups are ignored)."""
    try:
        with h5py.File(path, "r") as f:
            return {k: f[k][()] for k in D4RL_KEYS if k in f and isinstance(f[k], h5py.Dataset)}
    except (OSError, KeyError, ValueError) as err:
        raise DatasetError(f"cannot read hdf5 file {path} ({err}); it is corrupted or not hdf5 - "
                           "delete it and download or generate it again.") from None


def read_npz(path: Path) -> Dict[str, np.ndarray]:
    """Arrays of an .npz file with D4RL's key names."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DatasetError(f"cannot read npz file {path} ({err}); it is corrupted - re-create it.") from None


def read_minari(path: Path) -> Tuple[Dict[str, np.ndarray], dict]:
    """A Minari dataset directory (the one holding data/, or data/ itself) as D4RL-layout arrays
    (s'_t = s_{t+1} within each episode; truncations become timeouts) and its metadata."""
    import minari

    data = path / "data" if (path / "data" / "metadata.json").exists() else path
    if not (data / "metadata.json").exists():
        raise DatasetError(f"{path} is not a Minari dataset directory (no data/metadata.json); "
                           "pass the directory that holds data/, an hdf5 file or an npz file.")
    try:
        dataset = minari.MinariDataset(data)
        columns = {k: [] for k in D4RL_KEYS}
        for ep in dataset.iterate_episodes():
            obs = np.asarray(ep.observations)
            columns["observations"].append(obs[:-1])
            columns["next_observations"].append(obs[1:])
            columns["actions"].append(np.asarray(ep.actions))
            columns["rewards"].append(np.asarray(ep.rewards))
            columns["terminals"].append(np.asarray(ep.terminations))
            columns["timeouts"].append(np.asarray(ep.truncations))
        metadata = dict(dataset.storage.metadata)
    except DatasetError:
        raise
    except Exception as err:  # Minari raises many kinds (json, h5py, assertion) on broken datasets
        raise DatasetError(f"cannot read Minari dataset {path} ({type(err).__name__}: {err}); "
                           "delete it and download or generate it again.") from None
    if not columns["observations"]:
        raise DatasetError(f"Minari dataset {path} has no episodes; delete it and generate it again.")
    return {k: np.concatenate(v) for k, v in columns.items()}, metadata


def minari_kind(metadata: dict) -> str:
    """'generated' for a dataset this project wrote (metadata key 'fastbdm'), else 'minari'."""
    return "generated" if "fastbdm" in metadata else "minari"


def recorded_env_id(metadata: dict, env: str) -> str:
    """The environment a Minari dataset records for evaluation (eval_env_spec, else env_spec); the
    task's v5 environment when it records none."""
    for key in ("eval_env_spec", "env_spec"):
        spec = metadata.get(key)
        if spec:
            return json.loads(spec)["id"] if isinstance(spec, str) else spec["id"]
    return ENV_IDS[env]


def read_path(path) -> Tuple[Dict[str, np.ndarray], dict, str]:
    """Read an explicit --dataset PATH: a Minari directory, a .hdf5/.h5 file or an .npz file;
    returns the arrays, the metadata and the source kind (Transitions.source_kind)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset path {path} does not exist; check --dataset (hdf5, npz or Minari directory).")
    if path.is_dir():
        raw, metadata = read_minari(path)
        return raw, metadata, minari_kind(metadata)
    if path.suffix in (".hdf5", ".h5"):
        return read_hdf5(path), {}, "d4rl"
    if path.suffix == ".npz":
        return read_npz(path), {}, "npz"
    raise DatasetError(f"dataset path {path} is neither .hdf5/.h5, .npz nor a Minari directory; "
                       "convert it to one of these.")


def download_minari(dataset_id: str) -> Path:
    """Download a Minari dataset into the local root, failing within seconds when offline."""
    import minari

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise DatasetError(f"cannot download {dataset_id}: HF_HUB_OFFLINE is set; unset it, "
                           "or drop --download to generate locally.")
    try:
        import huggingface_hub  # noqa: F401  (minari's remote storage)
    except ImportError:
        raise DatasetError(f"cannot download {dataset_id}: huggingface_hub is not installed; "
                           "pip install 'minari[hf]', or drop --download to generate locally.") from None
    try:
        socket.create_connection(HF_HOST, timeout=5).close()
    except OSError as err:
        raise DatasetError(f"cannot download {dataset_id}: {HF_HOST[0]} is unreachable ({err}); "
                           "drop --download to generate the dataset locally.") from None
    try:
        minari.download_dataset(dataset_id)
    except Exception as err:
        raise DatasetError(f"downloading {dataset_id} failed ({type(err).__name__}: {err}); "
                           "drop --download to generate the dataset locally.") from None
    return minari_root() / dataset_id


def refuse_partial(metadata: dict, where: str) -> None:
    """DatasetError naming the level missed when `metadata` is that of a partial generated dataset."""
    info = metadata.get("fastbdm")
    level = None if info is None else level_of(info)
    if level is not None and level["partial"]:
        raise DatasetError(f"{shortfall_message(info['name'], level, where)}; "
                           "or pass --allow-partial-dataset to train on it anyway")


def load_source(name: str, source: str, device="cpu") -> Transitions:
    """The transitions of dataset `name` read again from a recorded `Transitions.source` (a run's
    config.json "dataset"): a path, or 'minari:<id>' (with ' (generated)' appended for our own data)
    in the local Minari root. Nothing is downloaded or generated; a missing dataset is a DatasetError."""
    env, kind = parse_name(name)
    if source.startswith("minari:"):
        dataset_id = source.removeprefix("minari:").removesuffix(" (generated)")
        path = minari_root() / dataset_id
        if not (path / "data" / "metadata.json").exists():
            raise DatasetError(f"the run's dataset {source} is not in the Minari root {minari_root()}; set "
                               "MINARI_DATASETS_PATH or pass --dataset PATH")
    else:
        path = source
    # the run trained on it, so a partial dataset is what it was (and is labelled so)
    return load_transitions(f"{env}-{kind}", dataset_path=path, device=device, generate=False, allow_partial=True)


def load_transitions(name: str, dataset_path=None, device="cpu", download: bool = False, generate: bool = True,
                     generate_kwargs: dict = None, progress: bool = True, allow_partial: bool = False) -> Transitions:
    """The transitions of dataset `name` on `device`; the first source found wins:

    1. `dataset_path` (D4RL-layout hdf5, npz with the same keys, or a Minari dataset directory);
    2. a D4RL file (e.g. halfcheetah_medium_replay-v2.hdf5) in $D4RL_DATASET_DIR or ~/.d4rl/datasets;
    3. a local Minari dataset: mujoco/<env>/<kind>-v0 (Minari's), then fastbdm/<env>/<kind>-v0 (ours),
       then fastbdm/<env>/<kind>-partial-v0 (ours, short of its level);
    4. with download=True, Minari's download where a remote id exists (medium, expert);
    5. with generate=True, local generation (fastbdm.data.generate; `generate_kwargs` go to it).
    Generated data short of their level (a partial dataset) raise DatasetError unless allow_partial.
    Raises DatasetError when nothing is found or the data are unusable.
    """
    env, kind = parse_name(name)
    canonical = f"{env}-{kind}"
    root = minari_root()

    def from_minari(path: Path, source: str) -> Transitions:
        raw, meta = read_minari(path)
        if not allow_partial:
            refuse_partial(meta, source)
        return build_transitions(raw, canonical, source, device, meta, minari_kind(meta), recorded_env_id(meta, env))

    if dataset_path is not None:
        if Path(dataset_path).expanduser().is_dir():
            return from_minari(Path(dataset_path).expanduser(), str(dataset_path))
        raw, meta, source_kind = read_path(dataset_path)
        return build_transitions(raw, canonical, str(dataset_path), device, meta, source_kind)
    for directory in d4rl_dirs():
        file = directory / d4rl_filename(env, kind)
        if file.exists():
            return build_transitions(read_hdf5(file), canonical, str(file), device, source_kind="d4rl")
    for dataset_id in [*local_minari_ids(env, kind), partial_minari_id(env, kind)]:
        if (root / dataset_id / "data" / "metadata.json").exists():
            return from_minari(root / dataset_id, f"minari:{dataset_id}")
    remote = remote_minari_id(env, kind)
    if download and remote:
        return from_minari(download_minari(remote), f"minari:{remote}")
    if generate:
        from .generate import generate_dataset

        try:
            dataset_id = generate_dataset(canonical, progress=progress, **(generate_kwargs or {}))
        except PartialDatasetError as err:
            if not allow_partial:
                raise DatasetError(f"{err}; or pass --allow-partial-dataset to train on it anyway") from None
            dataset_id = err.dataset_id
        return from_minari(root / dataset_id, f"minari:{dataset_id} (generated)")
    places = [d / d4rl_filename(env, kind) for d in d4rl_dirs()] + [root / i for i in local_minari_ids(env, kind)]
    raise DatasetError(f"no {canonical} dataset found (looked at {', '.join(map(str, places))}); pass --dataset "
                       f"PATH, {'use --download, ' if remote else ''}or generate it: "
                       f"python -m fastbdm.data.generate --env {canonical}")
