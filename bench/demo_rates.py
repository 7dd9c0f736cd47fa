"""Images/s of each training stage of the demo against the compute-only rate of the same step, and the operators
its views step dispatches at two batch sizes; prints tables.

    python -m bench.demo_rates                    # the cpu configuration, on the demo's own data
    python -m bench.demo_rates --config gpu --device cuda --inputs memory        # the GPU configuration
    python -m bench.demo_rates --config quick --epochs 2 --steps 2        # smoke size (the tests run this)
    python -m bench.demo_rates --config gpu --device cuda --from_run runs/demo-gpu     # a finished demo's own rates

For each training stage of the demo (the MoCo-v2 teacher, then the MoCo-v2, SEED and BINGO students) it runs
`main_distill.py` with the demo's own flags for `--epochs` epochs on the demo's data and takes the median images/s
of the epochs after the first (what the loop reports, data loading included); then, in this process, it builds the
very same networks, optimizer and distiller from the same flags (`engine.distillation.build_distiller`) and times
`--steps` steps on synthetic tensors of the same batch and size (compute only). Both rates come from the same run,
so machine load affects them alike. `--from_run` trains nothing: it takes each stage's data-fed rate from a demo
run's own metrics (the teacher and the seed-0 students) and times only the compute-only steps. `--inputs` adds rows
for other input paths: `files` is the default loader path (PIL in `--num_workers` loader processes), `memory` the
demo's (decoded images held as one tensor on the device, views made per batch there), `compiled` the demo's with
the views step compiled (`--compile_views`; its compile time falls in the first epoch, which the rate leaves out).

The operator count is `torch.profiler`'s events for one call of the `memory` (and `compiled`) path's views step
(draws, crop and resize, colour, blur, flip) of each stage, on the CPU, at the stage's batch and at four times it:
the views are made per batch when the two counts are equal.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.distill_step import time_steps
from bench.flags import names
from scripts.demo import CONFIGS, CPU_INPUT, REPO, Training, data_folder, train_args
from utils.logs import read_metrics

INPUTS = {"memory": CPU_INPUT, "files": (), "compiled": (*CPU_INPUT, "--compile_views")}
STAGES = ("teacher", "moco", "seed", "bingo")


def data_fed(args: list[str], out: Path) -> dict:
    """Run main_distill.py with ``args``; median images/s of the epochs after the first, and the process's wall
    time (start-up included)."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(REPO / "main_distill.py"), *args], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"main_distill.py failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    epochs = [m for m in read_metrics(out / "metrics.jsonl") if m["kind"] == "epoch"]
    rates = [m["images_per_s"] for m in epochs[1:]] or [epochs[0]["images_per_s"]]
    return {"images_per_s": statistics.median(rates), "process_seconds": time.perf_counter() - start}


def options(args: list[str]):
    """``main_distill.py``'s options for ``args``, with each method's release defaults."""
    import main_distill
    from engine.distillation import resolve_method_defaults
    from engine.options import DistillOptions, from_argv

    return resolve_method_defaults(from_argv(DistillOptions, main_distill.FLAGS, ["main_distill.py", *args]))


