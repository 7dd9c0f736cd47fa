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
    from models.distiller import DistillConfig
    from models.methods import build_method

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    per = batch[0].shape[0] // world
    mine = [v[rank * per:(rank + 1) * per] for v in batch]
    config = DistillConfig(dim=16, queue_size=4 * batch[0].shape[0], teacher_mode=teacher_mode, subgroup=8)
    distiller = build_method(tiny_embedder(seed=1), tiny_embedder(seed=2), config)
    distiller.set_epoch(0, 0, rank)
    before = distiller.queue.keys.clone()
    loss, _ = distiller(tuple(mine), epoch=0)
    if rank == 0:
        torch.save({"queue": distiller.queue.keys, "before": before, "ptr": distiller.queue.ptr}, out_path)
    if world > 1:
        dist.destroy_process_group()
