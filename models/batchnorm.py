"""BatchNorm statistics per view inside one forward: what lets one teacher forward replace one forward per view while
its BatchNorm stays in train mode (the released recipe's teacher), as ``--fuse_teacher`` does."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

__all__ = ["statistics_per_chunk"]


@contextlib.contextmanager
def statistics_per_chunk(network: nn.Module, chunks: int) -> Iterator[None]:
    """Inside, every train-mode BatchNorm layer of ``network`` normalises each of ``chunks`` equal parts of its batch
    (``x.chunk(chunks)``: the views, concatenated) with that part's own statistics, and updates its running
    statistics part after part: one forward of the concatenated views computes what one forward per view, in order,
    would (up to the rounding of the larger convolutions). Eval-mode layers, which use running statistics, are left
    as they are."""
    layers = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for layer in layers:
        layer.forward = _per_chunk(layer.forward, chunks)  # an instance attribute: the class's forward stays
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def _per_chunk(forward, chunks: int):
    def per_chunk(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] % chunks:
            raise ValueError(f"a batch of {x.shape[0]} does not split into {chunks} equal views")
        return torch.cat([forward(part) for part in x.chunk(chunks)])

    return per_chunk
