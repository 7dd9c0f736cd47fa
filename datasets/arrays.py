"""Datasets released as arrays, read in place: CIFAR-10 and CIFAR-100 (the python release, ``cifar-10-batches-py/``,
``cifar-100-python/``), STL-10 (the binary release, ``stl10_binary/``) and the MNIST format (``idx``: a folder with
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte`` and the ``t10k-`` pair, gzipped or not, as MNIST,
Fashion-MNIST and KMNIST are released; Debian's ``dataset-fashion-mnist`` installs them in
``/usr/share/datasets/fashion-mnist``; the gray images are given as RGB, each channel the same). ``--data_dir``
names the release folder as downloaded; ``open_array_split`` recognises it by its files and gives a split that
``IndexedImageFolder`` reads as it reads a class folder: the same order every time (the release's), each image named
``<split>/<index>`` so that the neighbour file's fingerprint holds, labels from the release.

Splits: ``train``; ``val`` is the release's test set (``t10k`` in the MNIST format). STL-10's 100,000 unlabelled
images are for pre-training only: ``--data_dir=<stl10_binary>/unlabeled`` (or ``.../train+unlabeled``, the labelled
5,000 first) gives them as ``train``, without labels, and refuses ``val``. CIFAR's pickles are read without running
code: only numpy's array reconstruction is allowed to unpickle.
"""
from __future__ import annotations

import functools
import gzip
import importlib
import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["ArraySplit", "open_array_split", "ArrayError", "UNLABELED_SPLITS", "IDX_FILES", "idx_file", "read_idx"]

UNLABELED_SPLITS = ("unlabeled", "train+unlabeled")  # STL-10's pre-training sets, named as --data_dir's last part
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)]
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_MAGIC = {3: 0x0803, 1: 0x0801}  # unsigned bytes, 3 dimensions (images) / 1 (labels)


class ArrayError(RuntimeError):
    """A release folder with a missing or malformed file; the message names it and the expected layout."""


class ArraySplit:
    """One split of an array release: ``images`` ``uint8 [N, H, W, 3]`` (possibly a memory map), ``labels`` ``[N]``
    (None: no labels), the class names; ``folder`` is the pseudo-folder its images are named under."""

    def __init__(self, kind: str, release: Path, split: str, images: np.ndarray, labels: np.ndarray | None,
                 classes: list[str]) -> None:
        if labels is not None and len(labels) != len(images):
            raise ArrayError(f"{release}: {len(images)} images but {len(labels)} labels in its {split} split")
        self.kind, self.release, self.split = kind, release, split
        self.images, self.labels, self.classes = images, labels, classes
        self.folder = release / split

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def __len__(self) -> int:
        return len(self.images)

    def path(self, index: int) -> str:
        return str(self.folder / f"{index:06d}")

    def index(self, path: str) -> int:
        return int(Path(path).name)

    def samples(self) -> list[tuple[str, int]]:
        labels = self.labels if self.labels is not None else np.zeros(len(self.images), dtype=np.int64)
        return [(self.path(i), int(label)) for i, label in enumerate(labels)]

    def pixels(self, path: str) -> np.ndarray:
        """``uint8 [H, W, 3]`` of the image named ``path``."""
        return np.asarray(self.images[self.index(path)])

    def pil(self, path: str) -> Image.Image:
        return Image.fromarray(self.pixels(path))

    def raw(self, path: str) -> bytes:
        return self.pixels(path).tobytes()

    def describe(self) -> str:
        labels = f"{len(self.classes)} classes" if self.labelled else "no labels"
        return f"{len(self)} images of {self.kind}'s {self.split} split in {self.release}, {labels}"


