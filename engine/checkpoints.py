"""This project's own checkpoints, written and read back: the distillation run's (``checkpoint.pth``, ``final.pth``,
``student_backbone.pth``, with the checks ``--resume`` makes) and the linear probe's (``probe.pth``). Released
formats (MoCo, SwAV, torchvision) are read by ``models.checkpoints``; every file is written atomically
(``utils.io``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.checkpoints import (
    MOMENTUM_PREFIX,
    CheckpointError,
    check_finite,
    from_official_keys,
    strict_load,
    to_official_keys,
    torch_load,
)
from models.distiller import Distiller, unwrap
from utils.io import atomic_torch_save, rng_state, set_rng_state

__all__ = ["checkpoint_payload", "save_checkpoint", "save_final", "check_resumable", "load_checkpoint",
           "RESUME_KEYS", "OBJECTIVE_FLAGS", "CHANGEABLE", "objective_changes", "save_probe", "read_probe"]


def checkpoint_payload(distiller: Distiller, optimizer: torch.optim.Optimizer, epoch: int, meta: dict[str, Any]
                       ) -> dict[str, Any]:
    """Everything an exact resume needs, with the student under the official ``module.encoder_q.*`` names (a
    momentum encoder under ``module.encoder_k.*``) and each ring buffer under its name (``queue`` and ``queue_ptr``;
    CompRess: ``teacher_bank``, ``student_bank``)."""
    state = to_official_keys(unwrap(distiller.student))
    momentum = distiller.momentum_network()
    if momentum is not None:
        state.update(to_official_keys(momentum, MOMENTUM_PREFIX))
    memories = {}
    for name, memory in distiller.memories().items():
        memories.update({name: memory.keys.detach().cpu(), f"{name}_ptr": memory.ptr})
    return {
        "bingo": {**meta, "epoch": epoch},
        "epoch": epoch,
        "state_dict": state,
        **memories,
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
    }


def save_checkpoint(payload: dict[str, Any], output_dir: Path, epoch: int, save_freq: int) -> None:
    """``checkpoint.pth`` every epoch and ``checkpoint_<epoch>.pth`` every ``save_freq`` epochs; atomic writes."""
    atomic_torch_save(payload, output_dir / "checkpoint.pth")
    if save_freq and epoch % save_freq == 0:
        atomic_torch_save(payload, output_dir / f"checkpoint_{epoch:04d}.pth")


def save_final(payload: dict[str, Any], backbone: nn.Module, output_dir: Path) -> list[Path]:
    """``final.pth`` (the last checkpoint) and ``student_backbone.pth`` (torchvision layout); returns both paths."""
    paths = [output_dir / "final.pth", output_dir / "student_backbone.pth"]
    atomic_torch_save(payload, paths[0])
    atomic_torch_save(backbone.state_dict(), paths[1])
    return paths


RESUME_KEYS = ("method", "s_arch", "t_arch", "stem", "teacher_sha256", "moco_dim", "moco_k", "head_hidden",
               "num_images", "file_list_sha256")
# What a checkpoint written before a key was recorded was made with.
_RECORDED_SINCE = {"stem": "imagenet"}


def check_resumable(payload: object, where: str, meta: dict[str, Any], keys: tuple[str, ...] = RESUME_KEYS) -> None:
    """Refuse to resume from a file that is not this loop's checkpoint, or one made with other data, networks or
    method (each of ``keys`` the file records must equal this run's)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("bingo"), dict) or "state_dict" not in payload:
        raise CheckpointError(f"--resume={where} is not a checkpoint written by main_distill.py (no 'bingo' record); "
                              "give a checkpoint.pth from a run folder, or drop --resume")
    saved = {**_RECORDED_SINCE, **payload["bingo"]}
    for key in keys:
        if key in saved and key in meta and saved[key] != meta[key]:
            flags = saved.get("flags", {})
            fix = (f"pass --{key}={saved[key]} to resume it" if key in flags or key in _RECORDED_SINCE else
                   "resume with the same data, networks and method")
            raise CheckpointError(f"--resume={where} was made with {key}={saved[key]!r}, but this run has "
                                  f"{meta[key]!r}: {fix}, or start a new run in another --output_dir")


# The settings that change what a run computes besides RESUME_KEYS' data, networks and method: a resumed run keeps
# them, unless --resume_change names them (then the change is said and recorded in the checkpoint and flags.json).
OBJECTIVE_FLAGS = ("loss", "teacher_mode", "augmentation", "anchor_term", "neighbour_term", "mix_term", "cross_keys",
                   "lam", "bag_warmup_epochs", "clus_pos_num", "disco_mse_weight", "compress_one_bank",
                   "seed_teacher_t", "moco_t", "moco_m", "mlp", "image_size", "init_lr", "momentum", "wd",
                   "batch_size", "decay_method", "schedule", "lr_decay", "subgroup", "device_views")
# What --resume_change may name: those flags and the neighbour file (its bytes or its kind of bag). --end_epoch may
# always change (training on is what a resume is for); the change is said and recorded all the same.
CHANGEABLE = (*OBJECTIVE_FLAGS, "neighbours")
_NEIGHBOUR_KEYS = ("neighbours_sha256", "bagging")


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def objective_changes(payload: dict[str, Any], where: str, meta: dict[str, Any], allowed: set[str]
                      ) -> list[dict[str, Any]]:
    """The settings (``OBJECTIVE_FLAGS``, the neighbour file, --end_epoch) whose value in the checkpoint read from
    ``where`` differs from this run's ``meta``, as ``{"setting", "from", "to"}``; a change ``allowed`` does not
    name (``--resume_change``) is refused with the flag that restores it."""
    saved = payload["bingo"]
    saved_flags, flags = saved.get("flags", {}), meta["flags"]
    changes = [{"setting": key, "from": saved_flags[key], "to": flags[key]} for key in (*OBJECTIVE_FLAGS, "end_epoch")
               if key in saved_flags and key in flags and saved_flags[key] != flags[key]]
    before, after = saved.get("neighbours_sha256"), meta.get("neighbours_sha256")
    if before is not None and after is not None and before != after:
        changes.append({"setting": "neighbours", "from": {k: saved.get(k) for k in _NEIGHBOUR_KEYS},
                        "to": {k: meta.get(k) for k in _NEIGHBOUR_KEYS}})
    for change in changes:
        setting = change["setting"]
        if setting in allowed or setting == "end_epoch":
            continue
        if setting == "neighbours":
            before, after = change["from"], change["to"]
            raise CheckpointError(
                f"--resume={where} was trained on another neighbour file ({before['bagging'] or 'unknown'} bags, "
                f"sha256 {str(before['neighbours_sha256'])[:12]}) than --corr_npy={flags.get('corr_npy')} "
                f"({after['bagging'] or 'unknown'} bags, sha256 {str(after['neighbours_sha256'])[:12]}): give its "
                "--corr_npy, or pass --resume_change=neighbours to change the bags from here on deliberately")
        raise CheckpointError(
            f"--resume={where} was trained with --{setting}={_flag_value(change['from'])}, but this run has "
            f"--{setting}={_flag_value(change['to'])}: pass --{setting}={_flag_value(change['from'])} to resume it, "
            f"--resume_change={setting} to change it from here on deliberately, or start a new run in another "
            "--output_dir")
    return changes


def load_checkpoint(payload: dict[str, Any], where: str, distiller: Distiller, optimizer: torch.optim.Optimizer
                    ) -> int:
    """Restore student, momentum encoder, queue, optimizer and RNG states from a checkpoint read from ``where``
    (checked with ``check_resumable`` first); returns the epoch to start from."""
    memories = distiller.memories()
    missing = [name for name in memories if name not in payload]
    if missing:
        raise CheckpointError(f"--resume={where} holds no {', '.join(missing)}: it was not written by "
                              f"--method={distiller.config.method}")
    check_finite(payload["state_dict"], where)
    check_finite({name: payload[name] for name in memories}, where)
    from_official_keys(unwrap(distiller.student), payload["state_dict"], where)
    momentum = distiller.momentum_network()
    if momentum is not None:
        from_official_keys(momentum, payload["state_dict"], where, MOMENTUM_PREFIX)
    for name, memory in memories.items():
        if payload[name].shape != memory.keys.shape:
            raise CheckpointError(f"--resume={where}: {name} has shape {tuple(payload[name].shape)}, this run's "
                                  f"{tuple(memory.keys.shape)}")
        memory.keys.copy_(payload[name].to(memory.keys.device))
        memory.ptr = int(payload[f"{name}_ptr"])
    implementation = {key: optimizer.defaults.get(key) for key in ("fused", "foreach")}
    optimizer.load_state_dict(payload["optimizer"])
    for group in optimizer.param_groups:  # how the update runs is this run's choice, not the checkpoint's
        group.update(implementation)
    set_rng_state(payload["rng"])
    return int(payload["epoch"])


def save_probe(model: nn.Module, optimizer: torch.optim.Optimizer, epochs_done: int, best: dict, history: list,
               output_dir: Path, save_freq: int, protocol: str) -> None:
    """``probe.pth`` every epoch and ``probe_<epoch>.pth`` every ``save_freq`` epochs: the classifier (with its
    backbone), optimizer, epochs done, best row, history and the protocol that trained it."""
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epochs_done, "best": best,
               "history": history, "protocol": protocol}
    atomic_torch_save(payload, output_dir / "probe.pth")
    if save_freq and epochs_done % save_freq == 0:
        atomic_torch_save(payload, output_dir / f"probe_{epochs_done:04d}.pth")


