"""Top-k hits of logits against targets (the training monitor's instance accuracy and the evaluation's top-1/top-5),
and the binomial interval every reported accuracy carries."""
from __future__ import annotations

import math

import torch

__all__ = ["topk_correct", "topk_accuracy", "binomial_interval", "with_intervals"]


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


def binomial_interval(accuracy: float, count: int, z: float = 1.96) -> list[float]:
    """The Wilson score interval (95 % for ``z=1.96``), in %, of an accuracy ``accuracy`` % measured on ``count``
    independent queries: the uncertainty from the evaluation set's size alone (not from seeds)."""
    if count <= 0:
        return [0.0, 100.0]
    p = accuracy / 100.0
    centre = (p + z * z / (2 * count)) / (1 + z * z / count)
    half = z * math.sqrt(p * (1 - p) / count + z * z / (4 * count * count)) / (1 + z * z / count)
    return [round(100.0 * max(0.0, centre - half), 3), round(100.0 * min(1.0, centre + half), 3)]


def with_intervals(scores: dict, count: int, keys: tuple[str, ...] = ("top1", "top5")) -> dict:
    """``scores`` with ``<key>_ci95`` beside each of ``keys`` it holds."""
    return {**scores, **{f"{key}_ci95": binomial_interval(scores[key], count) for key in keys if key in scores}}
