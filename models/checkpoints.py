"""Read every supported checkpoint format and load it strictly.

Formats recognised (``detect_format``):

- ``bingo``: this project's checkpoints (``main_distill.py``); a ``bingo`` metadata dict and a ``state_dict`` whose
  student keys are ``module.encoder_q.*`` with the head under ``module.encoder_q.fc.*``, as the official code writes.
- ``moco``: MoCo-v2 releases and official BINGO checkpoints (``state_dict`` with ``module.encoder_q.*``).
- ``swav``: SwAV releases (a raw ``module.*`` state_dict with ``projection_head.*`` and ``prototypes.*``), and
  SwAV's training checkpoints (``{"epoch", "state_dict": {module.*}, ...}``, what its ``main_swav.py`` saves).
- ``seed``: SEED's released students (``state_dict`` with ``module.student.*``, its MLP head under
  ``module.student.fc.*``, the teacher under ``module.teacher.*``).
- ``disco``: DisCo's released students (``state_dict`` with ``module.encoder_q.*``, its 2048-wide head under
  ``module.encoder_q.fc.*``, beside ``module.encoder_k.*`` and the teacher under ``module.teacher_encoder_q.*``).
- ``compress``: CompRess's released students (``{"model": {module.*}, "opt", "optimizer", "epoch"}``: the backbone
  with no head, or CompRess-1q's linear ``fc``).
- ``torchvision``: a plain backbone state_dict (a torchvision classifier, or this project's exported backbone).

Loading never runs code: ``torch.load(weights_only=True)``, with the few plain Python types released checkpoints
pickle besides tensors allowed by name (``plain_globals``: CompRess's ``argparse.Namespace`` of options, numpy scalars
and their dtypes); a file that needs anything else is refused with one line naming what it holds and how to convert a
file the user trusts (``python -m scripts.trust_checkpoint``).

Loading never skips a weight silently: any missing, unexpected or wrongly shaped key raises ``CheckpointError``
naming the file, the detected format and the first offending keys. So does a file that is not a checkpoint (or is
truncated), and a weight that is NaN or infinite.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from models.backbones import build_backbone, stem_of
from models.heads import mlp_head, swav_head
from utils.io import file_sha256  # re-exported: the entry points hash checkpoints with it

__all__ = [
    "CheckpointError",
    "Weights",
    "read_weights",
    "strict_load",
    "load_backbone",
    "load_teacher",
    "refuse_other_stem",
    "file_sha256",
    "read_file",
    "check_finite",
]

# Keys of a network's own classifier, which a backbone does not have.
_CLASSIFIER_PREFIXES = ("fc.", "_fc.", "classifier.")
_SHOWN = 5


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded as asked; the message says what is wrong and what to do."""


@dataclass
class Weights:
    """A checkpoint split into its parts."""

    path: str
    fmt: str
    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    head_prefix: str = ""  # what the file's head keys start with after the backbone's prefix (fc., projection_head.)


def read_file(path: str | Path) -> tuple[bytes, str]:
    """A checkpoint file's bytes and their sha256, from one read (the load takes the bytes: ``data=``), or a clear
    error when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def plain_globals() -> list:
    """The Python types besides tensors and containers that released checkpoints pickle, loaded as plain data:
    ``argparse.Namespace`` (CompRess's ``opt``), numpy scalars (``numpy.core.multiarray.scalar``, under numpy 1's
    name too) and the numeric dtypes they carry."""
    import numpy as np

    scalar = np._core.multiarray.scalar
    dtypes = [type(np.dtype(name)) for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
                                                 "uint32", "uint64", "float16", "float32", "float64")]
    return [argparse.Namespace, scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes]


def torch_load(path: str | Path, data: bytes | None = None) -> object:
    """``torch.load`` on the CPU with ``weights_only=True`` and ``plain_globals`` allowed: unpickling never runs
    code. A file that needs other Python objects is refused (``CheckpointError``), naming them. From ``data`` (the
    file's bytes, already read) when given."""
    path = Path(path)
    if data is None and not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")

    def source():
        return io.BytesIO(data) if data is not None else path

    try:
        with torch.serialization.safe_globals(plain_globals()):
            return torch.load(source(), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" not in str(error).lower():
            raise _unreadable(path, data, error) from error
        try:
            objects = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(source())[:3])
        except Exception:  # an old (non-zip) file: the error's own text names it
            objects = "Python objects besides tensors"
        raise CheckpointError(
            f"{path} holds {objects}: unpickling them can run any code, so it is not loaded. If you trust the file, "
            f"convert it once to tensors and plain values: python -m scripts.trust_checkpoint {path} "
            f"{path.with_name(path.stem + '.plain.pth')}") from None
    except Exception as error:  # truncated, or not a checkpoint at all
        raise _unreadable(path, data, error) from error


def _unreadable(path: Path, data: bytes | None, error: BaseException) -> CheckpointError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    size = len(data) if data is not None else path.stat().st_size
    return CheckpointError(f"{path} ({size} bytes) is not a readable PyTorch checkpoint: {reason}. "
                           "It may be truncated or another kind of file: copy or download it again.")


def check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    """Raise ``CheckpointError`` naming the first tensor of ``state`` holding a NaN or an infinity."""
    for name, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{where}: {name} holds {bad} NaN or infinite value(s) of {value.numel()}; this "
                                  "network is broken (a diverged run?): use an earlier checkpoint")


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _split_head(state: dict[str, torch.Tensor], head_prefix: str) -> tuple[dict, dict]:
    head = _strip(state, head_prefix)
    backbone = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    return backbone, head


