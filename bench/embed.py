"""Benchmark of the kNN step's embedding (run_knn.py): images/s of a frozen network over a JPEG folder it makes.

    python bench/embed.py                    # R50 at 224 px, CPU and device input paths, all cores as workers
    python bench/embed.py --arch resnet18 --images 32 --batch 8 --size 32 --workers 0 --device cpu   # smoke

Rows: input path (``cpu``: PIL decode + Resize/CenterCrop in the workers; ``device``: ``--device_views``, nvJPEG
decode and resize on the device) x channels_last; each row embeds the whole folder once through
``engine.features.embed`` after one warm-up pass. At ImageNet scale (1.28 M images) the embedding takes
1,281,167 / (images/s) seconds per GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from bench.data_pipeline import make_jpegs
from bench.flags import names
from datasets.device_views import DeviceViews, EncodedImageFolder, collate_encoded
from datasets.folders import IndexedImageFolder
from datasets.transforms import MOCO_V2, eval_transform
from engine.features import embed
from models.backbones import BACKBONES, build_backbone
from utils import dist as edist


def measure(root: Path, path: str, channels_last: bool, args, ctx: edist.Context) -> float:
    network = build_backbone(args.arch).to(ctx.device).eval()
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    if path == "cpu":
        dataset, loading = IndexedImageFolder(root / "train", eval_transform(args.size)), {}
    else:
        views = DeviceViews(args.size, MOCO_V2, ctx.device)
        dataset, loading = EncodedImageFolder(root / "train"), {"collate_fn": collate_encoded,
                                                                "prepare": views.eval_crops}
    run = lambda: embed(network, dataset, ctx, args.batch, args.workers, channels_last=channels_last,  # noqa: E731
                        report_every=1e9, **loading)
    run()  # warm-up: cudnn autotuning, worker start-up, file cache
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    return len(dataset) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--arch", default="resnet50", choices=sorted(BACKBONES))
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--paths", default="cpu,device", type=names(("cpu", "device")))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    ctx = edist.init(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_jpegs(root, args.images)
        for path in args.paths:
            for channels_last in (False, True):
                rate = measure(root, path, channels_last, args, ctx)
                rows.append({"arch": args.arch, "path": path, "channels_last": channels_last, "images_per_s": rate,
                             "imagenet_minutes": 1281167 / rate / 60})
                print(json.dumps(rows[-1]), flush=True)
    name = torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "cpu"
    print(f"\ndevice: {name}; {args.arch} at {args.size} px; batch {args.batch}; {args.workers} loader workers")
    print("| input path | channels_last | images/s | ImageNet train set (min, one device) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['channels_last']} | {r['images_per_s']:.0f} | {r['imagenet_minutes']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