def compute_only(args: list[str], steps: int, views: int) -> float:
    """Images/s of the step ``main_distill.py args`` would build, on synthetic tensors (no data loading)."""
    from engine.distillation import build_distiller, load_teacher_network
    from models.checkpoints import read_file
    from utils import dist as edist

    opts = options(args)
    ctx = edist.init(opts.device)
    teacher = load_teacher_network(opts, read_file(opts.pretrain_path)[0], False) if opts.uses_teacher else None
    distiller, optimizer = build_distiller(opts, teacher, ctx, seed=0)
    distiller.set_epoch(0, 0, 0)
    batch, size = opts.batch_size, opts.image_size
    memory_format = torch.channels_last if opts.channels_last else torch.contiguous_format
    tensors = tuple(torch.randn(batch, 3, size, size, device=ctx.device).contiguous(memory_format=memory_format)
                    for _ in range(views))

    def step() -> None:
        loss, _ = distiller(tensors, epoch=opts.end_epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    return batch / time_steps(step, steps, ctx.device)


def view_operators(args: list[str], batches: tuple[int, int]) -> list[int]:
    """Events ``torch.profiler`` records for one views step of the stage ``args`` describes (its images held in
    memory, on the CPU), at each of ``batches``."""
    from torch.profiler import profile

    from engine.distillation import build_dataset

    opts = options([*args, "--device=cpu", "--device_views", "--in_memory"])
    dataset, prepare, _ = build_dataset(opts, 0, torch.device("cpu"), lambda images: None)
    counts = []
    for batch in batches:
        indices = torch.arange(batch) % len(dataset)
        prepare((0, indices))  # warm-up
        with profile() as prof:
            prepare((1, indices))
        counts.append(len(prof.events()))
    return counts


def from_run(cfg, run_dir: Path, data: Path, steps: int, device: str) -> list[dict]:
    """Rows for the stages a demo run in ``run_dir`` trained: the median images/s its epochs after the first
    logged, against the compute-only rate of the step the same flags build."""
    from scripts.demo import variants
    from scripts.demo.stages import neighbours_file, student_folder

    teacher = run_dir / "teacher" / "final.pth"
    stages = [("teacher", "moco", cfg.teacher, ())]
    for model, method, bagging in variants(cfg):
        extra = () if method == "moco" else (f"--t_arch={cfg.teacher.arch}", f"--pretrain_path={teacher}")
        if bagging:
            extra += (f"--corr_npy={neighbours_file(run_dir, bagging)}",)
        stages.append((student_folder(model, 0), method, cfg.student, extra))
    rows = []
    for folder, method, stage, extra in stages:
        epochs = [m for m in read_metrics(run_dir / folder / "metrics.jsonl") if m["kind"] == "epoch"] \
            if (run_dir / folder / "metrics.jsonl").is_file() else []
        if not epochs:
            print(f"{folder}: no epoch logged in {run_dir}, skipped", flush=True)
            continue
        fed = statistics.median(m["images_per_s"] for m in epochs[1:] or epochs)
        run_args = stage_args(cfg, stage, data, run_dir / folder, method, stage.epochs, CPU_INPUT, device, extra)
        compute = compute_only(run_args, steps, views=4 if method == "bingo" else 2)
        rows.append({"stage": folder, "inputs": "memory (demo run)", "arch": stage.arch, "stem": cfg.stem,
                     "batch": stage.batch_size, "size": cfg.image_size, "device": device, "data_fed": fed,
                     "compute_only": compute, "ratio": fed / compute, "process_seconds": None})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def stage_args(cfg, stage: Training, data: Path, out: Path, method: str, epochs: int, inputs: tuple, device: str,
               extra: tuple = ()) -> list[str]:
    args = train_args(cfg, replace(stage, epochs=epochs), data, out, method, seed=0, extra=extra)
    args = [a for a in args if a not in CPU_INPUT  # the rates' own input, no monitor and nothing scored
            and not a.startswith(("--knn_monitor_freq", "--resume", "--final_evaluation"))]
    workers = cfg.workers if inputs else max(1, cfg.workers)
    return ([a for a in args if not a.startswith("--num_workers")]
            + [f"--num_workers={workers}", f"--device={device}", *inputs])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--config", default="cpu", choices=sorted(CONFIGS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed synthetic steps per stage")
    parser.add_argument("--inputs", default="memory,files", type=names(INPUTS),
                        help=f"comma-separated, from {list(INPUTS)}")
    parser.add_argument("--stages", default=",".join(STAGES), type=names(STAGES),
                        help="comma-separated; seed and bingo distil from the teacher stage's network")
    parser.add_argument("--data_dir", type=Path, help="default: the demo's folder for the configuration's split")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the stages train")
    parser.add_argument("--fmnist_dir", type=Path, help="folder with the four Fashion-MNIST .gz files")
    parser.add_argument("--from_run", type=Path,
                        help="a demo run folder of --config: its logged rates, only the compute-only steps timed")
    parser.add_argument("--json")
    args = parser.parse_args()
    from scripts.demo.stages import training_data

    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    cfg = CONFIGS[args.config]
    data = training_data(cfg, (args.data_dir or REPO / "demo_data" / data_folder(cfg)).resolve(), args.fmnist_dir)
    load = os.getloadavg()
    if args.from_run:
        rows = from_run(cfg, args.from_run.resolve(), data, args.steps, args.device)
    else:
        rows = train_stages(cfg, data, args)
    print_table(cfg, args, rows, load)


