"""A torchvision-layout ResNet backbone under detectron2's parameter names, for fine-tuning a distilled student in
detectron2 (the paper's detection tables: Mask R-CNN with FPN, which hosts the basic blocks of ResNet-18/34; the C4
head builds bottleneck blocks and cannot).

detectron2's ResNet (``detectron2/modeling/backbone/resnet.py``) names the stem ``stem.conv1`` and the stages
``res2`` .. ``res5`` (torchvision's ``layer1`` .. ``layer4``); every convolution carries its BatchNorm as ``.norm``,
and a block's projection is ``shortcut``. So ``layer2.0.bn1.weight`` becomes ``res3.0.conv1.norm.weight`` and
``layer2.0.downsample.1.running_var`` becomes ``res3.0.shortcut.norm.running_var``. The BatchNorm step counters have no
use there and are left out; anything else without a place (a classifier) is an error, never silently dropped.
"""
from __future__ import annotations

import re

import torch

__all__ = ["DETECTRON2_DEPTHS", "FPN_PREFIX", "detectron2_name", "to_detectron2"]

DETECTRON2_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}
FPN_PREFIX = "backbone.bottom_up."  # where a Mask R-CNN FPN model holds its ResNet

_STEM = re.compile(r"^(conv1|bn1)\.(\w+)$")
_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(conv[1-3]|bn[1-3]|downsample\.[01])\.(\w+)$")


def detectron2_name(key: str) -> str | None:
    """detectron2's name of a torchvision ResNet parameter or buffer ``key``; None for a BatchNorm step counter.
    Raises ``KeyError`` for a key a detectron2 ResNet has no place for."""
    if key.endswith("num_batches_tracked"):
        return None
    stem = _STEM.match(key)
    if stem:
        layer, field = stem.groups()
        return f"stem.conv1.{field}" if layer == "conv1" else f"stem.conv1.norm.{field}"
    block = _BLOCK.match(key)
    if not block:
        raise KeyError(f"{key} has no place in a detectron2 ResNet")
    stage, index, layer, field = block.groups()
    where = f"res{int(stage) + 1}.{index}"
    if layer.startswith("conv"):
        return f"{where}.{layer}.{field}"
    if layer.startswith("bn"):
        return f"{where}.conv{layer[2]}.norm.{field}"
    return f"{where}.shortcut.{field}" if layer.endswith("0") else f"{where}.shortcut.norm.{field}"


def to_detectron2(state: dict[str, torch.Tensor], prefix: str = FPN_PREFIX) -> dict[str, torch.Tensor]:
    """Every tensor of a torchvision-layout ResNet ``state`` under ``prefix`` + its detectron2 name, unchanged."""
    out = {}
    for key, value in state.items():
        name = detectron2_name(key)
        if name is not None:
            out[prefix + name] = value
    return out
