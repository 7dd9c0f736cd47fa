"""The DisCo baseline's step (Gao et al., 2022): a MoCo-v2 student with its own momentum encoder and queue, plus
the frozen teacher's embedding of both views, which the student's embeddings are pulled to by two MSE terms.

As DisCo's release (``DisCo/main.py`` with ``moco/builder_kq_mse_largeembedding_2048.py``) computes it, one step:

1. The student embeds both views (with gradient): ``q`` of the query view, ``qk`` of the key view.
2. The momentum encoder (``k <- m k + (1 - m) q``) embeds the key view through shuffle-BN: ``k``.
3. The teacher embeds both views; its BatchNorm uses each process's batch statistics (the release leaves it in
   train mode and does not shuffle its batch), ``--teacher_mode=eval`` gives its running statistics instead.
4. ``loss = InfoNCE(q, k, queue) + w MSE(q, teacher(q view)) + w MSE(qk, teacher(k view))``.
5. The momentum keys of every process go into the queue.
"""
from __future__ import annotations

import torch

from models import losses
from models.distiller import DistillConfig, Distiller, Embedder, momentum_copy, momentum_update

__all__ = ["DisCo"]


class DisCo(Distiller):
    def __init__(self, student: Embedder, teacher: Embedder, config: DistillConfig) -> None:
        super().__init__(student, teacher, config)
        self.momentum_encoder = momentum_copy(student)  # batch statistics with shuffle-BN, as MoCo's key encoder

    def momentum_network(self) -> Embedder:
        return self.momentum_encoder

    def forward(self, batch: tuple[torch.Tensor, ...], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        view_q, view_k = batch[:2]  # [B, 3, H, W] each: two views of the same image
        queue = self.queue.keys.clone()  # [D, K]: earlier momentum keys
        with self.autocast(view_q.device):
            q, qk = self.student(view_q, view_k)  # [B, D] each
        momentum_update(self.momentum_encoder, self.student, self.config.moco_m)
        with torch.no_grad(), self.autocast(view_q.device):
            (teacher_k,) = self.teacher(view_k)  # [B, D]; no shuffle-BN, as released
            k = self.shuffle(lambda x: self.momentum_encoder(x)[0], view_k, self.generator)  # [B, D]
            (teacher_q,) = self.teacher(view_q)  # [B, D]
        contrast = losses.info_nce(q, k, queue, self.config.t)
        mse_q = losses.disco_mse(q, teacher_q, self.config.disco_mse_weight)
        mse_k = losses.disco_mse(qk, teacher_k, self.config.disco_mse_weight)
        terms = {"loss_contrast": contrast.detach(), "loss_mse_q": mse_q.detach(), "loss_mse_k": mse_k.detach(),
                 **self.instance_accuracy(q, k, queue)}
        self.queue.enqueue(k)
        return contrast + mse_q + mse_k, terms
