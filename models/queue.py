"""The ring buffers of earlier keys that every method contrasts against: MoCo's queue (BINGO, SEED, MoCo-v2,
DisCo) and CompRess's memory banks."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from utils import dist as edist

__all__ = ["KeyQueue"]


class KeyQueue(nn.Module):
    """``keys``: ``[dim, size]``, overwritten as a ring by every step's keys of all processes (gathered in rank
    order). ``ptr`` is a Python int, so reading it never waits for the GPU; checkpoints store both.

    ``init="normal"``: MoCo's queue, random unit columns, and a size that must be a multiple of the global batch (as
    MoCo asserts). ``init="uniform"``: CompRess's memory bank, entries uniform in ``±1/sqrt(dim/3)`` (not unit
    vectors), and a batch that may wrap around the end of the ring (its ``fmod`` indices).
    """

    def __init__(self, dim: int, size: int, init: str = "normal") -> None:
        super().__init__()
        if init == "normal":
            keys = F.normalize(torch.randn(dim, size), dim=0)
        elif init == "uniform":
            bound = 1.0 / math.sqrt(dim / 3)
            keys = torch.rand(size, dim).mul_(2 * bound).add_(-bound).T.contiguous()  # drawn as CompRess's [size, dim]
        else:
            raise ValueError(f"unknown queue init {init!r}")
        self.register_buffer("keys", keys)
        self.wraps = init == "uniform"
        self.ptr = 0

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` ``[B, dim]`` of every process (gathered in rank order) at ``ptr`` and advance it."""
        keys = edist.all_gather(keys)  # [B * world, dim]
        size = self.keys.shape[1]
        if keys.shape[0] > size:
            raise ValueError(f"a global batch of {keys.shape[0]} keys does not fit a queue of {size}")
        if self.wraps:
            slots = (torch.arange(keys.shape[0], device=self.keys.device) + self.ptr) % size
            self.keys[:, slots] = keys.T.to(self.keys.dtype)
        else:
            if size % keys.shape[0]:
                raise ValueError(f"queue size {size} is not a multiple of the global batch {keys.shape[0]}")
            self.keys[:, self.ptr:self.ptr + keys.shape[0]] = keys.T
        self.ptr = (self.ptr + keys.shape[0]) % size
