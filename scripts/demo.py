"""The whole pipeline on real images from one command: `make demo` (or `python -m scripts.demo`).

Fashion-MNIST stands in for ImageNet and everything is self-supervised, as in the paper: a larger teacher is
pretrained with this project's MoCo-v2 (`main_distill.py --method=moco`), the kNN step bags the training images
with it, and five students train for the same epochs: BINGO, the SEED, DisCo and CompRess baselines, and MoCo-v2
without a teacher (each `--seeds` times; every baseline with its release's own temperature, schedule and views). Every network, and the floors it must beat (raw pixels, the teacher's and the student's network
untrained), is scored by the same code: `main_lincls.py`'s linear probe and its k-NN classifier (k = 10). The
training runs log that k-NN classifier as a monitor, so the plots show each run learning (or not).

Each stage runs the project's own entry points, shows their progress, and is skipped when its output exists, so an
interrupted demo resumes where it stopped (training stages continue from their last epoch). The run folder ends
with results.md, results.json and PNG plots. `--quick` is the smoke version the tests run; `--config long` is the
longer CPU configuration; with a GPU the default configuration is `gpu` (all 60,000 images).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

import numpy as np

from scripts.fashion_mnist import prepare
from datasets.folders import IndexedImageFolder
from utils.io import atomic_json
from utils.logs import read_metrics


@dataclass(frozen=True)
class Training:
    """One `main_distill.py` stage: the network, its schedule, and further recipe flags."""

    arch: str
    epochs: int
    batch_size: int
    lr: float
    queue: int
    flags: tuple[str, ...] = ()
    knn_every: int = 1  # epochs between k-NN monitor points


@dataclass(frozen=True)
class Config:
    name: str
    train_per_class: int | None  # None: every image
    val_per_class: int | None
    image_size: int
    teacher: Training
    student: Training
    probe_epochs: int
    seeds: int = 1  # student runs per method (the teacher and the kNN step run once)
    probe_lr: float = 0.5
    workers: int = 0
    input_flags: tuple[str, ...] = ()  # how the training stages read images
    knn_step_flags: tuple[str, ...] = ()  # run_knn.py's speed switches


# Views made in the training process from decoded images held in memory (no loader processes, no decoding).
CPU_INPUT = ("--device_views", "--in_memory")
# The teacher's MoCo-v2 for short schedules (see the CPU configurations below; the ImageNet scripts keep the defaults).
SHORT_TEACHER = ("--moco_m=0.99", "--moco_t=0.1", "--nomlp", "--noaug_plus")
CONFIGS = {
    "quick": Config(name="quick", train_per_class=10, val_per_class=5, image_size=32,
                    # one architecture for teacher and students: three floors instead of five, to keep the test short
                    teacher=Training("resnet18", epochs=1, batch_size=32, lr=0.03, queue=64),
                    student=Training("resnet18", epochs=1, batch_size=32, lr=0.03, queue=64),
                    probe_epochs=1, input_flags=CPU_INPUT),
    # MoCo-v2 as MoCo's one-GPU CIFAR demo sets it for short schedules (key-encoder momentum 0.99, temperature 0.1,
    # one linear projection), the learning rate for the batch, MoCo-v1's views (MoCo-v2's blur, sized for 224 px,
    # wipes out a 32 px image), a queue shorter than the data; see the README for what each measured.
    "cpu": Config(name="cpu", train_per_class=100, val_per_class=50, image_size=32,
                  teacher=Training("resnet34", epochs=12, batch_size=64, lr=0.03, queue=512,
                                   flags=SHORT_TEACHER, knn_every=6),
                  student=Training("resnet18", epochs=5, batch_size=64, lr=0.03, queue=512,
                                   flags=("--moco_m=0.99", "--bag_warmup_epochs=1")),
                  probe_epochs=3, input_flags=CPU_INPUT),
    # The same data and recipe, four times the teacher's epochs and twice the students', three seeds: under an hour.
    "long": Config(name="long", train_per_class=100, val_per_class=50, image_size=32,
                   teacher=Training("resnet34", epochs=60, batch_size=64, lr=0.03, queue=512,
                                    flags=SHORT_TEACHER, knn_every=10),
                   student=Training("resnet18", epochs=10, batch_size=64, lr=0.03, queue=512,
                                    flags=("--moco_m=0.99", "--bag_warmup_epochs=2"), knn_every=2),
                   probe_epochs=3, seeds=3, input_flags=CPU_INPUT),
    # All 60,000 images, one seed, sized (by estimate, not yet measured) to finish inside one 10-minute call of a lent
    # GPU (the device rules give a task 15 minutes in all, and each call a fresh machine): the floors and the teacher
    # come first, so a call that runs out still shows whether the teacher beats them. The teacher takes the CPU
    # teacher's recipe (short schedule: momentum 0.99, T 0.1, one linear projection, MoCo-v1 views) with MoCo's
    # CIFAR queue (4,096) and lr 0.06 at batch 512. Sizing in bench/RESULTS.md.
    "gpu": Config(name="gpu", train_per_class=None, val_per_class=None, image_size=32,
                  teacher=Training("resnet50", epochs=20, batch_size=512, lr=0.06, queue=4096,
                                   flags=SHORT_TEACHER, knn_every=5),
                  student=Training("resnet18", epochs=5, batch_size=512, lr=0.06, queue=4096,
                                   flags=("--moco_m=0.99", "--bag_warmup_epochs=1"), knn_every=5),
                  probe_epochs=2, workers=16,
                  input_flags=("--amp", "--channels_last", "--device_views", "--in_memory"),
                  knn_step_flags=("--channels_last", "--device_views")),
}
METHODS = ("moco", "seed", "disco", "compress", "bingo")
METHOD_LABELS = {"moco": "MoCo-v2 (no teacher)", "seed": "SEED", "disco": "DisCo", "compress": "CompRess",
                 "bingo": "BINGO"}
ARCH_LABELS = {"resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50"}


class Runner:
    """Runs entry points as subprocesses with live output, records each stage's wall time in the run folder."""

    def __init__(self, run_dir: Path, device: str) -> None:
        self.run_dir = run_dir
        self.device = device
        self.times_path = run_dir / "stage_times.json"
        self.times = json.loads(self.times_path.read_text()) if self.times_path.is_file() else {}

    def stage(self, name: str, done: Path, script: str, args: list[str]) -> None:
        if done.exists():
            print(f"[{name}] done already ({done.relative_to(self.run_dir)}), skipped", flush=True)
            return
        print(f"[{name}] python {script} {' '.join(args)}", flush=True)
        start = time.perf_counter()
        command = [sys.executable, str(REPO / script), *args, f"--device={self.device}"]
        process = subprocess.Popen(command, cwd=self.run_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        for line in process.stdout:
            if not line.startswith(("I1", "W1")):  # absl's own INFO/WARNING chatter (faiss loading)
                print(f"[{name}] {line}", end="", flush=True)
        if process.wait():
            raise SystemExit(f"[{name}] failed (exit {process.returncode}); run the demo again to resume")
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start
        atomic_json(self.times, self.times_path)


def data_folder(cfg: Config) -> str:
    """Configurations with the same split share its folder."""
    return f"fmnist-{cfg.train_per_class or 'all'}-{cfg.val_per_class or 'all'}"


def arch_label(arch: str) -> str:
    return ARCH_LABELS.get(arch, arch)


def train_args(cfg: Config, stage: Training, data: Path, out: Path, method: str, seed: int,
               extra: tuple[str, ...] = ()) -> list[str]:
    return [f"--method={method}", f"--s_arch={stage.arch}", f"--data_dir={data}", f"--output_dir={out}",
            f"--image_size={cfg.image_size}", f"--batch_size={stage.batch_size}", f"--moco_k={stage.queue}",
            f"--init_lr={stage.lr}", f"--end_epoch={stage.epochs}", f"--num_workers={cfg.workers}", f"--seed={seed}",
            f"--knn_monitor_freq={stage.knn_every}", "--report_freq=50", "--save_freq=0", "--resume=auto",
            *cfg.input_flags, *stage.flags, *extra]


def evaluate(runner: Runner, cfg: Config, data: Path, folder: str, arch: str, weights: list[str]) -> None:
    """Linear probe and k-NN classifier (one start-up) of ``arch`` with ``weights`` (a checkpoint or a floor)."""
    out = runner.run_dir / folder / "eval"
    runner.stage(f"{folder}: evaluation", out / "done", "main_lincls.py",
                 [f"--arch={arch}", *weights, f"--data_dir={data}", f"--image_size={cfg.image_size}",
                  f"--batch_size={cfg.student.batch_size}", f"--num_workers={cfg.workers}", "--with_knn",
                  f"--output_dir={out}", f"--end_epoch={cfg.probe_epochs}", f"--init_lr={cfg.probe_lr}",
                  "--min_lr=0.01", "--resume=auto", "--report_freq=1000"])
    results = out / "results.json"
    if results.is_file() and json.loads(results.read_text()).get("epochs_done") == cfg.probe_epochs:
        (out / "done").write_text("")


def floors(cfg: Config) -> dict[str, tuple[str, list[str], str]]:
    """Folder -> (arch, main_lincls flags, label) of each floor: raw pixels; the teacher's and the students' network
    untrained (the very weights their seed-0 runs start from), as initialised and with BatchNorm statistics
    re-estimated on the data (an untrained network's running statistics are the identity; every trained one has
    data statistics)."""
    out = {"floors/pixels": ("pixels", [], "Raw pixels (32×32, no network)")}
    for arch in dict.fromkeys((cfg.teacher.arch, cfg.student.arch)):
        out[f"floors/untrained-{arch}"] = (arch, ["--untrained", "--seed=0"], f"{arch_label(arch)}, untrained")
        out[f"floors/untrained-{arch}-data-bn"] = (arch, ["--untrained", "--seed=0", "--recompute_bn"],
                                                   f"{arch_label(arch)}, untrained, BN statistics of the data")
    return out


def run(cfg: Config, run_dir: Path, data_dir: Path, device: str, source: Path | None = None) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_before = os.getloadavg()
    data = prepare(data_dir, cfg.train_per_class, cfg.val_per_class, source=source).resolve()
    runner = Runner(run_dir, device)
    for folder, (arch, weights, _) in floors(cfg).items():
        evaluate(runner, cfg, data, folder, arch, weights)

    teacher = run_dir / "teacher" / "final.pth"
    runner.stage("teacher", teacher, "main_distill.py",
                 train_args(cfg, cfg.teacher, data, run_dir / "teacher", "moco", seed=0))
    evaluate(runner, cfg, data, "teacher", cfg.teacher.arch, [f"--pretrained={teacher}"])
    neighbours = run_dir / "neighbours.npy"
    runner.stage("kNN step", neighbours.with_suffix(".json"), "run_knn.py",  # the .json is written last
                 [f"--arch={cfg.teacher.arch}", f"--ckpt_name={teacher}", f"--data_dir={data}", "--clus_pos_num=5",
                  f"--image_size={cfg.image_size}", f"--corr_name={neighbours}",
                  f"--batch_size={cfg.teacher.batch_size}", f"--num_workers={cfg.workers}", *cfg.knn_step_flags])
    distilled = (f"--t_arch={cfg.teacher.arch}", f"--pretrain_path={teacher}", f"--corr_npy={neighbours}")
    for seed in range(cfg.seeds):
        for method in METHODS:
            folder = student_folder(method, seed)
            runner.stage(folder, run_dir / folder / "final.pth", "main_distill.py",
                         train_args(cfg, cfg.student, data, run_dir / folder, method, seed,
                                    distilled if method != "moco" else ()))
            evaluate(runner, cfg, data, folder, cfg.student.arch, [f"--pretrained={run_dir / folder / 'final.pth'}"])
    results = collect(cfg, run_dir, data, time.perf_counter() - started, load_before)
    report(results, run_dir)
    return results


def student_folder(method: str, seed: int) -> str:
    return f"students/{method}/seed{seed}"


def scores(run_dir: Path, folder: str) -> dict:
    """knn10_top1 and the linear probe's last-epoch top-1 / top-5 of one evaluated folder."""
    results = json.loads((run_dir / folder / "eval" / "results.json").read_text())
    return {"knn10_top1": results["knn"]["k10_majority"]["top1"], "linear_top1": results["last"]["top1"],
            "linear_top5": results["last"]["top5"]}


def training_record(run_dir: Path, folder: str, times: dict) -> dict:
    """What a training stage's metrics.jsonl says: loss per epoch, the k-NN monitor curve, images/s."""
    metrics = read_metrics(run_dir / folder / "metrics.jsonl")
    # A run killed after logging an epoch but before its checkpoint logs that epoch again on resume: keep the last.
    epochs = sorted({m["epoch"]: m for m in metrics if m["kind"] == "epoch"}.items())
    knn = sorted({m["epoch"]: m["knn10_top1"] for m in metrics if m["kind"] == "knn"}.items())
    return {"train_seconds": times.get(folder, 0.0),
            "images_per_s": statistics.median(m["images_per_s"] for _, m in epochs) if epochs else None,
            "loss_curve": [m["loss"] for _, m in epochs],
            "knn_curve": [list(point) for point in knn]}


def aggregate(runs: list[dict]) -> dict:
    """Mean and sample standard deviation (0 for one run) of each score over seeds."""
    out = {}
    for key in ("knn10_top1", "linear_top1", "linear_top5", "train_seconds", "images_per_s"):
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = statistics.mean(values) if values else None
        out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


def bag_purity(neighbours: Path, data: Path) -> float:
    """Percentage of the kNN step's (image, neighbour) pairs whose two images share a class: how often a BINGO bag
    holds the right kind of image. Labels are read here, for the report only; no stage sees them."""
    labels = np.array([target for _, target in IndexedImageFolder(data / "train").samples])
    rows = np.load(neighbours)
    return float(100.0 * (labels[rows] == labels[:, None]).mean())


def collect(cfg: Config, run_dir: Path, data: Path, seconds: float, load_before: tuple[float, ...]) -> dict:
    times = json.loads((run_dir / "stage_times.json").read_text())
    rows = []
    for folder, (arch, flags, label) in floors(cfg).items():
        rows.append({"model": folder.split("/")[-1], "label": label, "kind": "floor", "arch": arch, "seeds": 1,
                     **scores(run_dir, folder)})
    by_model = {r["model"]: r for r in rows}
    teacher = {"model": "teacher", "label": f"Teacher {arch_label(cfg.teacher.arch)} (MoCo-v2)", "kind": "teacher",
               "arch": cfg.teacher.arch, "epochs": cfg.teacher.epochs, "seeds": 1, **scores(run_dir, "teacher"),
               **training_record(run_dir, "teacher", times)}
    rows.append(teacher)
    for method in METHODS:
        runs = []
        for seed in range(cfg.seeds):
            folder = student_folder(method, seed)
            runs.append({"seed": seed, **scores(run_dir, folder), **training_record(run_dir, folder, times)})
        rows.append({"model": method, "label": f"{arch_label(cfg.student.arch)}, {METHOD_LABELS[method]}",
                     "kind": "student", "arch": cfg.student.arch, "epochs": cfg.student.epochs,
                     "seeds": cfg.seeds, **aggregate(runs), "runs": runs})
    for row in rows:
        if row["kind"] != "floor":
            for name, floor in (("untrained", by_model[f"untrained-{row['arch']}"]),
                                ("untrained_data_bn", by_model[f"untrained-{row['arch']}-data-bn"])):
                row[name] = {key: floor[key] for key in ("knn10_top1", "linear_top1")}
                row[f"above_{name}"] = {key: row[key] > floor[key] for key in ("knn10_top1", "linear_top1")}
    return {"config": asdict(cfg), "rows": rows, "bag_purity": bag_purity(run_dir / "neighbours.npy", data),
            "wall_seconds": seconds,
            "total_stage_seconds": sum(times.values()), "stage_seconds": times,
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg())},
            "command": " ".join([Path(sys.executable).name, "-m", "scripts.demo", *sys.argv[1:]])}