def read_probe(path: Path, model: nn.Module, protocol: str, frozen_backbone_from: str | None) -> dict:
    """Load a probe checkpoint into ``model`` (a ``Classifier``), strictly, after checking it was trained by
    ``protocol``. With ``frozen_backbone_from`` (a linear probe, whose backbone never changes) the file's backbone
    must equal ``model.backbone``, which came from there: otherwise its classifier would be scored on another network
    than the one results.json names."""
    saved = torch_load(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict) or "optimizer" not in saved:
        raise CheckpointError(f"{path} is not a probe checkpoint of main_lincls.py (no 'model' and 'optimizer'); "
                              "give a probe.pth from an evaluation folder")
    if saved.get("protocol", protocol) != protocol:
        raise CheckpointError(f"{path} was trained with --protocol={saved['protocol']}, not --protocol={protocol}: "
                              f"pass --protocol={saved['protocol']}, or train a new probe in another --output_dir")
    state = saved["model"]
    if frozen_backbone_from is not None:
        for key, value in model.backbone.state_dict().items():
            if key.endswith("num_batches_tracked"):
                continue
            theirs = state.get(f"backbone.{key}")
            if theirs is None or theirs.shape != value.shape or not torch.equal(theirs, value.cpu()):
                raise CheckpointError(f"{path} was trained on a different backbone than {frozen_backbone_from} "
                                      f"(first difference: {key}); evaluate it with the --pretrained it was trained "
                                      "on, or train a new probe in another --output_dir")
    strict_load(model, state, str(path), "probe (backbone + linear classifier)")
    return saved
