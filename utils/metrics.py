"""Top-k hits of logits against targets: the training monitor's instance accuracy and the evaluation's top-1/top-5."""
from __future__ import annotations

import torch

__all__ = ["topk_correct", "topk_accuracy"]


@torch.no_grad()
def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Number of rows whose ``target`` is among the ``k`` largest logits, for each ``k``."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == target[:, None]
    return [hits[:, :k].any(dim=1).sum() for k in ks]


@torch.no_grad()
def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Percentage of rows whose ``target`` is among the ``k`` largest logits, for each ``k`` (0-d tensors, so
    nothing waits for the GPU)."""
    return [100.0 * c / target.shape[0] for c in topk_correct(logits, target, ks)]
