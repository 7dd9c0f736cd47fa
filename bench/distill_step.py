"""Benchmark of one distillation step on synthetic tensors already on the device; prints a table.

    python bench/distill_step.py                         # GPU: R18<-R50, R18<-R50w2, EffB0<-R50w2 at 224 px
    python bench/distill_step.py --pairs resnet18:resnet50 --batches 4 --size 64 --steps 2   # CPU smoke size

Per pair and per-GPU batch it runs, in one process and in alternation, the official-style configuration (fp32, NCHW,
separate teacher forwards with train-mode BN) and the fast one (bf16 autocast, channels_last, the teacher's two
forwards), then fast rows with one fused teacher forward in train mode with BatchNorm statistics per view (the
released recipe's keys) and SGD's fused update (``fast+fused``), that compiled (``+compile``) and compiled into CUDA
graphs (``+graphs``, torch.compile's reduce-overhead mode), and, for reference, an eval-mode fused teacher. It
reports anchors/s, peak memory, fast/official, the model FLOP rate (FLOPs per anchor are 2 teacher forwards + 3
student forward-and-backward passes, backward counted as twice the forward) and what one step launches:
``torch.profiler``'s kernel launches on a GPU (a CUDA graph's replay counts once), its dispatched operators on the
CPU. Two ceilings are measured in the same run: a plain supervised ResNet-50 training step in bf16 + channels_last,
and a large bf16 matmul.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.flags import counts, names, pairs
from models.backbones import build_backbone
from models.distiller import DistillConfig, Embedder
from models.heads import mlp_head, student_head, swav_head
from models.methods import build_method

OFFICIAL = dict(amp=False, channels_last=False, teacher_mode="train", fuse=False, fused_optimizer=False, compile=None)
FAST = dict(OFFICIAL, amp=True, channels_last=True)
FUSED = dict(FAST, fuse=True, fused_optimizer=True)  # main_distill.py --fuse_teacher --fused_optimizer
CONFIGS = {  # compile: None, or main_distill.py's --compile_mode
    "official": OFFICIAL,
    "fast": FAST,
    "fast+fused": FUSED,
    "fast+fused+compile": dict(FUSED, compile="default"),
    "fast+fused+graphs": dict(FUSED, compile="reduce-overhead"),
    "fast+eval-teacher-fused": dict(FAST, teacher_mode="eval", fuse=True),
    "fast+compile": dict(FAST, compile="default"),
}


def teacher_for(arch: str) -> Embedder:
    backbone = build_backbone(arch)
    head = swav_head() if arch == "resnet50w2" else mlp_head(backbone.feature_dim, 2048, 128)
    return Embedder(backbone, head)


def forward_flops(module: torch.nn.Module, size: int, device: torch.device) -> float:
    module = module.to(device).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.randn(2, 3, size, size, device=device))
    return counter.get_total_flops() / 2


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_config(**overrides) -> DistillConfig:
    """``main_distill.py``'s step settings at its flags' defaults, with ``overrides``."""
    import dataclasses

    import main_distill
    from engine.distillation import distill_config, resolve_method_defaults
    from engine.options import DistillOptions, from_argv

    options = resolve_method_defaults(from_argv(DistillOptions, main_distill.FLAGS, ["main_distill.py"]))
    return dataclasses.replace(distill_config(options), **overrides)


def build(student_arch: str, teacher_arch: str, config: dict, device: torch.device, queue: int) -> tuple:
    backbone = build_backbone(student_arch)
    student = Embedder(backbone, student_head(backbone.feature_dim, 128))
    distill = default_config(queue_size=queue, amp=config["amp"], teacher_mode=config["teacher_mode"],
                             fuse_teacher=config["fuse"])
    distiller = build_method(student, teacher_for(teacher_arch), distill).to(device)
    if config["channels_last"]:
        distiller = distiller.to(memory_format=torch.channels_last)
    if config["compile"]:
        distiller.compile_networks(config["compile"])
    optimizer = torch.optim.SGD(distiller.student.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4,
                                fused=config["fused_optimizer"] or None)
    return distiller, optimizer


def step(distiller, optimizer, views) -> None:
    distiller.begin_step()
    loss, _ = distiller(views, epoch=20)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def make_views(batch: int, size: int, device: torch.device, channels_last: bool) -> tuple:
    views = [torch.randn(batch, 3, size, size, device=device) for _ in range(4)]
    if channels_last:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    return tuple(views)


def time_steps(fn, steps: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / steps


def launches(fn, device: torch.device) -> int:
    """Kernel launches (CUDA; a graph replay is one) or dispatched operators (CPU) ``torch.profiler`` records in one
    call of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    if device.type != "cuda":
        return len(prof.events())
    return sum(1 for e in prof.events() if e.name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC",
                                                        "cudaGraphLaunch", "cuLaunchKernelEx"))


