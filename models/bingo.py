"""BINGO's training step: a bag is an image and one of its teacher-space neighbours; the student learns to put both
where the frozen teacher puts them, and to relate them to each other, against a queue of teacher keys.

One step, as ``Bingo.forward`` reads (B images per process, D the embedding width, K the queue length):

1. The batch holds two views of each anchor image and two of one neighbour drawn from its bag.
2. ``--loss=official`` (the released code): CutMix pastes one box of each neighbour query into its anchor query
   (the loss ablation, ``--nomix_term`` and the like, leaves out a term and the forward only it needs).
3. The student embeds the anchor query, the neighbour query (and the mixed image).
4. The frozen teacher embeds the anchor key and the neighbour key.
5. The loss terms, InfoNCE against the queue (``models.losses``):
   official: ``(L_anchor + L_neighbour + L_mix) / 3``, each term against the own key and, after the warm-up, the
   other bag member's key; paper: ``CE(anchor query, anchor key) + CE(neighbour query, anchor key)``.
6. The anchor keys of every process go into the queue.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from models import losses
from models.distiller import DistillConfig, Distiller, Embedder

__all__ = ["Bingo", "cutmix_box", "apply_cutmix"]


class Bingo(Distiller):
    def __init__(self, student: Embedder, teacher: Embedder, config: DistillConfig) -> None:
        if config.loss not in ("official", "paper"):
            raise ValueError(f"unknown loss {config.loss!r}")
        super().__init__(student, teacher, config)

    def forward(self, batch: tuple[torch.Tensor, ...], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        anchor_q, anchor_k, neighbour_q, neighbour_k = batch  # each [B, 3, H, W]: two views of anchor and neighbour
        queue = self.queue.keys.clone()  # [D, K]; this step's keys are enqueued after the loss
        if self.config.loss == "paper":
            with self.autocast(anchor_q.device):
                qa, qn = self.student(anchor_q, neighbour_q)  # [B, D] each
            (ka,) = self.teacher_keys(anchor_k)  # [B, D]
            loss, terms = losses.bingo_paper_loss(qa, qn, ka, queue, self.config.t)
        else:
            kept = self.config.official_terms  # the loss ablation drops terms, and the forwards only they need
            names, views = ["qa"], [anchor_q]
            if "neighbour" in kept:
                names.append("qn")
                views.append(neighbour_q)
            if "mix" in kept:
                mixed, anchor_fraction = apply_cutmix(anchor_q, neighbour_q, self.rng)  # [B, 3, H, W], float
                names.append("qm")
                views.append(mixed)
            with self.autocast(anchor_q.device):
                queries = dict(zip(names, self.student(*views)))  # [B, D] each
            qa = queries["qa"]
            ka, kn = self.teacher_keys(anchor_k, neighbour_k)  # [B, D] each
            own, other = losses.bag_weights(epoch, self.config.lam, self.config.warmup_epochs, self.config.cross_keys)
            loss, terms = losses.bingo_official_loss(qa, queries.get("qn"), queries.get("qm"), ka, kn, queue,
                                                     self.config.t, (own, other),
                                                     anchor_fraction if "mix" in kept else 1.0, kept)
            if "mix" in kept:
                terms["anchor_fraction"] = torch.tensor(anchor_fraction)
        terms.update(self.instance_accuracy(qa, ka, queue))
        self.queue.enqueue(ka)
        return loss, terms


def cutmix_box(height: int, width: int, beta_draw: float, cx: int, cy: int) -> tuple[int, int, int, int, float]:
    """The box CutMix pastes: sides ``int(H*sqrt(1-b))`` and ``int(W*sqrt(1-b))`` (``b = beta_draw``) centred at
    ``(cx, cy)``,
    clipped to the image. Returns ``(y1, y2, x1, x2, anchor_fraction)`` where the fraction is recomputed after
    clipping: ``1 - box_area / (H*W)``."""
    ratio = math.sqrt(1.0 - beta_draw)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    y1, y2 = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
    x1, x2 = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
    fraction = 1.0 - (y2 - y1) * (x2 - x1) / (height * width)
    return y1, y2, x1, x2, fraction


def apply_cutmix(
    anchor: torch.Tensor, neighbour: torch.Tensor, rng: np.random.Generator, alpha: float = 2.0
) -> tuple[torch.Tensor, float]:
    """One box for the whole batch (as the official code): the box region of each anchor image is replaced by the
    same region of its own neighbour. The box's size comes from ``Beta(alpha, alpha)``, its centre is uniform over
    the pixels; returns
    ``(mixed images, anchor pixel fraction)``."""
    height, width = anchor.shape[-2:]
    beta_draw = float(rng.beta(alpha, alpha))
    cx, cy = int(rng.integers(width)), int(rng.integers(height))
    y1, y2, x1, x2, fraction = cutmix_box(height, width, beta_draw, cx, cy)
    mixed = anchor.clone()
    mixed[..., y1:y2, x1:x2] = neighbour[..., y1:y2, x1:x2]
    return mixed, fraction
