"""The SEED baseline's step (Fang et al., 2021): the student's softmax over ``[teacher key, queue]`` is trained
towards the teacher's own, sharpened by a much lower temperature. Student and teacher see the same view; the
teacher runs in eval mode by default, as SEED's release runs it."""
from __future__ import annotations

import torch

from models import losses
from models.distiller import Distiller

__all__ = ["Seed"]


class Seed(Distiller):
    def forward(self, batch: tuple[torch.Tensor, ...], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        view = batch[0]  # [B, 3, H, W]; the second view of the pair is not used
        queue = self.queue.keys.clone()  # [D, K]
        with self.autocast(view.device):
            (q,) = self.student(view)  # [B, D]
        (k,) = self.teacher_keys(view)  # [B, D]
        loss = losses.seed_loss(q, k, queue, self.config.t, self.config.seed_teacher_t)
        terms = self.instance_accuracy(q, k, queue)
        self.queue.enqueue(k)
        return loss, terms