def train_stages(cfg, data: Path, args) -> list[dict]:
    """Rows for the stages of ``--stages``, each trained ``--epochs`` epochs on each of ``--inputs``."""
    with tempfile.TemporaryDirectory(prefix="demo_rates.") as tmp:  # the runs: gone with the rows made
        return _train_stages(cfg, data, args, Path(tmp))


def _train_stages(cfg, data: Path, args, work: Path) -> list[dict]:
    inputs = args.inputs
    teacher, neighbours = work / f"teacher-{inputs[0]}" / "final.pth", work / "neighbours.npy"
    rows = []
    stages = args.stages
    distilled = any(m in stages for m in ("seed", "bingo"))
    for method in STAGES:
        measured = method in stages
        if not measured and not (method == "teacher" and distilled):
            continue
        stage = cfg.teacher if method == "teacher" else cfg.student
        extra = () if method in ("teacher", "moco") else (
            f"--t_arch={cfg.teacher.arch}", f"--pretrain_path={teacher}",
            *((f"--corr_npy={neighbours}",) if method == "bingo" else ()))
        for name in inputs if measured else inputs[:1]:  # an unmeasured teacher still trains, for the students
            out = work / f"{method}-{name}"
            run_args = stage_args(cfg, stage, data, out, "moco" if method == "teacher" else method, args.epochs,
                                  INPUTS[name], args.device, extra)
            fed = data_fed(run_args, out)
            if not measured:
                continue
            compute = compute_only(run_args, args.steps, views=4 if method == "bingo" else 2)
            row = {"stage": method, "inputs": name, "arch": stage.arch, "stem": cfg.stem, "batch": stage.batch_size,
                   "size": cfg.image_size, "device": args.device, "data_fed": fed["images_per_s"],
                   "compute_only": compute, "ratio": fed["images_per_s"] / compute,
                   "process_seconds": fed["process_seconds"]}
            if name in ("memory", "compiled"):
                batches = (stage.batch_size, 4 * stage.batch_size)
                row["view_operators"] = dict(zip(map(str, batches), view_operators(run_args, batches)))
            rows.append(row)
            print(json.dumps(row), flush=True)
        if method == "teacher" and distilled:
            subprocess.run([sys.executable, str(REPO / "run_knn.py"), f"--arch={cfg.teacher.arch}",
                            f"--ckpt_name={teacher}", f"--data_dir={data}", "--clus_pos_num=5",
                            f"--image_size={cfg.image_size}", f"--corr_name={neighbours}", "--num_workers=0",
                            f"--stem={cfg.stem}", f"--device={args.device}"], check=True, capture_output=True)
    return rows


def print_table(cfg, args, rows: list[dict], load: tuple) -> None:
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()} CPUs"
    epochs = "the demo run's" if args.from_run else args.epochs
    print(f"\nconfig {cfg.name} ({cfg.stem} stem) on {device}: {epochs} epochs per stage (rate: median of epochs "
          f"2..), {args.steps} synthetic steps; torch threads {torch.get_num_threads()}, load average before "
          f"{load[0]:.2f} after {os.getloadavg()[0]:.2f}")
    print("| stage | input path | network | batch | data-fed img/s | compute-only img/s | data-fed / compute | "
          "process s | views step: operators at batch B / 4B (CPU) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ops = " / ".join(str(v) for v in r["view_operators"].values()) if "view_operators" in r else "—"
        process = "—" if r["process_seconds"] is None else f"{r['process_seconds']:.0f}"
        print(f"| {r['stage']} | {r['inputs']} | {r['arch']} | {r['batch']} | {r['data_fed']:.1f} | "
              f"{r['compute_only']:.1f} | {100 * r['ratio']:.0f} % | {process} | {ops} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "config": cfg.name, "device": device,
                                               "load_average": load}, indent=1))


if __name__ == "__main__":
    main()
