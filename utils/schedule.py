"""Learning-rate schedules, stepped once per epoch as in the official code."""
from __future__ import annotations

import math
from typing import Sequence

__all__ = ["learning_rate", "set_lr"]


def learning_rate(
    epoch: int,
    init_lr: float,
    end_epoch: int,
    method: str = "cos",
    schedule: Sequence[int] = (),
    lr_decay: float = 0.1,
    min_lr: float = 0.0,
) -> float:
    """The lr for 0-based ``epoch``.

    ``cos``: ``min_lr + (init_lr - min_lr) * (1 + cos(pi * epoch / end_epoch)) / 2``.
    ``step``: ``init_lr * lr_decay ** (number of milestones in schedule that are <= epoch)``.
    """
    if method == "cos":
        return min_lr + (init_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * epoch / end_epoch))
    if method == "step":
        return init_lr * lr_decay ** sum(epoch >= milestone for milestone in schedule)
    raise ValueError(f"unknown decay method {method!r}; choose cos or step")


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
