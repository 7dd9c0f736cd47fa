"""The whole training loop's rate at ImageNet sizes: ``main_distill.py`` itself, fed by its own loader from JPEGs
made here (ImageNet's typical 500x375), against the compute-only rate of the very same step; prints a table.

    python -m bench.loop_rates --device cuda          # R18 <- R50 BINGO, 224 px, batch 128: CPU loader, device views
    python -m bench.loop_rates --images 48 --size 64 --batch 8 --workers 1 --device cpu --epochs 2 --steps 2  # smoke

For each input path (``files``: the CPU loader, ``--num_workers`` processes decoding with PIL and making the views;
``device``: ``--device_views``, the workers read files and the device decodes and augments the batch) it trains
``--epochs`` epochs of ``--images`` images and takes the median images/s of the epochs after the first, as the loop
logs them (what a user sees); then it builds the same step from the same flags and times ``--steps`` steps on
synthetic tensors (``bench.demo_rates.compute_only``). The teacher is a randomly initialised network in MoCo's
release layout and the bags are random (``run_knn.py --bagging=random``): the rates do not depend on the weights.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench.data_pipeline import make_jpegs
from bench.demo_rates import compute_only, data_fed
from bench.flags import names
from models.backbones import BACKBONES, build_backbone
from models.heads import mlp_head

REPO = Path(__file__).resolve().parent.parent
INPUTS = {"files": (), "device": ("--device_views",)}


def random_teacher(arch: str, path: Path) -> None:
    """A randomly initialised ``arch`` with a MoCo-v2 head, saved in MoCo's release layout."""
    torch.manual_seed(0)
    backbone = build_backbone(arch)
    head = mlp_head(backbone.feature_dim, 2048, 128)
    state = {f"module.encoder_q.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"module.encoder_q.fc.{k}": v for k, v in head.state_dict().items()})
    torch.save({"arch": arch, "state_dict": state}, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--student", default="resnet18", choices=sorted(BACKBONES))
    parser.add_argument("--teacher", default="resnet50", choices=sorted(BACKBONES))
    parser.add_argument("--images", type=int, default=2560, help="JPEGs made (an epoch)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed synthetic steps")
    parser.add_argument("--inputs", default="files,device", type=names(INPUTS),
                        help=f"comma-separated, from {list(INPUTS)}")
    parser.add_argument("--flags", default="--amp --channels_last", help="further main_distill.py flags")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json")
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="loop_rates.") as tmp:  # JPEGs, bags, runs: removed once measured
        rows = measure(args, Path(tmp))
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()} CPUs"
    print(f"\n{args.student} <- {args.teacher}, BINGO, {args.size} px, batch {args.batch}, {args.workers} workers, "
          f"{args.images} JPEGs an epoch, flags {args.flags!r} on {device}; load average before {load[0]:.2f}, "
          f"after {os.getloadavg()[0]:.2f}")
    print("| input path | data-fed anchors/s | compute-only anchors/s | data-fed / compute | process s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['inputs']} | {r['data_fed']:.1f} | {r['compute_only']:.1f} | {100 * r['ratio']:.0f} % | "
              f"{r['process_seconds']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "device": device, "load_average": load}, indent=1))


def measure(args, work: Path) -> list[dict]:
    """Each input path's row, with the JPEGs, the teacher and the bags made in ``work``."""
    make_jpegs(work / "data", args.images)
    random_teacher(args.teacher, work / "teacher.pth")
    subprocess.run([sys.executable, str(REPO / "run_knn.py"), f"--data_dir={work / 'data'}", "--bagging=random",
                    f"--corr_name={work / 'bags.npy'}", "--clus_pos_num=5", f"--device={args.device}"],
                   check=True, capture_output=True)
    rows = []
    for name in args.inputs:
        out = work / f"run-{name}"
        run_args = [f"--s_arch={args.student}", f"--t_arch={args.teacher}", f"--pretrain_path={work / 'teacher.pth'}",
                    f"--data_dir={work / 'data'}", f"--corr_npy={work / 'bags.npy'}", f"--output_dir={out}",
                    f"--image_size={args.size}", f"--batch_size={args.batch}", f"--moco_k={args.batch * 8}",
                    f"--num_workers={args.workers}", f"--end_epoch={args.epochs}", "--save_freq=0", "--seed=0",
                    "--report_freq=1000", f"--device={args.device}", *args.flags.split(), *INPUTS[name]]
        fed = data_fed(run_args, out)
        compute = compute_only(run_args, args.steps, views=4)
        rows.append({"inputs": name, "student": args.student, "teacher": args.teacher, "size": args.size,
                     "batch": args.batch, "workers": args.workers, "device": args.device,
                     "data_fed": fed["images_per_s"], "compute_only": compute, "ratio": fed["images_per_s"] / compute,
                     "process_seconds": fed["process_seconds"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
