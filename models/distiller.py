"""What every method's step shares: the student, the network giving keys, the queue, and how keys are computed.

The methods themselves, each one step a reader can follow top to bottom, are ``models.bingo.Bingo`` (the paper),
``models.seed.Seed`` and ``models.moco.MoCo`` (the baselines); ``models.methods.build_method`` picks one by name.

The teacher's parameters never receive gradients (frozen, and its keys are computed under ``no_grad``); the loop
checks them against the checkpoint file's after every epoch (``engine.training.check_teacher_unchanged``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import losses
from models.batchnorm import statistics_per_chunk
from models.queue import KeyQueue
from utils import dist as edist
from utils.metrics import topk_accuracy

__all__ = ["Embedder", "Distiller", "DistillConfig", "unwrap", "momentum_copy", "momentum_update", "COMPILE_MODES"]

# torch.compile's modes, and whether each replays the compiled networks as CUDA graphs.
COMPILE_MODES = {"default": False, "reduce-overhead": True, "max-autotune": True, "max-autotune-no-cudagraphs": False}


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") else module


def momentum_copy(student: nn.Module) -> nn.Module:
    """A frozen copy of ``student`` in train mode (batch statistics), the start of its momentum encoder."""
    copy_ = copy.deepcopy(unwrap(student))
    for p in copy_.parameters():
        p.requires_grad_(False)
    return copy_.train(True)


@torch.no_grad()
def momentum_update(key: nn.Module, query: nn.Module, m: float) -> None:
    """``key <- m key + (1 - m) query`` for every parameter (buffers stay the key network's own), as MoCo, DisCo and
    CompRess update their momentum encoders: their ``k.mul_(m).add_(q, alpha=1 - m)``, as two multi-tensor
    operations over all parameters (two kernel launches on a GPU instead of two per parameter)."""
    keys = list(key.parameters())
    torch._foreach_mul_(keys, m)
    torch._foreach_add_(keys, list(unwrap(query).parameters()), alpha=1.0 - m)  # under no_grad: nothing recorded


class Embedder(nn.Module):
    """Backbone + projection head; ``forward(*views)`` embeds each view separately (separate BN statistics, as the
    official code's separate forwards) and returns L2-normalised float32 embeddings."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, *views: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(F.normalize(self.head(self.backbone(v)).float(), dim=1) for v in views)


@dataclass(frozen=True)
class DistillConfig:
    """The step's settings, built from ``main_distill.py``'s options of the same meaning
    (``engine.distillation.distill_config``); the defaults are the flags', and only theirs."""

    method: str  # bingo | seed | disco | compress | moco
    loss: str  # official | paper (bingo only)
    dim: int
    queue_size: int
    t: float
    moco_m: float
    lam: tuple[float, float]
    warmup_epochs: int
    official_terms: tuple[str, ...]  # --loss=official: the terms kept
    cross_keys: bool  # --loss=official: the other bag member's key after the warm-up
    seed_teacher_t: float
    disco_mse_weight: float  # DisCo: weight of each MSE term on the batch mean (release: per-process sum)
    compress_one_bank: bool  # CompRess-1q: the teacher's bank only, a linear map to the teacher's width
    teacher_mode: str  # train (official: batch statistics, shuffle-BN) | eval
    fuse_teacher: bool  # one teacher forward for several views (train mode: BatchNorm statistics per view)
    subgroup: int
    amp: bool


class Distiller(nn.Module):
    """Student, key network (``teacher``: frozen, or MoCo's momentum encoder) and queue. Subclasses define
    ``forward(batch, epoch) -> (loss, terms)``; the teacher keeps the BatchNorm mode ``teacher_mode`` gives."""

    def __init__(self, student: Embedder, teacher: Embedder, config: DistillConfig, queue: bool = True) -> None:
        super().__init__()
        self.config = config
        self.student = student
        self.teacher = teacher
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.train(config.teacher_mode == "train")
        if queue:
            self.queue = KeyQueue(config.dim, config.queue_size)
        self.shuffle = edist.ShuffleGroup(config.subgroup)
        self.generator = torch.Generator().manual_seed(0)
        self.rng = np.random.default_rng(0)
        self.cuda_graphs = False  # compile_networks with a CUDA-graph mode

    def memories(self) -> dict[str, KeyQueue]:
        """The ring buffers a checkpoint holds, by the names it stores them under (``queue`` / ``queue_ptr``)."""
        return {"queue": self.queue}

    def momentum_network(self) -> Embedder | None:
        """The momentum copy of the student a checkpoint stores under ``module.encoder_k.*``, if the method has one."""
        return None

    def train(self, mode: bool = True) -> "Distiller":
        """Train mode applies to the student; the teacher keeps the mode it was built with."""
        self.training = mode
        self.student.train(mode)
        return self

    def compile_networks(self, mode: str = "default") -> None:
        """``torch.compile`` the student and the teacher in place (parameter names do not change); with a CUDA-graph
        ``mode`` (``COMPILE_MODES``) the loop calls ``begin_step`` before every step."""
        unwrap(self.student).compile(mode=mode)
        self.teacher.compile(mode=mode)
        self.cuda_graphs = COMPILE_MODES[mode]

    def begin_step(self) -> None:
        """Tell the CUDA-graph replays that a new step starts (``torch.compiler.cudagraph_mark_step_begin``): the
        last step's outputs, which the replays overwrite, are no longer needed."""
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()

    def set_epoch(self, seed: int, epoch: int, rank: int) -> None:
        """Reseed the shuffle permutation and the CutMix draws from (run seed, epoch, rank): exact resumes."""
        self.generator.manual_seed(int(np.random.SeedSequence([seed, epoch, 1]).generate_state(1)[0]))
        self.rng = np.random.default_rng([seed, epoch, rank, 2])

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.config.amp and device.type == "cuda")

    @torch.no_grad()
    def teacher_keys(self, *views: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Teacher embeddings ``[B, dim]`` of each view, a forward per view (through group shuffle-BN when the
        teacher uses batch statistics) or, with ``fuse_teacher``, one forward of the views together: in train mode
        each view's images are shuffled as before and each view keeps its own BatchNorm statistics
        (``statistics_per_chunk``), so the keys are those of the forwards per view."""
        def embed(x: torch.Tensor) -> torch.Tensor:
            return self.teacher(x)[0]

        with self.autocast(views[0].device):
            if not self.teacher.training:
                if self.config.fuse_teacher and len(views) > 1:
                    return tuple(embed(torch.cat(views)).split([v.shape[0] for v in views]))
                return tuple(embed(v) for v in views)
            if self.config.fuse_teacher and len(views) > 1:
                with statistics_per_chunk(self.teacher, len(views)):
                    return self.shuffle.many(embed, views, self.generator)
            return tuple(self.shuffle(embed, v, self.generator) for v in views)

    @torch.no_grad()
    def instance_accuracy(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> dict[str, torch.Tensor]:
        """How often the student's query finds its own key among the queue's (top-1 / top-5, %)."""
        logits = losses.contrastive_logits(q.detach(), k, queue, self.config.t)  # [B, 1 + K]
        acc1, acc5 = topk_accuracy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
        return {"acc1": acc1, "acc5": acc5}
