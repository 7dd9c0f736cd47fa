"""Functions run in spawned gloo processes by the distributed tests (they must be importable)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def tiny_embedder(in_dim: int = 3 * 8 * 8, dim: int = 16, seed: int = 0):
    from models.distiller import Embedder

    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(in_dim, 32), nn.BatchNorm1d(32), nn.ReLU())
    backbone.feature_dim = 32
    return Embedder(backbone, nn.Sequential(nn.Linear(32, dim)))


def distiller_step(rank: int, world: int, port: int, batch: list[torch.Tensor], out_path: str,
                   teacher_mode: str) -> None:
    """One BINGO step on this rank's slice of a fixed global batch; rank 0 saves the queue and pointer."""
    from models.methods import build_method

    from helpers import distill_config

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    per = batch[0].shape[0] // world
    mine = [v[rank * per:(rank + 1) * per] for v in batch]
    config = distill_config(dim=16, queue_size=4 * batch[0].shape[0], teacher_mode=teacher_mode, subgroup=8)
    distiller = build_method(tiny_embedder(seed=1), tiny_embedder(seed=2), config)
    distiller.set_epoch(0, 0, rank)
    before = distiller.queue.keys.clone()
    loss, _ = distiller(tuple(mine), epoch=0)
    if rank == 0:
        torch.save({"queue": distiller.queue.keys, "before": before, "ptr": distiller.queue.ptr}, out_path)
    if world > 1:
        dist.destroy_process_group()


def per_image_embedder(in_dim: int = 3 * 8 * 8, dim: int = 16, hidden: int = 32, seed: int = 0, head: bool = True):
    """An embedder with no BatchNorm: each image's output depends on that image alone, so a step over two processes
    must equal one over the global batch."""
    from models.distiller import Embedder

    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(in_dim, hidden), nn.ReLU())
    backbone.feature_dim = hidden
    return Embedder(backbone, nn.Sequential(nn.Linear(hidden, dim)) if head else nn.Identity())


def method_step(rank: int, world: int, port: int, method: str, batch: list[torch.Tensor], out_path: str,
                one_bank: bool = False) -> None:
    """Two steps of ``method`` on this rank's slice of a fixed global batch, the student under DDP as the loop runs
    it; rank 0 saves each step's loss (averaged over processes), the student's gradients and every ring buffer."""
    from torch.nn.parallel import DistributedDataParallel

    from models.methods import build_method

    from helpers import distill_config

    if world > 1:  # one process runs as the loop runs it without torchrun: no process group
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    per = batch[0].shape[0] // world
    headless = method == "compress"
    student = per_image_embedder(seed=1, hidden=32, head=not headless)
    if headless and one_bank:
        student.head = nn.Linear(32, 24)
    teacher = per_image_embedder(seed=2, hidden=24, head=not headless)
    config = distill_config(method=method, dim=16, queue_size=2 * batch[0].shape[0] + 4 if headless else 32,
                           t=0.2, moco_m=0.9, teacher_mode="eval", compress_one_bank=one_bank, disco_mse_weight=8.0)
    distiller = build_method(student, teacher, config)
    if world > 1:
        distiller.student = DistributedDataParallel(distiller.student)
    distiller.set_epoch(0, 0, rank)
    saved = {"loss": [], "grads": []}
    for step in range(2):
        mine = [v[step, rank * per:(rank + 1) * per] for v in batch]
        loss, _ = distiller(tuple(mine), epoch=0)
        loss.backward()
        mean = loss.detach().clone()
        if world > 1:
            dist.all_reduce(mean)
        saved["loss"].append(mean / world)
        saved["grads"].append([p.grad.clone() for p in distiller.student.parameters()])
        with torch.no_grad():
            for p in distiller.student.parameters():
                p -= 0.5 * p.grad
                p.grad = None
    saved["memories"] = {name: (m.keys.clone(), m.ptr) for name, m in distiller.memories().items()}
    if rank == 0:
        torch.save(saved, out_path)
    if world > 1:
        dist.destroy_process_group()


def teacher_keys_worker(rank: int, world: int, port: int, views: list[torch.Tensor], out_dir: str) -> None:
    """The train-mode teacher's keys of this rank's slice of each view through group shuffle-BN, with one forward
    per view and with one for both (``fuse_teacher``), each from a fresh distiller; rank 0 saves the gathered keys
    to ``out_dir/<fuse>.pt``."""
    from models.methods import build_method

    from helpers import distill_config

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    per = views[0].shape[0] // world
    mine = [v[rank * per:(rank + 1) * per] for v in views]
    for fuse in (False, True):
        config = distill_config(dim=16, queue_size=4 * views[0].shape[0], teacher_mode="train", fuse_teacher=fuse,
                                subgroup=8)
        distiller = build_method(tiny_embedder(seed=1), tiny_embedder(seed=2), config)
        distiller.set_epoch(0, 0, rank)
        keys = distiller.teacher_keys(*mine)
        gathered = [[torch.empty_like(k) for _ in range(world)] for k in keys]
        for slot, k in zip(gathered, keys):
            dist.all_gather(slot, k)
        if rank == 0:
            torch.save([torch.cat(slot) for slot in gathered], os.path.join(out_dir, f"{fuse}.pt"))
    dist.destroy_process_group()
