"""The queue of negative keys that BINGO, SEED and MoCo-v2 all contrast against."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils import dist as edist

__all__ = ["KeyQueue"]


class KeyQueue(nn.Module):
    """``keys``: ``[dim, size]`` unit vectors (random at first), overwritten as a ring by every step's keys of all
    processes. ``ptr`` is a Python int, so reading it never waits for the GPU; checkpoints store both."""

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(dim, size), dim=0))
        self.ptr = 0

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` ``[B, dim]`` of every process (gathered in rank order) at ``ptr`` and advance it."""
        keys = edist.all_gather(keys)  # [B * world, dim]
        size = self.keys.shape[1]
        if size % keys.shape[0]:
            raise ValueError(f"queue size {size} is not a multiple of the global batch {keys.shape[0]}")
        self.keys[:, self.ptr:self.ptr + keys.shape[0]] = keys.T
        self.ptr = (self.ptr + keys.shape[0]) % size
