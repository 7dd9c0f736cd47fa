"""The CompRess baseline's step (Abbasi Koohpayegani et al., 2020): the student learns the teacher's similarities to
a memory bank of earlier images; no positive pair, no projection head.

As CompRess's release (``train_student.py`` with ``nn/compress_loss.py``) computes it, one step on one view:

1. The frozen teacher gives its pooled backbone features ``t`` (eval mode); the student its pooled features ``s``
   (no head); a momentum copy of the student, in train mode with no shuffle, its features ``s_key``. All are
   L2-normalised.
2. Teacher and student each compare their features with their own bank: the teacher's holds earlier ``t``, the
   student's earlier ``s_key``; similarities over ``T`` (``--moco_t``, 0.04 by default for CompRess).
3. ``loss = KL(softmax(teacher similarities) || softmax(student similarities))``, the batch mean.
4. The banks take this step's ``t`` and ``s_key`` of every process.

CompRess-1q (``--compress_one_bank``, ``train_student_one_queue.py``): the student ends in a linear map to the
teacher's width and is compared with the teacher's bank; no momentum copy, no student bank.
"""
from __future__ import annotations

import torch

from models import losses
from models.distiller import DistillConfig, Distiller, Embedder, momentum_copy, momentum_update
from models.queue import KeyQueue

__all__ = ["CompRess"]


class CompRess(Distiller):
    def __init__(self, student: Embedder, teacher: Embedder, config: DistillConfig, student_dim: int,
                 teacher_dim: int) -> None:
        super().__init__(student, teacher, config, queue=False)
        self.teacher_bank = KeyQueue(teacher_dim, config.queue_size, init="uniform")
        self.one_bank = config.compress_one_bank
        if not self.one_bank:
            self.student_bank = KeyQueue(student_dim, config.queue_size, init="uniform")
            self.momentum_encoder = momentum_copy(student)

    def memories(self) -> dict[str, KeyQueue]:
        if self.one_bank:
            return {"teacher_bank": self.teacher_bank}
        return {"teacher_bank": self.teacher_bank, "student_bank": self.student_bank}

    def momentum_network(self) -> Embedder | None:
        return None if self.one_bank else self.momentum_encoder

    def forward(self, batch: tuple[torch.Tensor, ...], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        view = batch[0]  # [B, 3, H, W]; the second view of the pair is not used
        teacher_bank = self.teacher_bank.keys.clone()  # [Dt, N]
        with torch.no_grad(), self.autocast(view.device):
            (t,) = self.teacher(view)  # [B, Dt]
        with self.autocast(view.device):
            (s,) = self.student(view)  # [B, Ds], or [B, Dt] with one bank
        teacher_logits = losses.bank_similarities(t, teacher_bank, self.config.t)  # [B, N]
        if self.one_bank:
            student_logits = losses.bank_similarities(s, teacher_bank, self.config.t)  # [B, N]
        else:
            student_bank = self.student_bank.keys.clone()  # [Ds, N]: earlier momentum features
            momentum_update(self.momentum_encoder, self.student, self.config.moco_m)
            with torch.no_grad(), self.autocast(view.device):
                (s_key,) = self.momentum_encoder(view)  # [B, Ds]
            student_logits = losses.bank_similarities(s, student_bank, self.config.t)  # [B, N]
        loss = losses.compress_kl(teacher_logits, student_logits)
        agree = (student_logits.argmax(dim=1) == teacher_logits.argmax(dim=1)).float().mean() * 100
        self.teacher_bank.enqueue(t)
        if not self.one_bank:
            self.student_bank.enqueue(s_key)
        return loss, {"nn_agree": agree.detach()}
