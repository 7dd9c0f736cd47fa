"""The MoCo-v2 baseline's step (the paper's "no teacher" row): the keys come from a momentum copy of the student,
``k <- m k + (1 - m) q`` before every step, through shuffle-BN; InfoNCE against a queue of its own keys."""
from __future__ import annotations

import torch

from models import losses
from models.distiller import DistillConfig, Distiller, Embedder, momentum_copy, momentum_update

__all__ = ["MoCo"]


class MoCo(Distiller):
    def __init__(self, student: Embedder, config: DistillConfig) -> None:
        # the key network is the momentum encoder: a copy of the student, batch statistics with shuffle-BN
        super().__init__(student, momentum_copy(student), config)
        self.teacher.train(True)

    def momentum_network(self) -> Embedder:
        return self.teacher

    def forward(self, batch: tuple[torch.Tensor, ...], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        view_q, view_k = batch[:2]  # [B, 3, H, W] each: two views of the same image
        queue = self.queue.keys.clone()  # [D, K]
        with self.autocast(view_q.device):
            (q,) = self.student(view_q)  # [B, D]
        momentum_update(self.teacher, self.student, self.config.moco_m)
        (k,) = self.teacher_keys(view_k)  # [B, D]
        loss = losses.info_nce(q, k, queue, self.config.t)
        terms = self.instance_accuracy(q, k, queue)
        self.queue.enqueue(k)
        return loss, terms
