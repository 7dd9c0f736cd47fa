"""Loss terms as small pure functions of tensors (no processes, no files).

Notation as in the official code: ``q*`` are L2-normalised student outputs, ``k*`` L2-normalised teacher keys,
``queue`` is ``[dim, K]`` of earlier keys, ``t`` the temperature.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "contrastive_logits",
    "info_nce",
    "bag_weights",
    "OFFICIAL_TERMS",
    "bingo_official_loss",
    "bingo_paper_loss",
    "seed_loss",
    "disco_mse",
    "bank_similarities",
    "compress_kl",
]


def contrastive_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float) -> torch.Tensor:
    """``[B, 1 + K]`` logits: the positive ``q·k`` first, then ``q·queue``, all divided by ``t``."""
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue
    return torch.cat([positive, negative], dim=1) / t


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float) -> torch.Tensor:
    """InfoNCE: cross-entropy with target 0 over ``contrastive_logits``, averaged over the batch."""
    logits = contrastive_logits(q, k, queue, t)
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def bag_weights(epoch: int, lam: tuple[float, float], warmup_epochs: int, cross_keys: bool = True
                ) -> tuple[float, float]:
    """(own-key weight, other-bag-member weight): (1, 0) for epochs 0..warmup_epochs, then ``lam`` (``--lam``);
    (1, 0) throughout without the cross-key part (``cross_keys=False``)."""
    return (1.0, 0.0) if epoch <= warmup_epochs or not cross_keys else (float(lam[0]), float(lam[1]))


OFFICIAL_TERMS = ("anchor", "neighbour", "mix")


def bingo_official_loss(
    qa: torch.Tensor,
    qn: torch.Tensor | None,
    qm: torch.Tensor | None,
    ka: torch.Tensor,
    kn: torch.Tensor,
    queue: torch.Tensor,
    t: float,
    weights: tuple[float, float],
    anchor_fraction: float,
    terms: tuple[str, ...] = OFFICIAL_TERMS,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss the official code trains with: ``(L_a + L_n + L_mix) / 3``.

    With ``(own, other) = weights`` (``bag_weights``): ``L_a = own CE(qa, ka) + other CE(qa, kn)``,
    ``L_n = own CE(qn, kn) + other CE(qn, ka)`` and ``L_mix = f CE(qm, ka) + (1 - f) CE(qm, kn)``, where ``qa`` /
    ``qn`` are the student's outputs on the anchor and neighbour queries, ``ka`` / ``kn`` the teacher's keys, ``qm``
    the student's output on the CutMix image and ``f = anchor_fraction`` its share of anchor pixels
    (``models.bingo.apply_cutmix``). Terms whose weight is 0 are not computed. ``terms`` names the terms kept (the
    loss ablation; ``qn`` / ``qm`` may be None when theirs is dropped): the loss is the mean of those kept, the
    official ``/ 3`` with all three.
    """
    own, other = weights

    def weighted(q, k_own, k_other, w_own, w_other):
        total = w_own * info_nce(q, k_own, queue, t)
        if w_other:
            total = total + w_other * info_nce(q, k_other, queue, t)
        return total

    kept = {}
    if "anchor" in terms:
        kept["loss_anchor"] = weighted(qa, ka, kn, own, other)
    if "neighbour" in terms:
        kept["loss_neighbour"] = weighted(qn, kn, ka, own, other)
    if "mix" in terms:
        kept["loss_mix"] = weighted(qm, ka, kn, anchor_fraction, 1.0 - anchor_fraction)
    if not kept:
        raise ValueError(f"no loss term kept of {OFFICIAL_TERMS}")
    total = sum(kept.values()) / len(kept)
    return total, {name: value.detach() for name, value in kept.items()}


def bingo_paper_loss(
    qa: torch.Tensor, qn: torch.Tensor, ka: torch.Tensor, queue: torch.Tensor, t: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The paper's equations: ``L = CE(qa, ka) + CE(qn, ka)`` (intra-bag + inter-bag, both against the anchor's
    teacher key); no neighbour key, no warm-up, no mix term."""
    intra = info_nce(qa, ka, queue, t)
    inter = info_nce(qn, ka, queue, t)
    return intra + inter, {"loss_anchor": intra.detach(), "loss_neighbour": inter.detach()}


def seed_loss(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t_student: float, t_teacher: float
) -> torch.Tensor:
    """SEED: cross-entropy between the teacher's and the student's softmax over ``[k, queue]``.

    Student logits are ``[q·k, q·queue] / t_student``; the target is ``softmax([k·k, k·queue] / t_teacher)``.
    """
    student = contrastive_logits(q, k, queue, t_student)
    target = F.softmax(contrastive_logits(k, k, queue, t_teacher), dim=1)
    return -(target * F.log_softmax(student, dim=1)).sum(dim=1).mean()


def disco_mse(student: torch.Tensor, teacher: torch.Tensor, weight: float) -> torch.Tensor:
    """DisCo's consistency term: ``weight`` times the batch mean of ``||teacher - student||^2`` (summed over the
    embedding). DisCo's release sums over one process's batch (``MSELoss(reduction='sum')``), which is this with
    ``weight`` = the per-process batch."""
    return weight * (teacher - student).pow(2).sum(dim=1).mean()


def bank_similarities(features: torch.Tensor, bank: torch.Tensor, t: float) -> torch.Tensor:
    """``[B, N]``: each row of ``features`` ``[B, D]`` against every entry of a memory bank ``[D, N]``, over ``t``."""
    return features @ bank / t


def compress_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """CompRess: ``KL(softmax(teacher) || softmax(student))`` over the bank entries, averaged over the batch."""
    return F.kl_div(F.log_softmax(student_logits, dim=1), F.softmax(teacher_logits, dim=1), reduction="batchmean")
