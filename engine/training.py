"""The distillation loop's parts: loaders, one epoch, the frozen-teacher check (checkpoints: ``engine.checkpoints``)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

from datasets.folders import EpochSampler
from models.distiller import Distiller
from utils import dist as edist
from utils.logs import MetricsLog, Progress, format_seconds, log
from utils.signals import StopRequests

__all__ = ["make_train_loader", "views_to_device", "train_epoch", "check_teacher_unchanged", "NonFiniteLoss",
           "RunState"]


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


@dataclass
class RunState:
    """What the loop needs to know besides the model: where it is, and how to report."""

    epoch: int
    end_epoch: int
    report_freq: int
    metrics: MetricsLog
    steps_done: int = 0
    total_steps: int = 0
    started: float = field(default_factory=time.perf_counter)
    stop: StopRequests | None = None  # checked after every step
    epochs_saved: int = 0  # epochs in the run folder's checkpoint.pth


def make_train_loader(dataset: Dataset, ctx: edist.Context, batch_per_process: int, num_workers: int,
                      seed: int, collate_fn: Callable | None = None) -> DataLoader:
    """Shuffled, sharded, ``drop_last`` loader; one process gets ``batch_per_process`` items per step."""
    sampler = EpochSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed,
                           drop_last=True)
    return DataLoader(
        dataset,
        batch_size=batch_per_process,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=ctx.device.type == "cuda",
        drop_last=True,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        collate_fn=collate_fn,
    )


def views_to_device(views, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, ...]:
    """Copy batch tensors to ``device`` (asynchronously from pinned memory), in channels_last when asked."""
    out = []
    for view in views:
        view = view.to(device, non_blocking=True)
        if channels_last:
            view = view.contiguous(memory_format=torch.channels_last)
        out.append(view)
    return tuple(out)


def train_epoch(distiller: Distiller, loader: DataLoader, optimizer: torch.optim.Optimizer, ctx: edist.Context,
                state: RunState, channels_last: bool = False,
                prepare: Callable[[Any], tuple[torch.Tensor, ...]] | None = None) -> dict[str, float]:
    """One epoch; returns the epoch's mean loss terms, its images/s (all processes together) and the seconds its
    steps took (``train_s``). Raises
    ``NonFiniteLoss`` before anything is saved.
    ``prepare`` turns a batch into the views on the device (``--device_views``); by default batches hold them."""
    distiller.train()
    steps = len(loader)
    sums: dict[str, torch.Tensor] = {}
    window: dict[str, torch.Tensor] = {}
    progress = Progress(steps * loader.batch_size * ctx.world_size, f"epoch {state.epoch}")
    started = time.perf_counter()
    lr = optimizer.param_groups[0]["lr"]
    for step, batch in enumerate(loader):
        views = prepare(batch) if prepare is not None else views_to_device(batch[:-1], ctx.device, channels_last)
        distiller.begin_step()
        loss, terms = distiller(views, state.epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        terms = {"loss": loss.detach(), **terms}
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float()
            window[key] = window.get(key, 0.0) + value.detach().float()
        progress.update(views[0].shape[0] * ctx.world_size)
        state.steps_done += 1
        if (step + 1) % state.report_freq == 0 or step + 1 == steps:
            means = _check_finite({k: v / ((step % state.report_freq) + 1) for k, v in window.items()}, state, step)
            window = {}
            if ctx.is_main:
                speed = state.steps_done / (time.perf_counter() - state.started)
                eta = (state.total_steps - state.steps_done) / speed if speed else float("inf")
                terms_text = " ".join(f"{k} {v:.4f}" for k, v in means.items())
                log(f"epoch {state.epoch}/{state.end_epoch} step {step + 1}/{steps} {terms_text} lr {lr:.5f} "
                    f"{progress.rate:.1f} img/s eta {format_seconds(eta)}")
                state.metrics.write({"kind": "step", "epoch": state.epoch, "step": step + 1, "lr": lr,
                                     "images_per_s": progress.rate, **means},
                                    step=state.epoch * steps + step + 1)
        if state.stop is not None and step + 1 < steps:  # after the last step, the epoch's checkpoint comes first
            state.stop.check(f"in epoch {state.epoch} after step {step + 1}/{steps}")
    if steps == 0:
        raise RuntimeError("the loader gave no batch: the dataset is smaller than one global batch")
    return {**_check_finite({k: v / steps for k, v in sums.items()}, state, steps - 1), "images_per_s": progress.rate,
            "train_s": time.perf_counter() - started}


def _check_finite(means: dict[str, torch.Tensor], state: RunState, step: int) -> dict[str, float]:
    values = {k: float(v) for k, v in means.items()}
    if not math.isfinite(values["loss"]):
        raise NonFiniteLoss(
            f"the loss became {values['loss']} at epoch {state.epoch}, step {step + 1}; stopping. The last good "
            "checkpoint in the output folder was not touched. Lower --init_lr, or turn off --amp, and --resume."
        )
    return values


def check_teacher_unchanged(teacher: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    """Every teacher parameter must equal ``reference`` (the checkpoint file's), bit for bit; raises otherwise."""
    for name, param in teacher.named_parameters():
        if not torch.equal(param.detach().cpu(), reference[name].detach().cpu()):
            raise RuntimeError(f"the frozen teacher's parameter {name} changed during training")
