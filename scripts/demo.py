"""The whole pipeline on real images from one command: `make demo` (or `python -m scripts.demo`).

Fashion-MNIST stands in for ImageNet and everything is self-supervised, as in the paper: a larger teacher (ResNet-34
on a CPU, ResNet-50 with a GPU) is pretrained with this project's MoCo-v2 (`main_distill.py --method=moco`), the kNN step bags the training images with
it, and three ResNet-18 students train for the same epochs: BINGO, SEED, and MoCo-v2 without a teacher. Teacher and
students are then scored with the linear probe and the k-NN classifier (`main_lincls.py`).

Each stage runs the project's own entry points, shows their progress, and is skipped when its output exists, so an
interrupted demo resumes where it stopped (training stages continue from their last epoch). The run folder ends
with results.md, results.json and PNG plots. `--quick` is the 2-minute smoke version used by the tests; on a
machine with a GPU the default configuration grows (all 60,000 images, more epochs).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from datasets.fashion_mnist import prepare  # noqa: E402
from engine.io import atomic_json  # noqa: E402
from engine.logs import read_metrics  # noqa: E402


@dataclass
class Config:
    name: str
    teacher_arch: str
    train_per_class: int | None
    val_per_class: int | None
    image_size: int
    teacher_epochs: int
    student_epochs: int
    probe_epochs: int
    batch_size: int
    queue: int
    lr: float
    warmup: int
    workers: int
    cuda_speed: bool = False  # bf16, channels_last and --device_views in the training and kNN stages




CONFIGS = {
    "quick": Config("quick", "resnet34", 16, 8, 32, 1, 1, 1, 32, 64, 0.03, 0, 0),
    "cpu": Config("cpu", "resnet34", 100, 50, 32, 12, 5, 5, 32, 512, 0.03, 1, 1),
    # Sized (by estimate, not yet measured) to take about 15 minutes on one H100 with 16 cores; see bench/RESULTS.md.
    "gpu": Config("gpu", "resnet50", None, None, 32, 100, 30, 30, 512, 16384, 0.06, 3, 16, cuda_speed=True),
}
STUDENTS = ("moco", "seed", "bingo")
LABELS = {"teacher": "Teacher (MoCo-v2)", "moco": "ResNet-18, MoCo-v2 (no teacher)",
          "seed": "ResNet-18, SEED", "bingo": "ResNet-18, BINGO"}


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
                                   text=True, env=None)
        for line in process.stdout:
            if not line.startswith(("I1", "W1")):  # absl's own INFO/WARNING chatter (faiss loading)
                print(f"[{name}] {line}", end="", flush=True)
        if process.wait():
            raise SystemExit(f"[{name}] failed (exit {process.returncode}); run the demo again to resume")
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start
        atomic_json(self.times, self.times_path)


def distill_args(cfg: Config, data: Path, out: Path, method: str, arch: str, epochs: int, extra=()) -> list[str]:
    return [f"--method={method}", f"--s_arch={arch}", f"--data_dir={data}", f"--output_dir={out}",
            f"--image_size={cfg.image_size}", f"--batch_size={cfg.batch_size}", f"--moco_k={cfg.queue}",
            f"--init_lr={cfg.lr}", f"--end_epoch={epochs}", f"--num_workers={cfg.workers}", "--seed=0",
            "--report_freq=50", "--save_freq=0", "--resume=auto",
            *(["--amp", "--channels_last", "--device_views"] if cfg.cuda_speed else []), *extra]


def evaluate(runner: Runner, cfg: Config, data: Path, name: str, arch: str, checkpoint: Path) -> None:
    common = [f"--arch={arch}", f"--pretrained={checkpoint}", f"--data_dir={data}", f"--image_size={cfg.image_size}",
              f"--batch_size={cfg.batch_size}", f"--num_workers={cfg.workers}"]
    runner.stage(f"{name}: k-NN", runner.run_dir / name / "knn" / "results.json", "main_lincls.py",
                 common + ["--protocol=knn", f"--output_dir={name}/knn"])
    runner.stage(f"{name}: linear", runner.run_dir / name / "linear" / "done", "main_lincls.py",
                 common + [f"--output_dir={name}/linear", f"--end_epoch={cfg.probe_epochs}", "--init_lr=0.5",
                           "--min_lr=0.01", "--resume=auto", "--report_freq=1000"])
    linear = runner.run_dir / name / "linear"
    if (linear / "results.json").is_file() and json.loads((linear / "results.json").read_text()).get(
            "epochs_done") == cfg.probe_epochs:
        (linear / "done").write_text("")


def run(cfg: Config, run_dir: Path, data_dir: Path, device: str, source: Path | None = None) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = prepare(data_dir, cfg.train_per_class, cfg.val_per_class, source=source).resolve()
    runner = Runner(run_dir, device)
    runner.stage("teacher", run_dir / "teacher" / "final.pth", "main_distill.py",
                 distill_args(cfg, data, run_dir / "teacher", "moco", cfg.teacher_arch, cfg.teacher_epochs))
    teacher = run_dir / "teacher" / "final.pth"
    runner.stage("kNN step", run_dir / "neighbours.npy", "run_knn.py",
                 [f"--arch={cfg.teacher_arch}", f"--ckpt_name={teacher}", f"--data_dir={data}", "--clus_pos_num=5",
                  f"--image_size={cfg.image_size}", f"--corr_name={run_dir / 'neighbours.npy'}",
                  f"--batch_size={cfg.batch_size}", f"--num_workers={cfg.workers}",
                  *(["--channels_last", "--device_views"] if cfg.cuda_speed else [])])
    for method in STUDENTS:
        extra = [f"--t_arch={cfg.teacher_arch}", f"--pretrain_path={teacher}", f"--corr_npy={run_dir / 'neighbours.npy'}",
                 f"--bag_warmup_epochs={cfg.warmup}"] if method != "moco" else []
        runner.stage(f"student {method}", run_dir / method / "final.pth", "main_distill.py",
                     distill_args(cfg, data, run_dir / method, method, "resnet18", cfg.student_epochs, extra))
    evaluate(runner, cfg, data, "teacher", cfg.teacher_arch, teacher)
    for method in STUDENTS:
        evaluate(runner, cfg, data, method, "resnet18", run_dir / method / "final.pth")
    results = collect(cfg, run_dir, time.perf_counter() - started)
    report(results, run_dir)
    return results


def collect(cfg: Config, run_dir: Path, seconds: float) -> dict:
    times = json.loads((run_dir / "stage_times.json").read_text())
    rows = []
    for name in ("teacher", *STUDENTS):
        linear = json.loads((run_dir / name / "linear" / "results.json").read_text())
        knn = json.loads((run_dir / name / "knn" / "results.json").read_text())["knn"]
        curve = read_metrics(run_dir / name / "metrics.jsonl")
        train_key = "teacher" if name == "teacher" else f"student {name}"
        label = LABELS[name] if name != "teacher" else f"Teacher {cfg.teacher_arch} (MoCo-v2)"
        rows.append({
            "model": name, "label": label,
            "linear_top1": linear["last"]["top1"], "linear_top5": linear["last"]["top5"],
            "linear_best_top1": linear["best"]["top1"], "knn10_top1": knn["k10_majority"]["top1"],
            "knn200_weighted_top1": next(v["top1"] for k, v in knn.items() if k.startswith("k") and "weighted" in k
                                         and v["k"] == max(r["k"] for r in knn.values())),
            "epochs": cfg.teacher_epochs if name == "teacher" else cfg.student_epochs,
            "train_seconds": times.get(train_key, 0.0),
            "loss_curve": [r["loss"] for r in curve if r["kind"] == "epoch"],
        })
    return {"config": asdict(cfg), "rows": rows, "wall_seconds": seconds, "total_stage_seconds": sum(times.values())}


def report(results: dict, run_dir: Path) -> None:
    lines = ["| model | linear top-1 | linear top-5 | k-NN top-1 (k=10) | epochs | train time |",
             "|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['label']} | {r['linear_top1']:.1f} | {r['linear_top5']:.1f} | {r['knn10_top1']:.1f} | "
                     f"{r['epochs']} | {r['train_seconds'] / 60:.1f} min |")
    cfg = results["config"]
    table = "\n".join(lines)
    text = (f"# BINGO demo on Fashion-MNIST ({cfg['name']} configuration)\n\n{table}\n\n"
            f"Training images: {cfg['train_per_class'] or 6000} per class, validation: "
            f"{cfg['val_per_class'] or 1000} per class, {cfg['image_size']} px. Linear probe: last epoch of "
            f"{cfg['probe_epochs']}. All stages together: {results['total_stage_seconds'] / 60:.1f} min.\n\n"
            "![loss curves](loss_curves.png)\n![accuracy](accuracy.png)\n")
    (run_dir / "results.md").write_text(text)
    atomic_json(results, run_dir / "results.json")
    plot(results, run_dir)
    print("\n" + table + f"\n\nwritten: {run_dir / 'results.md'}, results.json, loss_curves.png, accuracy.png",
          flush=True)


def plot(results: dict, run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results["rows"]:
        ax.plot(range(len(r["loss_curve"])), r["loss_curve"], marker="o", label=r["label"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (epoch mean)")
    ax.set_title("Training loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "loss_curves.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    names = [r["label"].replace(", ", "\n") for r in results["rows"]]
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [r["linear_top1"] for r in results["rows"]], width=0.4, label="linear top-1")
    ax.bar([i + 0.2 for i in x], [r["knn10_top1"] for r in results["rows"]], width=0.4, label="10-NN top-1")
    ax.set_xticks(list(x), names, fontsize=7)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("Fashion-MNIST validation accuracy")
    fig.tight_layout()
    fig.savefig(run_dir / "accuracy.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the 2-minute smoke configuration")
    parser.add_argument("--config", choices=sorted(CONFIGS), help="default: gpu when CUDA is available, else cpu")
    parser.add_argument("--run_dir", type=Path, help="default: runs/demo-<config>")
    parser.add_argument("--data_dir", type=Path, help="default: demo_data/fmnist-<config>")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--fmnist_dir", type=Path,
                        help="folder with the four Fashion-MNIST .gz files (default: Debian's package folder)")
    args = parser.parse_args()
    import torch

    name = "quick" if args.quick else args.config or ("gpu" if torch.cuda.is_available() else "cpu")
    cfg = CONFIGS[name]
    run(cfg, (args.run_dir or REPO / "runs" / f"demo-{name}").resolve(),
        (args.data_dir or REPO / "demo_data" / f"fmnist-{name}").resolve(), args.device, args.fmnist_dir)


if __name__ == "__main__":
    main()