def detect_format(obj: object) -> str:
    """Name the format of a loaded checkpoint object (see the module docstring)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a dict, found {type(obj).__name__}")
    if "bingo" in obj and "state_dict" in obj:
        return "bingo"
    if isinstance(obj.get("model"), dict) and "optimizer" in obj and "state_dict" not in obj:
        return "compress"
    state = obj["state_dict"] if isinstance(obj.get("state_dict"), dict) else obj
    if state is not obj and any(k.startswith("module.student.") for k in state):
        return "seed"
    if state is not obj and any(k.startswith("module.teacher_encoder_q.") for k in state):
        return "disco"
    if any(k.startswith(("module.encoder_q.", "encoder_q.")) for k in state) and state is not obj:
        return "moco"
    if any(k.startswith(("module.projection_head.", "projection_head.", "module.prototypes.")) for k in state):
        return "swav"
    return "torchvision"


def read_weights(path: str | Path, data: bytes | None = None) -> Weights:
    """Load a checkpoint file and split it into backbone and (if it has one) projection-head weights, all finite."""
    weights = _split_weights(str(path), torch_load(path, data))
    where = f"{path} (detected format: {weights.fmt})"
    check_finite(weights.backbone, where)
    check_finite({f"{weights.head_prefix}{k}": v for k, v in weights.head.items()}, where)
    return weights


def _split_weights(path: str, obj: object) -> Weights:
    fmt = detect_format(obj)
    if fmt in ("bingo", "moco", "seed", "disco"):
        state = obj["state_dict"]
        if fmt == "seed":
            prefix = "module.student."
        else:
            prefix = "module.encoder_q." if any(k.startswith("module.encoder_q.") for k in state) else "encoder_q."
        backbone, head = _split_head(_strip(state, prefix), "fc.")
        meta = dict(obj.get("bingo", {})) if fmt == "bingo" else {"epoch": obj.get("epoch"), "arch": obj.get("arch")}
        dropped = sorted({k.removeprefix("module.").split(".")[0] for k in state if not k.startswith(prefix)})
        return Weights(path, fmt, backbone, head, meta, dropped=dropped, head_prefix="fc.")
    if fmt == "compress":
        state = {k.removeprefix("module."): v for k, v in obj["model"].items()}
        backbone, head = _split_head(state, "fc.")
        return Weights(path, fmt, backbone, head, {"epoch": obj.get("epoch")}, head_prefix="fc.")
    if fmt == "swav":
        state = obj["state_dict"] if isinstance(obj.get("state_dict"), dict) else obj
        state = {k.removeprefix("module."): v for k, v in state.items()}
        backbone, head = _split_head(state, "projection_head.")
        prototypes = [k for k in backbone if k.startswith("prototypes.")]
        backbone = {k: v for k, v in backbone.items() if k not in prototypes}
        return Weights(path, fmt, backbone, head, dropped=prototypes, head_prefix="projection_head.")
    state = obj["state_dict"] if "state_dict" in obj else obj
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    dropped = [k for k in state if k.startswith(_CLASSIFIER_PREFIXES)]
    backbone = {k: v for k, v in state.items() if k not in dropped}
    return Weights(path, fmt, backbone, dropped=dropped)


def strict_load(module: nn.Module, state: dict[str, torch.Tensor], where: str, what: str) -> None:
    """Copy ``state`` into ``module`` or raise ``CheckpointError`` listing missing/unexpected/mis-shaped keys.

    Only BatchNorm's ``num_batches_tracked`` counters may be absent (old releases lack them; they change nothing
    when a momentum is set).
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape (file vs model)", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:_SHOWN])}{' ...' if len(keys) > _SHOWN else ''}")
        raise CheckpointError(
            f"{where}: the {what} does not match the checkpoint; " + "; ".join(parts)
            + ". Check that the architecture flag names the network this file was trained with."
        )
    full = {k: state.get(k, expected[k]) for k in expected}
    module.load_state_dict(full, strict=True)


