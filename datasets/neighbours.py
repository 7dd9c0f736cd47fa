"""The neighbour file: ``run_knn.py`` writes it, ``main_distill.py`` reads it, and this module owns the contract.

A neighbour file is an ``[N, K]`` int64 ``.npy`` (row ``i``: the indices, in ImageFolder order of ``train/``, of
image ``i``'s bag members, nearest first, never ``i`` itself) and beside it a ``.json`` saying what made it: the
dataset it indexes (its file list, and a hash of a sample of its images' bytes) and the ``.npy``'s own hash, so a
``.json`` left from another run never vouches for a new ``.npy``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from datasets.folders import DatasetError, IndexedImageFolder, file_list_sha256
from utils.io import atomic_json, atomic_write, file_sha256

__all__ = ["neighbour_path", "meta_path", "bagging_kind", "dataset_fingerprint", "write_neighbours", "read_neighbours",
           "CONTENT_SAMPLE"]

CONTENT_SAMPLE = 64  # images whose bytes are hashed: a copy with the same names but other pixels is told apart


def neighbour_path(name: str) -> Path:
    """The official rule: a bare file name lives under ``./imgs_corr/``, a path is used as given; ``.npy`` is
    appended when the name lacks it (as ``np.save`` does)."""
    path = Path(name)
    if path.parent == Path("."):
        path = Path("imgs_corr") / path
    return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")


def meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def bagging_kind(path: Path) -> str | None:
    """The kind of bag (``knn``, ``kmeans``, ``random``, ``label``) the neighbour file's .json records; None when it
    has no readable record (a file of the official code, or an older run_knn.py, which made k-NN bags)."""
    try:
        meta = json.loads(meta_path(path).read_text())
    except (OSError, ValueError):
        return None
    return meta.get("bagging", "knn") if isinstance(meta, dict) else None


def dataset_fingerprint(dataset: IndexedImageFolder) -> dict[str, Any]:
    """What identifies the images a neighbour file indexes: the ordered (file, class) list, and the bytes of
    ``CONTENT_SAMPLE`` images spread evenly over it (reading every image of ImageNet would take minutes)."""
    n = len(dataset.samples)
    picks = sorted(set(np.linspace(0, n - 1, min(n, CONTENT_SAMPLE)).round().astype(int).tolist())) if n else []
    digest = hashlib.sha256()
    for i in picks:
        digest.update(f"{i}\t".encode())
        digest.update(dataset.raw_bytes(dataset.samples[i][0]))
    return {"num_images": n, "file_list_sha256": file_list_sha256(dataset), "content_sample_sha256":
            digest.hexdigest(), "content_sample_size": len(picks)}


def _save_npy(array: np.ndarray, path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    atomic_write(path, write)


def write_neighbours(path: Path, neighbours: np.ndarray, meta: dict[str, Any],
                     sims: np.ndarray | None = None) -> None:
    """``path`` (int64 ``.npy``), optionally ``<stem>_sims.npy``, then ``<stem>.json`` = ``meta`` + the ``.npy``'s
    hash. The old ``.json`` goes first: a run killed in between leaves a ``.npy`` with no ``.json`` (refused by the
    reader), never a new ``.npy`` beside an old ``.json``."""
    meta_file = meta_path(path)
    meta_file.unlink(missing_ok=True)
    _save_npy(np.ascontiguousarray(neighbours, dtype=np.int64), path)
    if sims is not None:
        _save_npy(np.ascontiguousarray(sims, dtype=np.float32), path.with_name(path.stem + "_sims.npy"))
    atomic_json({**meta, "npy_sha256": file_sha256(path)}, meta_file)


def read_neighbours(path: Path, dataset: IndexedImageFolder, columns: int, check_meta: bool,
                    report: Callable[[str], None] = print) -> np.ndarray:
    """The first ``columns`` columns of the neighbour file ``path``, as int64, after checking that it indexes
    ``dataset`` (shape, range, no image its own neighbour and, with ``check_meta``, the ``.json``: the same file
    list and sampled image bytes, and this very ``.npy``). Raises ``DatasetError`` with the fix otherwise."""
    n = len(dataset.samples)
    fix = f"Run run_knn.py on --data_dir={Path(dataset.root).parent} to make a matching file."
    if not path.is_file():
        raise DatasetError(f"--corr_npy: {path} does not exist. {fix}")
    try:
        neighbours = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path} is not a readable .npy ({error}). {fix}") from error
    if neighbours.ndim != 2 or neighbours.shape[0] != n:
        raise DatasetError(f"{path} has shape {neighbours.shape}, but {dataset.root} has {n} images. {fix}")
    if not np.issubdtype(neighbours.dtype, np.integer):
        raise DatasetError(f"{path} holds {neighbours.dtype}, not integer indices. {fix}")
    if neighbours.shape[1] < columns:
        raise DatasetError(f"{path} has {neighbours.shape[1]} columns; --clus_pos_num={columns} needs more")
    neighbours = np.asarray(neighbours[:, :columns], dtype=np.int64)
    if neighbours.min() < 0 or neighbours.max() >= n:
        raise DatasetError(f"{path} has indices outside [0, {n}). {fix}")
    selfs = int((neighbours == np.arange(n)[:, None]).sum())
    if selfs:
        raise DatasetError(f"{path} lists {selfs} images as their own neighbour. {fix}")
    if check_meta:
        _check_meta(path, dataset, fix, report)
    return neighbours


def _check_meta(path: Path, dataset: IndexedImageFolder, fix: str, report: Callable[[str], None]) -> None:
    meta_file = meta_path(path)
    if not meta_file.is_file():
        raise DatasetError(f"{meta_file} (written by run_knn.py beside the .npy) is missing. {fix} For an .npy made "
                           "by the official code, pass --nocheck_corr_json.")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as error:
        raise DatasetError(f"{meta_file} is not readable JSON ({error}). {fix}") from error
    if not isinstance(meta, dict):
        raise DatasetError(f"{meta_file} holds a JSON {type(meta).__name__}, not the object run_knn.py writes. {fix}")
    if "npy_sha256" in meta and meta["npy_sha256"] != file_sha256(path):
        raise DatasetError(f"{meta_file} describes another .npy than {path} (its hash differs: a run of run_knn.py "
                           f"was stopped between the two files, or one was copied alone). {fix}")
    mine = dataset_fingerprint(dataset)
    if meta.get("file_list_sha256") != mine["file_list_sha256"]:
        raise DatasetError(
            f"{path} was made for the dataset at {meta.get('data_root')} ({meta.get('num_images')} images, file "
            f"list {str(meta.get('file_list_sha256'))[:12]}), but --data_dir gives {dataset.root} "
            f"({mine['num_images']} images, file list {mine['file_list_sha256'][:12]}). {fix}")
    if "content_sample_sha256" in meta:
        if meta["content_sample_sha256"] != mine["content_sample_sha256"]:
            raise DatasetError(
                f"{path} was made for the dataset at {meta.get('data_root')}, whose file names match {dataset.root}'s "
                f"but whose images differ (bytes of {mine['content_sample_size']} sampled files). {fix} If the "
                "images are the same pictures re-encoded, pass --nocheck_corr_json.")
    if "npy_sha256" not in meta or "content_sample_sha256" not in meta:
        report(f"note: {meta_file} was written by an older run_knn.py: only the file names and labels were checked "
               "(rerun run_knn.py for the image-content and .npy checks)")