def bench_pair(student: str, teacher: str, batch: int, args, device) -> list[dict]:
    runs = {}
    for name, config in CONFIGS.items():
        if name not in args.configs:
            continue
        distiller, optimizer = build(student, teacher, config, device, args.queue)
        views = make_views(batch, args.size, device, config["channels_last"])
        runs[name] = (distiller, optimizer, views)
        for _ in range(args.warmup):
            step(distiller, optimizer, views)
    counts = {name: launches(lambda: step(*run), device) for name, run in runs.items()}
    times = {name: [] for name in runs}
    peaks = {}
    for _ in range(args.rounds):  # alternate the configurations so drift affects all alike
        for name, (distiller, optimizer, views) in runs.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times[name].append(time_steps(lambda: step(distiller, optimizer, views), args.steps, device))
            peaks[name] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    flops = 2 * forward_flops(teacher_for(teacher), args.size, device) + 3 * 3 * forward_flops(
        Embedder(build_backbone(student), student_head(build_backbone(student).feature_dim, 128)), args.size, device)
    base = statistics.median(times["official"])
    rows = []
    for name in runs:
        t = statistics.median(times[name])
        rows.append({"pair": f"{student}<-{teacher}", "batch": batch, "config": name, "anchors_per_s": batch / t,
                     "peak_gib": peaks[name], "speedup": base / t, "tflops": batch / t * flops / 1e12,
                     "gflop_per_anchor": flops / 1e9, "launches_per_step": counts[name]})
    del runs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def supervised_resnet50(batch: int, args, device) -> dict:
    """Ceiling: a plain supervised ResNet-50 training step, bf16 autocast + channels_last."""
    net = build_backbone("resnet50")
    model = torch.nn.Sequential(net, torch.nn.Linear(2048, 1000)).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images = torch.randn(batch, 3, args.size, args.size, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), device=device)

    def train_step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        train_step()
    t = statistics.median(time_steps(train_step, args.steps, device) for _ in range(args.rounds))
    flops = 3 * 2 * forward_flops(net, args.size, device)
    return {"images_per_s": batch / t, "tflops": batch / t * flops / 1e12, "batch": batch}


def matmul_ceiling(device) -> float:
    if device.type != "cuda":
        return float("nan")
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    t = statistics.median(time_steps(lambda: a @ b, 10, device) for _ in range(5))
    return 2 * 8192**3 / t / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--pairs", default="resnet18:resnet50,resnet18:resnet50w2,efficientnet-b0:resnet50w2",
                        type=pairs, help="student:teacher, comma-separated")
    parser.add_argument("--batches", default="32,128", type=counts(1), help="per GPU, comma-separated")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--queue", type=int, default=65536)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", default="official,fast,fast+fused,fast+fused+compile,fast+fused+graphs,"
                        "fast+eval-teacher-fused", type=names(CONFIGS),
                        help=f"comma-separated, from {list(CONFIGS)} (the compiled ones compile for minutes)")
    parser.add_argument("--json")
    args = parser.parse_args()
    if "official" not in args.configs:
        parser.error(f"--configs: give official and any of {list(CONFIGS)} (each row is compared with official)")
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    rows = []
    for student, teacher in args.pairs:
        for batch in args.batches:
            for row in bench_pair(student, teacher, batch, args, device):
                rows.append(row)
                print(json.dumps(row), flush=True)
    ceiling = supervised_resnet50(max(args.batches), args, device)
    matmul = matmul_ceiling(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\ndevice: {name}; size {args.size} px; queue {args.queue}")
    launched = "kernel launches" if device.type == "cuda" else "operators"
    print(f"| pair | batch/GPU | config | anchors/s | peak GiB | x official | model TFLOP/s | % of R50 step | "
          f"{launched}/step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pair']} | {r['batch']} | {r['config']} | {r['anchors_per_s']:.1f} | {r['peak_gib']:.2f} | "
              f"{r['speedup']:.2f} | {r['tflops']:.1f} | {100 * r['tflops'] / ceiling['tflops']:.0f} | "
              f"{r['launches_per_step']} |")
    print(f"\nceilings: supervised ResNet-50 step (bf16, channels_last, batch {ceiling['batch']}): "
          f"{ceiling['images_per_s']:.0f} img/s = {ceiling['tflops']:.1f} TFLOP/s; bf16 matmul 8192^3: "
          f"{matmul:.0f} TFLOP/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "resnet50": ceiling, "matmul_tflops": matmul},
                                              indent=1))


if __name__ == "__main__":
    main()
