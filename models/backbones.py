"""Every network by the name the official scripts use.

`build_backbone(name)` returns an ``nn.Module`` whose ``forward(images)`` gives the pooled feature ``[B, width]``
and which carries ``feature_dim`` (that width) and ``pool_attr`` (the name of its adaptive pooling layer, so the
linear probe can swap average for max pooling). Parameter names are those of the upstream implementation
(torchvision, efficientnet_pytorch, SwAV's ``resnet50w2``) minus the classifier, so state_dicts load and export
without renaming.

Every ResNet comes with one of two stems (``STEMS``): ``imagenet``, the paper's (a 7 x 7 stride-2 convolution and a
stride-2 max-pool: a 224-px image reaches the first residual stage at 56 x 56), or ``small``, the small-image stem of
MoCo's CIFAR demo, SimCLR's CIFAR experiments, solo-learn and lightly (a 3 x 3 stride-1 convolution, no max-pool: a
32-px image reaches the first stage at 32 x 32 instead of 8 x 8). The parameter names are the same; ``conv1.weight``'s
kernel tells the two apart (``stem_of``).

``pixels`` is not a network but the raw-input floor: the image itself, area-resized to 32 x 32 and flattened, so
that evaluation code can score raw pixels exactly as it scores a network's features.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.resnet import Bottleneck

__all__ = ["build_backbone", "BACKBONES", "TEACHERS", "STUDENTS", "FLOORS", "STEMS", "stem_of", "ResNet50w2",
           "Pixels"]

STEMS = ("imagenet", "small")
_STEM_KERNELS = {"imagenet": 7, "small": 3}


class ResNet50w2(nn.Module):
    """SwAV's wide ResNet-50 (every stage twice as wide as ResNet-50, 4096-d pooled feature).

    This is *not* torchvision's ``wide_resnet50_2`` (which widens only the bottleneck and pools to 2048-d). SwAV's
    network zero-pads the input by one pixel and uses padding 2 in the stem convolution; its parameter names match
    the public ``swav_RN50w2_400ep_pretrain.pth.tar`` once the ``module.`` prefix is removed.
    """

    def __init__(self, widen: int = 2, layers: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        width = 64 * widen
        self.inplanes = width
        self.padding = nn.ConstantPad2d(1, 0.0)
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0], stride=1)
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.padding(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


class Pixels(nn.Module):
    """The raw-input floor: the image area-resized to ``side`` x ``side`` and flattened (3,072 values at 32), no
    parameters. At 32 px input the resize is the identity."""

    def __init__(self, side: int = 32) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(x), 1)


def _torchvision_resnet(name: str) -> nn.Module:
    net = getattr(tvm, name)(weights=None)
    width = net.fc.in_features
    net.fc = nn.Identity()
    return _tag(net, width, "avgpool")


def _resnet50w2() -> nn.Module:
    return _tag(ResNet50w2(), 4096, "avgpool")


def _efficientnet_b0() -> nn.Module:
    from efficientnet_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-b0")
    width = net._fc.in_features
    # The pooled feature goes through EfficientNet's own dropout (active in training, as in the official student)
    # and then the identity instead of the 1000-way classifier.
    net._fc = nn.Identity()
    return _tag(net, width, "_avg_pooling")


def _mobilenetv3_large() -> nn.Module:
    net = tvm.mobilenet_v3_large(weights=None)
    width = net.classifier[0].in_features  # 960: the pooled feature, before torchvision's 1280-d classifier MLP
    net.classifier = nn.Identity()
    return _tag(net, width, "avgpool")


def _small_stem(net: nn.Module) -> None:
    """Replace a ResNet's ImageNet stem by the small-image one in place: a 3 x 3 stride-1 convolution of the same
    width (He-initialised as torchvision initialises its convolutions) and no max-pool (nor SwAV's input padding)."""
    width = net.conv1.out_channels
    net.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    if hasattr(net, "padding"):
        net.padding = nn.Identity()


def stem_of(state: dict[str, torch.Tensor]) -> str | None:
    """The stem a ResNet state_dict was made with (by ``conv1.weight``'s kernel), or None for other networks."""
    weight = state.get("conv1.weight")
    if weight is None or weight.dim() != 4:
        return None
    return {kernel: stem for stem, kernel in _STEM_KERNELS.items()}.get(weight.shape[-1])


def _tag(net: nn.Module, width: int, pool_attr: str | None) -> nn.Module:
    net.feature_dim = width
    net.pool_attr = pool_attr
    return net


TEACHERS: dict[str, Callable[[], nn.Module]] = {
    "resnet50": lambda: _torchvision_resnet("resnet50"),
    "resnet101": lambda: _torchvision_resnet("resnet101"),
    "resnet152": lambda: _torchvision_resnet("resnet152"),
    "resnet50w2": _resnet50w2,
}
STUDENTS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": lambda: _torchvision_resnet("resnet18"),
    "resnet34": lambda: _torchvision_resnet("resnet34"),
    "efficientnet-b0": _efficientnet_b0,
    "mobilenetv3_large": _mobilenetv3_large,
}
BACKBONES: dict[str, Callable[[], nn.Module]] = {**STUDENTS, **TEACHERS}
# Scored by the evaluation code like a network, never trained.
FLOORS: dict[str, Callable[[], nn.Module]] = {"pixels": lambda: _tag(Pixels(32), 3 * 32 * 32, None)}


RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet50w2")


def build_backbone(name: str, pool: str = "avg", stem: str = "imagenet") -> nn.Module:
    """Build the named backbone (or floor) with random weights; ``pool`` is ``avg`` or ``max`` (adaptive, any input
    size); ``stem`` is a ResNet's (``STEMS``; other networks and the floors have the ImageNet one only). The network
    carries its ``stem``."""
    builders = {**BACKBONES, **FLOORS}
    if name not in builders:
        raise ValueError(f"unknown network {name!r}; choose one of {sorted(builders)}")
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose one of {list(STEMS)}")
    if stem != "imagenet" and name not in RESNETS:
        raise ValueError(f"--stem={stem} is a ResNet stem; {name} has its own: use --stem=imagenet")
    net = builders[name]()
    if stem == "small":
        _small_stem(net)
    net.stem = stem
    if pool != "avg" and net.pool_attr is None:
        raise ValueError(f"{name} has no pooling layer to change; use pool='avg'")
    if pool == "max":
        setattr(net, net.pool_attr, nn.AdaptiveMaxPool2d(1))
    elif pool != "avg":
        raise ValueError(f"unknown pooling {pool!r}; choose avg or max")
    return net