def refuse_other_stem(weights: Weights, arch: str, stem: str) -> None:
    """Refuse a ResNet checkpoint made with the other stem than ``stem``, naming the flag that loads it."""
    found = stem_of(weights.backbone)
    if found is not None and found != stem:
        kernel = weights.backbone["conv1.weight"].shape[-1]
        raise CheckpointError(f"{weights.path} (detected format: {weights.fmt}) holds a {arch} with the {found} stem "
                              f"(conv1 {kernel}x{kernel}), but this run builds the {stem} stem: pass --stem={found}")


def load_backbone(arch: str, path: str | Path, pool: str = "avg", data: bytes | None = None, stem: str = "imagenet"
                  ) -> tuple[nn.Module, Weights]:
    """Build ``arch`` with ``stem`` and load its backbone weights from any supported checkpoint (``data``: its bytes,
    already read), strictly; a checkpoint of the other stem is refused by name (``refuse_other_stem``)."""
    weights = read_weights(path, data)
    meta_arch = weights.meta.get("arch")
    if weights.fmt == "bingo" and meta_arch and meta_arch != arch:
        raise CheckpointError(f"{path}: this project's checkpoint holds a {meta_arch} backbone, but {arch} was asked "
                              "for")
    refuse_other_stem(weights, arch, stem)
    net = build_backbone(arch, pool=pool, stem=stem)
    strict_load(net, weights.backbone, f"{path} (detected format: {weights.fmt})", f"{arch} backbone")
    return net, weights


def head_from_state(state: dict[str, torch.Tensor], where: str) -> nn.Sequential:
    """Build the projection head whose weights are ``state`` (its shapes decide the sizes) and load it strictly."""
    if "1.running_mean" in state and "3.weight" in state:
        head = swav_head(state["0.weight"].shape[1], state["0.weight"].shape[0], state["3.weight"].shape[0])
    elif "2.weight" in state and "0.weight" in state:
        head = mlp_head(state["0.weight"].shape[1], state["0.weight"].shape[0], state["2.weight"].shape[0])
    elif set(state) in ({"weight", "bias"}, {"0.weight", "0.bias"}):  # MoCo-v1's fc; this project's --nomlp head
        state = {k if k.startswith("0.") else f"0.{k}": v for k, v in state.items()}
        head = nn.Sequential(nn.Linear(state["0.weight"].shape[1], state["0.weight"].shape[0]))
    else:
        raise CheckpointError(f"{where}: unrecognised projection head with keys {sorted(state)[:_SHOWN]}")
    strict_load(head, state, where, "projection head")
    return head


def load_teacher(arch: str, path: str | Path, data: bytes | None = None, stem: str = "imagenet"
                 ) -> tuple[nn.Module, nn.Module, Weights]:
    """Backbone (with ``stem``) and its own pretrained projection head, both loaded strictly; raises if the file has
    no head."""
    backbone, weights = load_backbone(arch, path, data=data, stem=stem)
    if not weights.head:
        raise CheckpointError(
            f"{path} (detected format: {weights.fmt}) has no projection head; distillation needs the teacher's own "
            "head (a MoCo-v2, SwAV or this project's checkpoint)"
        )
    head = head_from_state(weights.head, f"{path} (detected format: {weights.fmt})")
    if head[0].in_features != backbone.feature_dim:
        raise CheckpointError(f"{path}: head expects {head[0].in_features}-d input, {arch} gives "
                              f"{backbone.feature_dim}")
    return backbone, head, weights


STUDENT_PREFIX = "module.encoder_q."
MOMENTUM_PREFIX = "module.encoder_k."


def to_official_keys(embedder: nn.Module, prefix: str = STUDENT_PREFIX) -> dict[str, torch.Tensor]:
    """An ``Embedder``'s weights under the official names: ``module.encoder_q.<backbone>`` and
    ``module.encoder_q.fc.<head>``, which MoCo/BINGO linear-evaluation tools read."""
    state = {f"{prefix}{k}": v for k, v in embedder.backbone.state_dict().items()}
    state.update({f"{prefix}fc.{k}": v for k, v in embedder.head.state_dict().items()})
    return state


def from_official_keys(embedder: nn.Module, state: dict[str, torch.Tensor], where: str,
                       prefix: str = STUDENT_PREFIX) -> None:
    """Load what ``to_official_keys`` wrote back into an ``Embedder``, strictly."""
    backbone, head = _split_head(_strip(state, prefix), "fc.")
    strict_load(embedder.backbone, backbone, where, "student backbone")
    strict_load(embedder.head, head, where, "student head")
