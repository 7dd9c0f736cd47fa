"""Benchmark of the input pipeline (read, decode, bag lookup, four MoCo-v2 views) on JPEGs it makes; prints tables.

    python bench/data_pipeline.py            # CPU path at 1, 4 and all workers, device path, 100-step profile
    python bench/data_pipeline.py --workers 0,2 --images 64 --batches 4 --size 64 --profile_steps 0  # CPU smoke

Paths: ``cpu`` is the official one (workers decode with PIL and make the views); ``device`` is ``--device_views``
(workers read the file; the device decodes with nvJPEG, draws the views' parameters and augments the batch);
``device-workers`` is the device path's loader alone (what the workers can deliver when decoding is not theirs).
The profile runs the fast training step (bf16, channels_last) of ``--pair`` for ``--profile_steps`` steps fed by
each loader and once more on one batch kept on the device: the data-fed rate over the resident rate says how
much the step waits for data, and the host time blocked in the loader is reported too. CutMix runs inside the
step for both paths.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from bench.distill_step import CONFIGS, build, step, sync
from bench.flags import counts, names, pair
from datasets.device_views import DeviceViews, EncodedBagDataset, collate_encoded
from datasets.folders import BagDataset
from datasets.transforms import MOCO_V2, augmentation
from engine.training import views_to_device

PATHS = ("cpu", "device", "device-workers")  # views made by the loader, on the device, on the device by workers


def make_jpegs(root: Path, count: int, classes: int = 8, width: int = 500, height: int = 375) -> None:
    """Smooth random images (JPEG-compressible like photographs), ImageNet's typical 500x375."""
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / "train" / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, size=(height // 25, width // 25, 3), dtype=np.uint8)
        Image.fromarray(small).resize((width, height), Image.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)


def make_loader(root: Path, path: str, workers: int, batch: int, size: int, device: torch.device):
    """(loader, batch -> four view tensors on the device) for the ``cpu`` or ``device`` path."""
    n = sum(1 for _ in (root / "train").rglob("*.jpg"))
    neighbours = np.stack([(np.arange(n) + s) % n for s in range(1, 6)], axis=1)
    options = dict(batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                   persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                   pin_memory=device.type == "cuda")
    if path == "cpu":
        dataset = BagDataset(root / "train", augmentation(MOCO_V2, size), neighbours, clus_pos_num=5, seed=0)
        return DataLoader(dataset, **options), lambda batch: views_to_device(batch[:-1], device, channels_last=True)
    dataset = EncodedBagDataset(root / "train", neighbours, clus_pos_num=5, seed=0)
    views = DeviceViews(size, MOCO_V2, device, channels_last=True)
    return DataLoader(dataset, collate_fn=collate_encoded, **options), views.train_views


def forever(loader):
    while True:
        yield from loader


def measure(root: Path, path: str, workers: int, args, device: torch.device) -> float:
    """Anchors/s delivered as view tensors on the device."""
    loader, prepare = make_loader(root, path.replace("-workers", ""), workers, args.batch, args.size, device)
    if path.endswith("-workers"):
        prepare = lambda batch: batch  # noqa: E731
    batches = forever(loader)
    prepare(next(batches))  # start-up
    sync(device)
    start = time.perf_counter()
    for _ in range(args.batches):
        prepare(next(batches))
    sync(device)
    return args.batch * args.batches / (time.perf_counter() - start)


def profile(root: Path, path: str, workers: int, args, device: torch.device, model) -> dict:
    """Steps/s of the fast step fed by the loader, and host seconds per step blocked on the loader."""
    distiller, optimizer = model
    loader, prepare = make_loader(root, path, workers, args.batch, args.size, device)
    batches = forever(loader)
    for _ in range(3):
        step(distiller, optimizer, prepare(next(batches)))
    sync(device)
    waited = 0.0
    start = time.perf_counter()
    for _ in range(args.profile_steps):
        before = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - before
        step(distiller, optimizer, prepare(batch))
    sync(device)
    seconds = time.perf_counter() - start
    return {"path": path, "workers": workers, "anchors_per_s": args.batch * args.profile_steps / seconds,
            "loader_wait_ms_per_step": 1000 * waited / args.profile_steps}


def resident(args, device: torch.device, model, views) -> float:
    """Anchors/s of the same step on one batch kept on the device (no input pipeline)."""
    distiller, optimizer = model
    for _ in range(3):
        step(distiller, optimizer, views)
    sync(device)
    start = time.perf_counter()
    for _ in range(args.profile_steps):
        step(distiller, optimizer, views)
    sync(device)
    return args.batch * args.profile_steps / (time.perf_counter() - start)


def run_profile(root: Path, args, device: torch.device, workers: int) -> list[dict]:
    student, teacher = args.pair
    model = build(student, teacher, CONFIGS["fast"], device, args.queue)
    loader, prepare = make_loader(root, "device", 0, args.batch, args.size, device)
    views = prepare(next(iter(loader)))
    rows = [{"path": "resident batch", "workers": 0, "anchors_per_s": resident(args, device, model, views),
             "loader_wait_ms_per_step": 0.0}]
    for path in (p for p in args.paths if not p.endswith("-workers")):
        rows.append(profile(root, path, workers, args, device, model))
    for row in rows:
        row["fraction_of_resident"] = row["anchors_per_s"] / rows[0]["anchors_per_s"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    cores = len(os.sched_getaffinity(0))
    parser.add_argument("--workers", default=f"1,4,{cores}", type=counts(0), help="loader workers, comma-separated")
    parser.add_argument("--paths", default=",".join(PATHS), type=names(PATHS))
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile_steps", type=int, default=100, help="0: skip the training profile")
    parser.add_argument("--pair", default="resnet18:resnet50", type=pair, help="student:teacher")
    parser.add_argument("--queue", type=int, default=65536)
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.set_num_threads(1)  # the main process only launches work; the cores are the workers'
    torch.backends.cudnn.benchmark = True
    workers_list = args.workers
    rows, profile_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_jpegs(root, args.images)
        for path in args.paths:
            for workers in workers_list:
                rate = measure(root, path, workers, args, device)
                rows.append({"path": path, "workers": workers, "anchors_per_s": rate, "views_per_s": 4 * rate})
                print(json.dumps(rows[-1]), flush=True)
        if args.profile_steps:
            profile_rows = run_profile(root, args, device, max(workers_list))
            for row in profile_rows:
                print(json.dumps(row), flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\ncpu cores: {cores}; device: {name}; {args.size} px; batch {args.batch}")
    print("| path | loader workers | anchors/s | views/s |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['workers']} | {r['anchors_per_s']:.0f} | {r['views_per_s']:.0f} |")
    if profile_rows:
        print(f"\n{args.profile_steps} fast training steps of {':'.join(args.pair)} (bf16, channels_last), "
              f"batch {args.batch}:")
        print("| input | loader workers | anchors/s | of resident | host ms/step blocked on loader |")
        print("|---|---|---|---|---|")
        for r in profile_rows:
            print(f"| {r['path']} | {r['workers']} | {r['anchors_per_s']:.0f} | "
                  f"{100 * r['fraction_of_resident']:.0f} % "
                  f"| {r['loader_wait_ms_per_step']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"pipeline": rows, "profile": profile_rows}, indent=1))


if __name__ == "__main__":
    main()
