"""Fashion-MNIST (70,000 real 28x28 photographs of clothing, 10 classes, MIT licence) in the ImageNet folder layout.

    python -m scripts.fashion_mnist --out demo_data/fmnist --train_per_class 200 --val_per_class 100

Source, in order: Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``), then
torchvision's download where the machine has internet. Writes ``train/`` and ``val/`` (the official test split) with
one folder per class and 3-channel PNGs, once: a ``prepared.json`` records what was written.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.arrays import IDX_FILES, ArrayError, idx_file, read_idx
from datasets.folders import DatasetError
from utils.logs import Progress, log

__all__ = ["CLASSES", "DEBIAN_DIR", "load_split", "prepare"]

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

def load_split(split: str, cache: Path, source: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images [N, 28, 28] uint8, labels [N])`` of ``train`` or ``val`` (the test split), from the ``.gz`` files in
    ``source`` (default: Debian's package folder) or else torchvision's download."""
    images_name, labels_name = IDX_FILES[split]
    folder = Path(source) if source is not None else DEBIAN_DIR
    if source is not None and idx_file(folder, images_name) is None:
        raise DatasetError(f"{folder / images_name}.gz does not exist: the folder must hold "
                           f"{', '.join(name + '.gz' for name in IDX_FILES[split])}")
    if idx_file(folder, images_name) is not None:
        try:
            return read_idx(folder, images_name, 3), read_idx(folder, labels_name, 1)
        except ArrayError as error:
            raise DatasetError(str(error)) from None
    try:
        from torchvision.datasets import FashionMNIST

        data = FashionMNIST(str(cache), train=split == "train", download=True)
        return data.data.numpy(), data.targets.numpy()
    except Exception as error:  # no package and no internet: say what to install
        raise DatasetError(
            f"Fashion-MNIST is not installed ({DEBIAN_DIR} is missing) and could not be downloaded ({error}). "
            "Install it with: sudo apt-get install dataset-fashion-mnist"
        ) from error


def prepare(out: Path, train_per_class: int | None, val_per_class: int | None, seed: int = 0,
            source: Path | None = None) -> Path:
    """Write a class-balanced subset (``None``: every image) as ``out/{train,val}/<class>/<n>.png``; skip when
    ``out/prepared.json`` says it is already there."""
    out = Path(out)
    wanted = {"train_per_class": train_per_class, "val_per_class": val_per_class, "seed": seed}
    marker = out / "prepared.json"
    if marker.is_file() and json.loads(marker.read_text()).get("request") == wanted:
        log(f"data: {out} already prepared")
        return out
    for split in ("train", "val"):  # a different request: start from empty folders
        if (out / split).exists():
            shutil.rmtree(out / split)
    rng = np.random.default_rng(seed)
    counts = {}
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        images, labels = load_split(split, out / "download", source)
        chosen = []
        for c in range(len(CLASSES)):
            members = np.flatnonzero(labels == c)
            take = len(members) if per_class is None else min(per_class, len(members))
            chosen.append(np.sort(rng.choice(members, size=take, replace=False)))
        chosen = np.concatenate(chosen)
        progress = Progress(len(chosen), f"data {split}")
        for i in chosen:
            folder = out / split / f"{labels[i]:02d}_{CLASSES[labels[i]]}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).convert("RGB").save(folder / f"{i:05d}.png")
            progress.update(1)
        log(progress.line())
        counts[split] = int(len(chosen))
    marker.write_text(json.dumps({"request": wanted, "images": counts}, indent=2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--out", default="demo_data/fmnist")
    parser.add_argument("--train_per_class", type=int, default=None, help="default: all 6,000")
    parser.add_argument("--val_per_class", type=int, default=None, help="default: all 1,000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", type=Path, help=f"folder with the four .gz files (default: {DEBIAN_DIR})")
    args = parser.parse_args()
    prepare(Path(args.out), args.train_per_class, args.val_per_class, args.seed, args.source)


if __name__ == "__main__":
    main()
