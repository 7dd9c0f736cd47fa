"""Benchmark of the CPU input pipeline: read, decode, bag lookup, four MoCo-v2 views; prints a table.

    python bench/data_pipeline.py                    # workers 1, 4 and all cores, 224 px, JPEGs it makes
    python bench/data_pipeline.py --workers 0,2 --images 64 --batches 4 --size 64   # CPU smoke size

CutMix runs on the device inside the training step (models.losses.apply_cutmix) and is timed by
bench/distill_step.py; this script measures what the loader workers must deliver: anchors/s.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from datasets.folders import BagDataset  # noqa: E402
from datasets.transforms import moco_v2_augmentation  # noqa: E402


def make_jpegs(root: Path, count: int, classes: int = 8, width: int = 500, height: int = 375) -> None:
    """Smooth random images (JPEG-compressible like photographs), ImageNet's typical 500x375."""
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / "train" / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, size=(height // 25, width // 25, 3), dtype=np.uint8)
        Image.fromarray(small).resize((width, height), Image.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)


def measure(root: Path, workers: int, batch: int, batches: int, size: int) -> float:
    n = sum(1 for _ in (root / "train").rglob("*.jpg"))
    neighbours = np.stack([(np.arange(n) + s) % n for s in range(1, 6)], axis=1)
    dataset = BagDataset(root / "train", moco_v2_augmentation(size), neighbours, clus_pos_num=5, seed=0)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    iterator = iter(loader)
    next(iterator)  # start-up
    start = time.perf_counter()
    done = 0
    for _ in range(batches):
        try:
            views = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            views = next(iterator)
        done += views[0].shape[0]
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cores = len(os.sched_getaffinity(0))
    parser.add_argument("--workers", default=f"1,4,{cores}")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_jpegs(root, args.images)
        for workers in map(int, args.workers.split(",")):
            rate = measure(root, workers, args.batch, args.batches, args.size)
            rows.append({"workers": workers, "anchors_per_s": rate, "images_decoded_per_s": 2 * rate,
                         "views_per_s": 4 * rate})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\ncpu cores: {cores}; {args.size} px; batch {args.batch}")
    print("| loader workers | anchors/s | JPEG decodes/s | views/s |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['anchors_per_s']:.0f} | {r['images_decoded_per_s']:.0f} | {r['views_per_s']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