def cell(row: dict, key: str) -> str:
    text = f"{row[key]:.1f}"
    if row["seeds"] > 1:
        text += f" ± {row[f'{key}_std']:.1f}"
    if not row.get("above_untrained", {}).get(key, True):
        text += " †"
    if not row.get("above_untrained_data_bn", {}).get(key, True):
        text += " ‡"
    return text


def table(results: dict) -> str:
    lines = ["| model | kind | 10-NN top-1 | linear top-1 | linear top-5 | epochs | seeds | train time |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        epochs = r.get("epochs", "—")
        minutes = f"{r['train_seconds'] / 60:.1f} min" if r["kind"] != "floor" else "—"
        lines.append(f"| {r['label']} | {r['kind']} | {cell(r, 'knn10_top1')} | {cell(r, 'linear_top1')} | "
                     f"{cell(r, 'linear_top5')} | {epochs} | {r['seeds']} | {minutes} |")
    return "\n".join(lines)


def summary(results: dict) -> list[str]:
    """Per trained row: above its network untrained or not (as initialised, and with BN statistics of the data);
    then BINGO against the two baselines."""
    lines = []
    for r in results["rows"]:
        if r["kind"] == "floor":
            continue
        parts = []
        for name, what, mark in (("untrained", "untrained", "†"),
                                 ("untrained_data_bn", "untrained with BN statistics of the data", "‡")):
            gaps = ", ".join(f"{label} {r[key] - r[name][key]:+.1f}"
                             for key, label in (("knn10_top1", "10-NN"), ("linear_top1", "linear")))
            verdict = "above" if all(r[f"above_{name}"].values()) else f"NOT above ({mark})"
            parts.append(f"{verdict} the same network {what} ({gaps})")
        lines.append(f"{r['label']}: " + "; ".join(parts))
    by_model = {r["model"]: r for r in results["rows"]}
    bingo = by_model["bingo"]
    for other in ("moco", "seed"):
        gaps = ", ".join(f"{name} {bingo[key] - by_model[other][key]:+.1f}"
                         for key, name in (("knn10_top1", "10-NN"), ("linear_top1", "linear")))
        lines.append(f"BINGO against {METHOD_LABELS[other]}: {gaps} points (means over {bingo['seeds']} seed(s))")
    return lines


def report(results: dict, run_dir: Path) -> None:
    cfg = results["config"]
    text = (f"# BINGO demo on Fashion-MNIST ({cfg['name']} configuration)\n\n{table(results)}\n\n"
            "† not above the same network untrained; ‡ not above it untrained with BatchNorm statistics of the "
            "data. Students: mean ± standard deviation over seeds.\n\n"
            + "\n".join(f"- {line}" for line in summary(results))
            + f"\n\nTraining images: {cfg['train_per_class'] or 6000} per class, validation: "
            f"{cfg['val_per_class'] or 1000} per class, {cfg['image_size']} px. Linear probe: last epoch of "
            f"{cfg['probe_epochs']}; k-NN: 10 neighbours, majority vote. BINGO's bags: "
            f"{results['bag_purity']:.1f} % of the teacher's 5 nearest neighbours share the image's class. All stages "
            "together: "
            f"{results['total_stage_seconds'] / 60:.1f} min.\n\n"
            "![learning curves](learning_curves.png)\n![accuracy](accuracy.png)\n![loss curves](loss_curves.png)\n")
    (run_dir / "results.md").write_text(text)
    atomic_json(results, run_dir / "results.json")
    plot(results, run_dir)
    print("\n" + table(results) + "\n\n" + "\n".join(summary(results))
          + f"\nBINGO's bags: {results['bag_purity']:.1f} % of the teacher's neighbours share the image's class"
          + f"\n\nwritten: {run_dir / 'results.md'}, results.json, learning_curves.png, accuracy.png, loss_curves.png",
          flush=True)


def mean_curve(curves: list[list]) -> tuple[list, list, list]:
    """x, mean and standard deviation of curves given as [[x, y], ...] (points present in every curve)."""
    xs = sorted(set.intersection(*(set(x for x, _ in c) for c in curves)))
    ys = [[dict((x, y) for x, y in c)[x] for c in curves] for x in xs]
    return xs, [statistics.mean(v) for v in ys], [statistics.stdev(v) if len(v) > 1 else 0.0 for v in ys]


def plot(results: dict, run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = results["rows"]
    floors_ = [r for r in rows if r["kind"] == "floor"]
    trained = [r for r in rows if r["kind"] != "floor"]

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, kind in zip(axes, ("teacher", "student")):
        for r in (r for r in trained if r["kind"] == kind):
            curves = [r["knn_curve"]] if kind == "teacher" else [run["knn_curve"] for run in r["runs"]]
            if not all(curves):
                continue
            xs, mean, std = mean_curve(curves)
            ax.plot(xs, mean, marker="o", label=r["label"])
            ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
        arch = next(r["arch"] for r in trained if r["kind"] == kind)
        for r, style in zip((f for f in floors_ if f["arch"] in ("pixels", arch)), (":", "--", "-.")):
            ax.axhline(r["knn10_top1"], color="gray", linestyle=style, linewidth=1, label=r["label"])
        ax.set_xlabel("epoch")
        ax.set_title(f"{kind}: k-NN monitor (k = 10) on validation")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("10-NN top-1 (%)")
    fig.tight_layout()
    fig.savefig(run_dir / "learning_curves.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    names = [r["label"].replace(", ", "\n").replace(" (", "\n(") for r in rows]
    x = range(len(rows))
    handles = []
    for offset, key, label, colour in ((-0.2, "knn10_top1", "10-NN top-1", "tab:blue"),
                                       (0.2, "linear_top1", "linear top-1", "tab:orange")):
        bars = ax.bar([i + offset for i in x], [r[key] for r in rows], width=0.4, color=colour,
                      yerr=[r.get(f"{key}_std", 0.0) for r in rows], capsize=3, edgecolor="black", linewidth=0.3)
        for bar, r in zip(bars, rows):
            if r["kind"] == "floor":
                bar.set_hatch("//")
        handles.append(Patch(facecolor=colour, edgecolor="black", linewidth=0.3, label=label))
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="floor"))
    ax.set_xticks(list(x), names, fontsize=6)
    ax.set_ylabel("accuracy (%)")
    low = min(min(r["knn10_top1"], r["linear_top1"]) for r in rows)
    ax.set_ylim(max(0, low - 15), 100)
    ax.legend(handles=handles, fontsize=8)
    ax.set_title("Fashion-MNIST validation accuracy (hatched: floors; students: mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(run_dir / "accuracy.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in trained:
        curves = [r["loss_curve"]] if r["kind"] == "teacher" else [run["loss_curve"] for run in r["runs"]]
        xs, mean, _ = mean_curve([list(enumerate(c)) for c in curves])
        ax.plot(xs, mean, marker="o", label=r["label"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (epoch mean)")
    ax.set_title("Training loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "loss_curves.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the smoke configuration the tests run")
    parser.add_argument("--config", choices=sorted(CONFIGS), help="default: gpu when CUDA is available, else cpu")
    parser.add_argument("--seeds", type=int, help="student runs per method (default: the configuration's)")
    parser.add_argument("--run_dir", type=Path, help="default: runs/demo-<config>[-<seeds>seeds]")
    parser.add_argument("--data_dir", type=Path, help="default: demo_data/fmnist-<split>")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--fmnist_dir", type=Path,
                        help="folder with the four Fashion-MNIST .gz files (default: Debian's package folder)")
    args = parser.parse_args()
    import torch

    name = "quick" if args.quick else args.config or ("gpu" if torch.cuda.is_available() else "cpu")
    cfg = CONFIGS[name]
    if args.seeds is not None:
        if args.seeds < 1:
            parser.error("--seeds must be at least 1")
        cfg = replace(cfg, seeds=args.seeds)
    default_run = f"demo-{name}" + (f"-{cfg.seeds}seeds" if cfg.seeds != CONFIGS[name].seeds else "")
    run(cfg, (args.run_dir or REPO / "runs" / default_run).resolve(),
        (args.data_dir or REPO / "demo_data" / data_folder(cfg)).resolve(), args.device, args.fmnist_dir)


if __name__ == "__main__":
    main()
