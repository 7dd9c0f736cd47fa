"""ImageNet-layout folders read in torchvision ``ImageFolder`` order, and the BINGO bag dataset.

The neighbour ``.npy`` refers to images by their position in this order (classes sorted, files sorted within each
class), so every step of the pipeline reads folders through ``IndexedImageFolder``.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DistributedSampler
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from datasets.arrays import ArrayError, ArraySplit, open_array_split

__all__ = [
    "DatasetError",
    "IndexedImageFolder",
    "BagDataset",
    "EpochSampler",
    "open_split",
    "labelled_splits",
    "check_same_classes",
    "to_rgb",
    "file_list_sha256",
    "per_item_seed",
]


class DatasetError(RuntimeError):
    """A data folder or image that cannot be used; the message names the path."""


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB. Images of more than 8 bits a channel (16-bit PNGs open as mode ``I;16`` or ``I``) are
    scaled to 8 bits, not clipped (PIL's own ``convert`` clips them to white)."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def load_rgb(path: str) -> Image.Image:
    """``path`` decoded to an RGB image (``to_rgb``); a file that cannot be read raises ``DatasetError`` naming
    it."""
    try:
        with open(path, "rb") as handle:
            return to_rgb(Image.open(handle))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"cannot read image {path}: {error}. Remove or replace the file.") from error


def _hidden(name: str) -> bool:
    return name.startswith(".")


def open_split(data_dir: str | os.PathLike, split: str, flag: str = "--data_dir") -> Path | ArraySplit:
    """``<data_dir>/<split>``, or the split of the array release (CIFAR, STL-10, MNIST format) ``data_dir`` is
    (``datasets.arrays``), or a clear error naming ``flag`` when it is missing."""
    try:
        arrays = open_array_split(data_dir, split, flag)
    except ArrayError as error:
        raise DatasetError(str(error)) from None
    if arrays is not None:
        return arrays
    root = Path(data_dir) / split
    if not root.is_dir():
        raise DatasetError(
            f"{root} is not a folder. {flag} must hold {split}/<class>/<image> (the ImageNet layout)."
        )
    return root


def labelled_splits(data_dir: str | os.PathLike, train_transform: Callable | None, val_transform: Callable | None,
                    flag: str = "--data_dir") -> tuple["IndexedImageFolder", "IndexedImageFolder"]:
    """``train/`` and ``val/`` of ``data_dir`` (given by ``flag``), which must have the same class folders (labels
    are class indices, so a class missing from one split would shift every label after it)."""
    train = IndexedImageFolder(open_split(data_dir, "train", flag), train_transform)
    val = IndexedImageFolder(open_split(data_dir, "val", flag), val_transform)
    check_same_classes(data_dir, train, val)
    return train, val


def check_same_classes(data_dir: str | os.PathLike, train: "IndexedImageFolder", val: "IndexedImageFolder") -> None:
    """Refuse splits whose class lists differ (labels are class indices: one class missing shifts every later one)."""
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))[:3]
        only_val = sorted(set(val.classes) - set(train.classes))[:3]
        raise DatasetError(f"{data_dir}: train/ and val/ have different class folders (only in train/: {only_train}, "
                           f"only in val/: {only_val}); labels would not match. Give both splits the same classes.")


class IndexedImageFolder(ImageFolder):
    """``torchvision.datasets.ImageFolder`` whose items are ``(image, target, index)``. Hidden class folders and
    files (names starting with '.', such as ``.ipynb_checkpoints``) are skipped; ``skipped_hidden`` counts them."""

    def __init__(self, root: str | os.PathLike | ArraySplit, transform: Callable | None = None) -> None:
        self.skipped_hidden = 0
        self.arrays = root if isinstance(root, ArraySplit) else None
        if self.arrays is not None:  # an array release's split: its images by index, no folder to scan
            self.root, self.transform, self.target_transform = str(self.arrays.folder), transform, None
            self.loader, self.extensions = self.arrays.pil, None
            self.classes = list(self.arrays.classes) if self.arrays.labelled else ["unlabeled"]
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
            self.samples = self.imgs = self.arrays.samples()
            self.targets = [target for _, target in self.samples]
            return
        if not Path(root).is_dir():
            raise DatasetError(f"{root} is not a folder")
        try:
            super().__init__(str(root), transform=transform, loader=load_rgb, is_valid_file=self._is_image)
        except FileNotFoundError as error:
            raise DatasetError(f"{root} holds no images in class folders ({error})") from error

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        entries = [e for e in os.scandir(directory) if e.is_dir()]
        self.skipped_hidden += sum(_hidden(e.name) for e in entries)
        classes = sorted(e.name for e in entries if not _hidden(e.name))
        if not classes:
            raise FileNotFoundError(f"no class folder in {directory}")
        return classes, {name: i for i, name in enumerate(classes)}

    def _is_image(self, path: str) -> bool:
        relative = Path(os.path.relpath(path, self.root))
        if any(_hidden(part) for part in relative.parts):
            self.skipped_hidden += 1
            return False
        return has_file_allowed_extension(path, IMG_EXTENSIONS)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        path, target = self.samples[index]
        image = self.loader(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, target, index

    @functools.cached_property
    def file_list_hash(self) -> str:
        """``file_list_sha256`` of this folder (its samples never change after the scan)."""
        digest = hashlib.sha256()
        for rel, (_, target) in zip(self.relative_paths(), self.samples):
            digest.update(f"{rel}\t{target}\n".encode())
        return digest.hexdigest()

    def relative_paths(self) -> list[str]:
        return [os.path.relpath(path, self.root) for path, _ in self.samples]

    @property
    def labelled(self) -> bool:
        """Whether the images have labels (every class folder does; STL-10's unlabelled split does not)."""
        return self.arrays is None or self.arrays.labelled

    def raw_bytes(self, path: str) -> bytes:
        """The stored bytes of the image named ``path`` (a file's, or an array release's pixels)."""
        return self.arrays.raw(path) if self.arrays is not None else Path(path).read_bytes()

    def describe(self) -> str:
        """``N images in <root>, C classes`` and how many hidden entries were skipped."""
        if self.arrays is not None:
            return self.arrays.describe()
        text = f"{len(self.samples)} images in {self.root}, {len(self.classes)} classes"
        if self.skipped_hidden:
            text += f" ({self.skipped_hidden} hidden files or folders skipped)"
        return text


def file_list_sha256(dataset: IndexedImageFolder) -> str:
    """Hash of the ordered list of (relative path, class index): what the neighbour indices refer to (computed once
    per dataset: a run's start-up checks it against the neighbour file and against a resumed checkpoint)."""
    return dataset.file_list_hash


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` whose keys carry the epoch, ``(epoch, index)``: a ``BagDataset``'s views and bags then
    depend on the epoch in persistent loader workers too."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, index) for index in super().__iter__())


def per_item_seed(seed: int, epoch: int, index: int) -> int:
    """A seed that depends only on (run seed, epoch, image index): the same views on any number of processes or
    loader workers, and after a resume."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class BagDataset(IndexedImageFolder):
    """Anchor plus one neighbour drawn uniformly from the first ``clus_pos_num`` columns of its ``.npy`` row.

    ``neighbours`` is the ``[N, K]`` array, or a function of the scanned folder that returns it (the neighbour file's
    reader, which checks the file against these very images), or None for view pairs. ``views="bag"`` (the default
    with neighbours) gives (anchor query, anchor key, neighbour query, neighbour key, index), four independent draws
    of ``transform``; ``views="pair"`` (the default without) gives (anchor query, anchor key, index) for the
    baselines. Randomness comes from ``per_item_seed`` so it is reproducible; call ``set_epoch`` every epoch.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable,
        neighbours: np.ndarray | Callable[["BagDataset"], np.ndarray] | None,
        clus_pos_num: int = 5,
        seed: int = 0,
        views: str | None = None,
    ) -> None:
        super().__init__(root, transform)
        views = views or ("bag" if neighbours is not None else "pair")
        if views not in ("bag", "pair"):
            raise ValueError(f"views must be 'bag' or 'pair', not {views!r}")
        if views == "bag" and neighbours is None:
            raise ValueError("views='bag' needs the neighbours")
        self.views = views
        self.neighbours: np.ndarray | None = None
        if neighbours is not None:
            rows = neighbours(self) if callable(neighbours) else neighbours
            if rows.shape[0] != len(self.samples):
                raise ValueError(f"{rows.shape[0]} neighbour rows for {len(self.samples)} images")
            self.neighbours = np.ascontiguousarray(rows[:, :clus_pos_num])
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_and_index(self, key: int | tuple[int, int]) -> tuple[int, int]:
        """An item's key is its index (in the epoch ``set_epoch`` gave) or, from ``EpochSampler``, ``(epoch,
        index)``: loader workers hold copies of the dataset made when they started, which never see a later
        ``set_epoch``."""
        return (key[0], key[1]) if isinstance(key, tuple) else (self.epoch, key)

    def __getitem__(self, key: int | tuple[int, int]) -> Sequence:  # type: ignore[override]
        epoch, index = self.epoch_and_index(key)
        seed = per_item_seed(self.seed, epoch, index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            anchor = self.loader(self.samples[index][0])
            anchor_q, anchor_k = self.transform(anchor), self.transform(anchor)
            if self.views == "pair":
                return anchor_q, anchor_k, index
            row = self.neighbours[index]
            neighbour = int(row[np.random.default_rng(seed).integers(len(row))])
            image = self.loader(self.samples[neighbour][0])
            return anchor_q, anchor_k, self.transform(image), self.transform(image), index
