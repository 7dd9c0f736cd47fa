"""Benchmark of the evaluation's input (what every k-NN monitor point and every frozen evaluation reads): images
per second into the raw-pixel floor (``--arch=pixels``: no network, so the figure is the input alone), by source and
path; prints a table and writes JSON.

    python -m bench.eval_input --json bench/results_cpu_eval_input.json  # the demo's PNGs and the release
    python -m bench.eval_input --images 2000 --workers 0 --rounds 1   # smoke

Sources: ``png``, a class-folder tree of PNGs (default: the CPU demo's evaluation images, ``demo_data/fmnist-1000-
all``, which ``make demo`` prepares); ``release``, Fashion-MNIST's idx files read in place (default: Debian's
``/usr/share/datasets/fashion-mnist``). Paths: ``loaded``, PIL decode and crop per image in ``--workers`` loader
processes (the default path; the first ``--images`` of the split); ``held``, ``--in_memory``: the whole split held
as one tensor (holding it, decoding any files in the most ``--workers`` processes, timed apart) and the crop made a
batch at a time. Each figure is the best of ``--rounds``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

from bench.flags import counts
from datasets.device_views import HeldImages
from datasets.folders import IndexedImageFolder, open_split
from datasets.transforms import eval_transform
from engine.features import embed
from models.backbones import build_backbone
from utils import dist as edist


def first(dataset, count: int):
    """The first ``count`` images of ``dataset`` (all when it has fewer)."""
    return dataset if count >= len(dataset) else Subset(dataset, range(count))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(source: Path, images: int, workers: list[int], batch: int, size: int, rounds: int, ctx) -> list[dict]:
    root = open_split(source, "train")
    network = build_backbone("pixels").eval()
    rows = []
    for count in workers:
        dataset = first(IndexedImageFolder(root, eval_transform(size)), images)
        seconds = min(timed(lambda: embed(network, dataset, ctx, batch, count, report_every=1e9))
                      for _ in range(rounds))
        rows.append({"path": "loaded", "workers": count, "images": len(dataset), "hold_s": 0.0,
                     "seconds": seconds, "images_per_s": len(dataset) / seconds})
    holding = []
    for _ in range(rounds):
        start = time.perf_counter()
        held = HeldImages(root, ctx.device, size, max(workers))
        holding.append(time.perf_counter() - start)
    seconds = min(timed(lambda: embed(network, held, ctx, batch, 0, report_every=1e9)) for _ in range(rounds))
    rows.append({"path": "held", "workers": max(workers), "images": len(held), "hold_s": min(holding),
                 "seconds": seconds, "images_per_s": len(held) / seconds})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--png", type=Path, default=Path("demo_data/fmnist-1000-all"))
    parser.add_argument("--release", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--images", type=int, default=10000, help="images embedded by the loaded path")
    parser.add_argument("--workers", default="0,2", type=counts(0),
                        help="loader processes of the loaded path (comma-separated)")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="JSON file for the rows")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    ctx = edist.init("cpu")
    workers = args.workers
    rows = []
    for name, source in (("png", args.png), ("release", args.release)):
        if not source.exists():
            print(f"{name}: {source} does not exist, skipped")
            continue
        for row in measure(source, args.images, workers, args.batch, args.size, args.rounds, ctx):
            rows.append({"source": name, **row})
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs, torch {torch.__version__}\n")
    print("| source | path | loader processes | images | holding s | embedding s | images/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['source']} | {r['path']} | {r['workers']} | {r['images']} | {r['hold_s']:.2f} | "
              f"{r['seconds']:.2f} | {r['images_per_s']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": os.uname().nodename, "cpus": os.cpu_count(),
                                        "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
