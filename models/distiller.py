"""The whole method in one module: student, frozen teacher (or MoCo momentum encoder) and the queue of keys.

``Distiller.forward`` is one training step's loss for ``--method``:

- ``bingo`` (default): the student embeds the anchor query, the neighbour query and (official loss) their CutMix;
  the frozen teacher (backbone + its own pretrained head) embeds the anchor key and the neighbour key; InfoNCE
  against a queue of teacher anchor keys (``models.losses.bingo_official_loss`` / ``bingo_paper_loss``).
- ``seed``: SEED, the student's softmax over ``[teacher key, queue]`` matched to the teacher's.
- ``moco``: MoCo-v2 on the student alone, with a momentum copy of it giving the keys (the paper's "no teacher" row).

The teacher's parameters never receive gradients; ``teacher_unchanged`` checks them against a reference copy.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine import dist as edist
from models import losses

__all__ = ["Embedder", "Distiller", "DistillConfig", "unwrap"]


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") else module


class Embedder(nn.Module):
    """Backbone + projection head; ``forward(*views)`` embeds each view separately (separate BN statistics, as the
    official code's separate forwards) and returns L2-normalised float32 embeddings."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, *views: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(F.normalize(self.head(self.backbone(v)).float(), dim=1) for v in views)


@dataclass
class DistillConfig:
    method: str = "bingo"  # bingo | seed | moco
    loss: str = "official"  # official | paper (bingo only)
    dim: int = 128
    queue_size: int = 65536
    t: float = 0.2
    moco_m: float = 0.999
    lam: tuple[float, float] = (0.5, 0.5)
    warmup_epochs: int = 10
    seed_teacher_t: float = 1e-4
    teacher_mode: str = "train"  # train (official: batch statistics, shuffle-BN) | eval
    fuse_teacher: bool = False
    subgroup: int = 8
    amp: bool = False


class Distiller(nn.Module):
    def __init__(self, student: Embedder, teacher: Embedder | None, config: DistillConfig) -> None:
        super().__init__()
        if config.method not in ("bingo", "seed", "moco"):
            raise ValueError(f"unknown method {config.method!r}")
        if config.loss not in ("official", "paper"):
            raise ValueError(f"unknown loss {config.loss!r}")
        if config.fuse_teacher and config.teacher_mode != "eval":
            raise ValueError(
                "--fuse_teacher needs --teacher_mode=eval: in train mode BN statistics of one forward over anchor and "
                "neighbour keys together differ from the official two forwards"
            )
        self.config = config
        self.student = student
        if config.method == "moco":
            teacher = copy.deepcopy(unwrap(student))  # the momentum encoder starts as a copy of the student
        elif teacher is None:
            raise ValueError(f"--method={config.method} needs a teacher")
        self.teacher = teacher
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.train(config.teacher_mode == "train" or config.method == "moco")
        queue = F.normalize(torch.randn(config.dim, config.queue_size), dim=0)
        self.register_buffer("queue", queue)
        self.queue_ptr = 0  # a Python int (saved through get_extra_state): reading it never waits for the GPU
        self.shuffle = edist.ShuffleGroup(config.subgroup)
        self.generator = torch.Generator().manual_seed(0)
        self.rng = np.random.default_rng(0)

    def train(self, mode: bool = True) -> "Distiller":
        """Train mode applies to the student; the teacher keeps the mode it was built with."""
        self.training = mode
        self.student.train(mode)
        return self

    def compile_networks(self) -> None:
        """``torch.compile`` the student and the teacher in place (parameter names do not change)."""
        unwrap(self.student).compile()
        self.teacher.compile()

    def set_epoch(self, seed: int, epoch: int, rank: int) -> None:
        """Reseed the shuffle permutation and the CutMix draws from (run seed, epoch, rank): exact resumes."""
        self.generator.manual_seed(int(np.random.SeedSequence([seed, epoch, 1]).generate_state(1)[0]))
        self.rng = np.random.default_rng([seed, epoch, rank, 2])

    def _autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.config.amp and device.type == "cuda")

    @torch.no_grad()
    def teacher_keys(self, *views: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Teacher embeddings of each view: one fused forward in eval mode when asked, otherwise a forward per view
        (through group shuffle-BN when the teacher uses batch statistics)."""
        with self._autocast(views[0].device):
            if self.config.fuse_teacher and len(views) > 1:
                return tuple(self.teacher(torch.cat(views))[0].split([v.shape[0] for v in views]))
            if not self.teacher.training:
                return tuple(self.teacher(v)[0] for v in views)
            return tuple(self.shuffle(lambda x: self.teacher(x)[0], v, self.generator) for v in views)

    @torch.no_grad()
    def momentum_update(self) -> None:
        m = self.config.moco_m
        for p_t, p_s in zip(self.teacher.parameters(), unwrap(self.student).parameters()):
            p_t.mul_(m).add_(p_s.detach(), alpha=1.0 - m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write the keys of every process (gathered in rank order) at the queue pointer and advance it."""
        keys = edist.all_gather(keys)
        size = self.queue.shape[1]
        ptr = self.queue_ptr
        if size % keys.shape[0]:
            raise ValueError(f"queue size {size} is not a multiple of the global batch {keys.shape[0]}")
        self.queue[:, ptr:ptr + keys.shape[0]] = keys.T
        self.queue_ptr = (ptr + keys.shape[0]) % size

    def get_extra_state(self) -> dict:
        return {"queue_ptr": self.queue_ptr}

    def set_extra_state(self, state: dict) -> None:
        self.queue_ptr = int(state["queue_ptr"])

    def forward(self, batch: tuple[torch.Tensor, ...], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``batch`` is (anchor query, anchor key[, neighbour query, neighbour key]) on the device."""
        method = self.config.method
        if method == "bingo":
            return self._bingo(*batch, epoch=epoch)
        anchor_q, anchor_k = batch[:2]
        with self._autocast(anchor_q.device):
            (q,) = self.student(anchor_q)
        queue = self.queue.clone()
        if method == "moco":
            self.momentum_update()
            (k,) = self.teacher_keys(anchor_k)
            loss = losses.info_nce(q, k, queue, self.config.t)
        else:  # seed: student and teacher see the same view
            (k,) = self.teacher_keys(anchor_q)
            loss = losses.seed_loss(q, k, queue, self.config.t, self.config.seed_teacher_t)
        metrics = self._accuracy(q, k, queue)
        self.enqueue(k)
        return loss, metrics

    def _bingo(self, anchor_q, anchor_k, neighbour_q, neighbour_k, epoch: int):
        cfg = self.config
        queue = self.queue.clone()
        if cfg.loss == "paper":
            with self._autocast(anchor_q.device):
                qa, qp = self.student(anchor_q, neighbour_q)
            (ka,) = self.teacher_keys(anchor_k)
            loss, terms = losses.bingo_paper_loss(qa, qp, ka, queue, cfg.t)
        else:
            mixed, mix_lam = losses.apply_cutmix(anchor_q, neighbour_q, self.rng)
            with self._autocast(anchor_q.device):
                qa, qp, qm = self.student(anchor_q, neighbour_q, mixed)
            ka, kp = self.teacher_keys(anchor_k, neighbour_k)
            weights = losses.bag_weights(epoch, cfg.lam, cfg.warmup_epochs)
            loss, terms = losses.bingo_official_loss(qa, qp, qm, ka, kp, queue, cfg.t, weights, mix_lam)
            terms["mix_lam"] = torch.tensor(mix_lam)
        terms.update(self._accuracy(qa, ka, queue))
        self.enqueue(ka)
        return loss, terms

    @torch.no_grad()
    def _accuracy(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = losses.contrastive_logits(q.detach(), k, queue, self.config.t)
        acc1, acc5 = losses.topk_accuracy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
        return {"acc1": acc1, "acc5": acc5}
