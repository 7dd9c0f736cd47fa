"""Processes: the process group from torchrun's environment, gathers and group shuffle-BN.

One code path serves ``torchrun`` on any number of GPUs or nodes (NCCL), one GPU, and the CPU (gloo). Without
torchrun's variables the script runs as a single process with no process group at all.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.distributed as dist

__all__ = ["Context", "init", "shutdown", "all_gather", "broadcast_object", "broadcast_buffers", "ShuffleGroup",
           "barrier"]


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> list[int]:
        """This process's share of ``n`` items scored or embedded once each: the strided ``rank, rank + world, ...``
        (every item exactly once over the processes, no padding)."""
        return list(range(self.rank, n, self.world_size))


def init(device: str = "auto") -> Context:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or run alone.

    ``device`` is ``auto`` (CUDA when available, else CPU), ``cuda`` or ``cpu``; CUDA uses NCCL, the CPU gloo.
    """
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device=cuda was asked for, but no CUDA device is visible")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(minutes=60),
            **({"device_id": dev} if use_cuda else {}),
        )
    return Context(rank, world_size, local_rank, dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@torch.no_grad()
def all_gather(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate equally shaped tensors from every process of ``group`` along dim 0, in rank order (no grad)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.cat(parts)


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every process."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) into every process's ``module``, in place.

    Under DDP every rank updates its BatchNorm statistics from its own batch after DDP's broadcast at the start of
    each training forward, so after a step the ranks hold different statistics while ``checkpoint.pth`` holds rank
    0's. Call this before an evaluation that runs on every rank, so that each scores the network the checkpoint
    holds. Training does not change: DDP overwrites the same buffers with rank 0's at its next forward.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


class ShuffleGroup:
    """Group shuffle-BN for a network whose BN uses batch statistics (MoCo's ``batch_shuffle_ddp``).

    Ranks are split into consecutive groups of ``size`` (the official ``--subgroup``, capped at the world size). A
    batch is gathered within its group, permuted by a permutation drawn on the group's first rank, and each rank runs
    the network on its slice, so BN statistics mix images from every GPU of the group; the outputs are gathered and
    put back in order. With one process this is the identity.
    """

    def __init__(self, size: int) -> None:
        world = dist.get_world_size() if dist.is_initialized() else 1
        self.size = min(size, world)
        if world % self.size:
            raise ValueError(f"--subgroup={size} must divide the number of processes ({world})")
        self.group = None
        self.group_rank = 0
        self.first_rank = 0
        if self.size > 1:
            if self.size == world:
                self.group = dist.group.WORLD
            else:
                self.group, _ = dist.new_subgroups(group_size=self.size)
            rank = dist.get_rank()
            self.group_rank = rank % self.size
            self.first_rank = rank - self.group_rank

    @torch.no_grad()
    def __call__(
        self, network: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        return self.many(network, (images,), generator)[0]

    @torch.no_grad()
    def many(self, network: Callable[[torch.Tensor], torch.Tensor], views: Sequence[torch.Tensor],
             generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """``self(network, view, generator)`` for each of ``views`` (equal batches) in one call of ``network``:
        each view gathered and permuted as alone, with the permutations drawn in the same order, this rank's slices
        concatenated for ``network``, its output split and put back per view."""
        batch = views[0].shape[0]
        if self.size == 1:
            return tuple(network(torch.cat(views)).split(batch)) if len(views) > 1 else (network(views[0]),)
        slices, perms = [], []
        for images in views:
            gathered = all_gather(images, self.group)
            perm = torch.randperm(gathered.shape[0], generator=generator).to(images.device)
            dist.broadcast(perm, src=self.first_rank, group=self.group)
            slices.append(gathered[perm[self.group_rank * batch:(self.group_rank + 1) * batch]])
            perms.append(perm)
        outputs = network(torch.cat(slices)).split(batch)
        restored = []
        for output, perm in zip(outputs, perms):
            gathered = all_gather(output, self.group)
            restore = torch.empty_like(perm)
            restore[perm] = torch.arange(perm.numel(), device=perm.device)
            restored.append(gathered[restore][self.group_rank * batch:(self.group_rank + 1) * batch])
        return tuple(restored)