class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, nothing else: a file that asks for any other object is refused.
    (``_codecs.encode`` turns text into bytes: Python 3 writes bytes so at pickle protocol 2, the release's.)"""

    ALLOWED = {("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return importlib.import_module("_codecs").encode
        short = module.rsplit(".", 1)[-1]
        if module.split(".")[0] != "numpy" or (short, name) not in self.ALLOWED:
            raise ArrayError(f"holds a pickled {module}.{name}, which a CIFAR release does not")
        module = module.replace("numpy.core", "numpy._core") if hasattr(np, "_core") else module
        return getattr(importlib.import_module(module), name)


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise ArrayError(f"{path} is missing")
    try:
        with open(path, "rb") as handle:
            data = _ArraysOnly(handle, encoding="bytes").load()
    except ArrayError as error:
        raise ArrayError(f"{path} {error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise ArrayError(f"{path} is not a readable CIFAR pickle ({error})") from error
    if not isinstance(data, dict):
        raise ArrayError(f"{path} holds a {type(data).__name__}, not CIFAR's dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def _cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    if "data" not in batch or label_key not in batch:
        raise ArrayError(f"{path} has no '{label_key}' or 'data' entry (keys: {sorted(batch)[:5]})")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ArrayError(f"{path}: 'data' has shape {data.shape}, not [N, 3072]")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(batch[label_key], dtype=np.int64)


def _names(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _cifar(release: Path, kind: str, split: str) -> ArraySplit:
    if kind == "cifar10":
        files = CIFAR10_FILES if split == "train" else ["test_batch"]
        label_key, classes = "labels", _names(_unpickle(release / "batches.meta").get("label_names", []))
    else:
        files, label_key = ["train" if split == "train" else "test"], "fine_labels"
        classes = _names(_unpickle(release / "meta").get("fine_label_names", []))
    parts = [_cifar_batch(release / name, label_key) for name in files]
    images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if len(classes) == 0 or labels.min() < 0 or labels.max() >= len(classes):
        raise ArrayError(f"{release}: labels outside the {len(classes)} class names of its meta file")
    return ArraySplit(kind, release, split, images, labels, classes)


def _stl_images(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ArrayError(f"{path} is missing")
    size = path.stat().st_size
    if size % (3 * 96 * 96):
        raise ArrayError(f"{path} holds {size} bytes, not a whole number of 3x96x96 images")
    stored = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, 96, 96)
    return stored.transpose(0, 3, 2, 1)  # stored column-major: [N, C, W, H] -> [N, H, W, C]


def _stl_labels(path: Path, count: int) -> np.ndarray:
    if not path.is_file():
        raise ArrayError(f"{path} is missing")
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1  # the release numbers classes from 1
    if len(labels) != count or labels.min() < 0 or labels.max() > 9:
        raise ArrayError(f"{path}: {len(labels)} labels in 1..10 expected {count}")
    return labels


def _stl(release: Path, split: str) -> ArraySplit:
    names_file = release / "class_names.txt"
    classes = names_file.read_text().split() if names_file.is_file() else [str(i) for i in range(10)]
    if split in UNLABELED_SPLITS:
        unlabeled = _stl_images(release / "unlabeled_X.bin")
        images = unlabeled if split == "unlabeled" else _Concatenated(_stl_images(release / "train_X.bin"), unlabeled)
        return ArraySplit("stl10", release, split, images, None, classes)
    stem = "train" if split == "train" else "test"
    images = _stl_images(release / f"{stem}_X.bin")
    return ArraySplit("stl10", release, split, images, _stl_labels(release / f"{stem}_y.bin", len(images)), classes)


class _Concatenated:
    """Two image arrays read as one, without copying either (STL-10's train+unlabeled)."""

    def __init__(self, first: np.ndarray, second: np.ndarray) -> None:
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.first[index] if index < len(self.first) else self.second[index - len(self.first)]


def idx_file(folder: Path, name: str) -> Path | None:
    """``name`` or ``name.gz`` in ``folder``, whichever exists."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(folder: Path, name: str, dims: int) -> np.ndarray:
    """The uint8 array of an idx file (``[N, H, W]`` images or ``[N]`` labels), its header checked."""
    path = idx_file(folder, name)
    if path is None:
        raise ArrayError(f"{folder / name}(.gz) is missing")
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise ArrayError(f"{path} cannot be read ({error})") from error
    header = 4 + 4 * dims
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if magic != IDX_MAGIC[dims] or len(data) < header:
        raise ArrayError(f"{path} is not an idx file of {dims}-dimensional unsigned bytes (magic {magic!r})")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    if len(data) - header != int(np.prod(shape)):
        raise ArrayError(f"{path}: its header says {shape}, {int(np.prod(shape))} bytes, but it holds "
                         f"{len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _idx(release: Path, split: str) -> ArraySplit:
    images_name, labels_name = IDX_FILES[split]
    gray = read_idx(release, images_name, 3)
    labels = read_idx(release, labels_name, 1).astype(np.int64)
    classes = [str(c) for c in range(int(labels.max()) + 1 if len(labels) else 0)]
    # RGB as PIL's convert("RGB") makes it from gray: the same value in each channel
    return ArraySplit("idx", release, split, np.repeat(gray[..., None], 3, axis=3), labels, classes)


LAYOUTS = {"cifar10": "cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta)",
           "cifar100": "cifar-100-python/ (train, test, meta)",
           "stl10": "stl10_binary/ (train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin)",
           "idx": "the MNIST format (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                  "t10k-labels-idx1-ubyte, each gzipped or not)"}


def release_kind(folder: Path) -> str | None:
    """Which array release ``folder`` is, by its files; None for anything else (a class-folder dataset)."""
    if (folder / "batches.meta").is_file() or (folder / "data_batch_1").is_file():
        return "cifar10"
    if (folder / "meta").is_file() and (folder / "train").is_file():
        return "cifar100"
    if (folder / "train_X.bin").is_file() or (folder / "unlabeled_X.bin").is_file():
        return "stl10"
    if any(idx_file(folder, name) is not None for name in (*IDX_FILES["train"], *IDX_FILES["val"])):
        return "idx"
    return None


def _files_state(release: Path) -> tuple:
    """The release folder's files as (name, size, modification time): a changed file is read again."""
    return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(release) if e.is_file()))


@functools.lru_cache(maxsize=4)
def _read_split(release: Path, kind: str, split: str, files_state: tuple) -> ArraySplit:
    """One split read from its files, kept for the next call with the same files (an entry point opens a split
    several times: its checks, its dataset, its k-NN monitor)."""
    if kind == "idx":
        return _idx(release, split)
    return _cifar(release, kind, split) if kind.startswith("cifar") else _stl(release, split)


def open_array_split(data_dir: str | Path, split: str, flag: str = "--data_dir") -> ArraySplit | None:
    """``split`` (``train`` or ``val``) of the array release at ``data_dir``, or None when ``data_dir`` is no such
    release. Raises ``ArrayError`` naming ``flag``, the file and the expected layout when the release is incomplete."""
    data_dir = Path(data_dir)
    release, pretraining = data_dir, None
    if data_dir.name in UNLABELED_SPLITS and release_kind(data_dir.parent) == "stl10":
        release, pretraining = data_dir.parent, data_dir.name
    kind = release_kind(release)
    if kind is None:
        return None
    if pretraining is not None:
        if split != "train":
            raise ArrayError(f"{flag}={data_dir}: STL-10's unlabelled images have no labels and are for pre-training "
                             f"only; evaluate with {flag}={release}")
        split = pretraining
    elif split not in ("train", "val"):
        raise ArrayError(f"{flag}={data_dir}: {kind} has the splits train and val (its test set), not {split}")
    try:
        return _read_split(release, kind, split, _files_state(release))
    except ArrayError as error:
        raise ArrayError(f"{flag}={data_dir}: {error}. Expected the release as downloaded: {LAYOUTS[kind]}") from None
