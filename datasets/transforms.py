"""The image transforms: MoCo-v2 / MoCo-v1 / crop-and-flip augmentation, the linear-probe augmentation and the
evaluation crop.

Every transform takes the output size ``S`` (``--image_size``, 224 by default) so tests can run at 32 px; the
evaluation transform is ``Resize(round(S * 256 / 224)) + CenterCrop(S)``, i.e. Resize 256 + CenterCrop 224 at S=224.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PilGaussianBlur",
    "AugmentSpec",
    "MOCO_V2",
    "MOCO_V1",
    "CROP_FLIP",
    "AUGMENTATIONS",
    "augmentation",
    "pretrain_spec",
    "moco_v2_augmentation",
    "moco_v1_augmentation",
    "pretrain_augmentation",
    "linear_train_transform",
    "eval_transform",
    "transfer_train_transform",
    "transfer_eval_transform",
    "resize_size",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PilGaussianBlur:
    """PIL Gaussian blur with radius drawn uniformly from ``sigma`` (MoCo-v2's blur); draws from torch's RNG."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, image: Image.Image) -> Image.Image:
        low, high = self.sigma
        radius = low + (high - low) * torch.rand(()).item()
        return image.filter(ImageFilter.GaussianBlur(radius=radius))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma})"


def _normalise() -> list:
    return [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


@dataclass(frozen=True)
class AugmentSpec:
    """The random view distribution, shared by the CPU pipeline below and the device path (datasets.device_views)."""

    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8  # 1.0: always, with no draw (MoCo-v1 has no RandomApply around its ColorJitter); 0.0: none
    gray_p: float = 0.2  # 0.0: no grayscale stage at all
    gray_before_jitter: bool = False
    blur_p: float = 0.5  # 0.0: no blur stage at all
    blur_sigma: tuple[float, float] = (0.1, 2.0)


MOCO_V2 = AugmentSpec()
MOCO_V1 = AugmentSpec(jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0, gray_before_jitter=True, blur_p=0.0)
CROP_FLIP = AugmentSpec(scale=(0.08, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0)  # CompRess: RandomResizedCrop + flip
AUGMENTATIONS = {"mocov2": MOCO_V2, "mocov1": MOCO_V1, "crop_flip": CROP_FLIP}


def augmentation(spec: AugmentSpec, size: int = 224) -> T.Compose:
    """The torchvision pipeline for ``spec``: crop, colour jitter and grayscale (in the spec's order), blur, flip."""
    jitter = T.ColorJitter(*spec.jitter)
    stages = {"jitter": jitter if spec.jitter_p >= 1 else T.RandomApply([jitter], p=spec.jitter_p),
              "gray": T.RandomGrayscale(spec.gray_p)}
    order = ("gray", "jitter") if spec.gray_before_jitter else ("jitter", "gray")
    colour = [stages[name] for name in order if (spec.jitter_p if name == "jitter" else spec.gray_p) > 0]
    blur = [T.RandomApply([PilGaussianBlur(spec.blur_sigma)], p=spec.blur_p)] if spec.blur_p > 0 else []
    return T.Compose([T.RandomResizedCrop(size, scale=spec.scale, ratio=spec.ratio), *colour, *blur,
                      T.RandomHorizontalFlip(), *_normalise()])


def moco_v2_augmentation(size: int = 224) -> T.Compose:
    """RandomResizedCrop(0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8, grayscale p=0.2, blur p=0.5, flip."""
    return augmentation(MOCO_V2, size)


def moco_v1_augmentation(size: int = 224) -> T.Compose:
    """RandomResizedCrop(0.2-1), grayscale p=0.2, ColorJitter(0.4, 0.4, 0.4, 0.4) always, flip."""
    return augmentation(MOCO_V1, size)


def pretrain_spec(name: str = "mocov2") -> AugmentSpec:
    """The distillation views by ``--augmentation`` name: MoCo-v2 (the default), MoCo-v1, or CompRess's crop and
    flip."""
    return AUGMENTATIONS[name]


def pretrain_augmentation(size: int = 224, name: str = "mocov2") -> T.Compose:
    return augmentation(pretrain_spec(name), size)


def linear_train_transform(size: int = 224) -> T.Compose:
    """Linear-probe training: RandomResizedCrop (default scale 0.08-1) and flip."""
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *_normalise()])


def transfer_train_transform(size: int = 224) -> T.Compose:
    """SEED's and DisCo's CIFAR linear transfer, training: the small image upsampled by RandomResizedCrop(S) with
    bicubic interpolation, and flip (DisCo-pytorch @1d732c8, DisCo/cifar_main_lincls.py L298-306)."""
    return T.Compose([T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip(),
                      *_normalise()])


def transfer_eval_transform(size: int = 224) -> T.Compose:
    """Its evaluation: Resize(S) + CenterCrop(S), bicubic (the same file, L307-315)."""
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), *_normalise()])


def resize_size(size: int) -> int:
    return round(size * 256 / 224)


def eval_transform(size: int = 224) -> T.Compose:
    """Deterministic evaluation crop: Resize(round(S*256/224)) + CenterCrop(S), ImageNet normalisation."""
    return T.Compose([T.Resize(resize_size(size)), T.CenterCrop(size), *_normalise()])
