"""The image transforms: MoCo-v2 / MoCo-v1 augmentation, the linear-probe augmentation and the evaluation crop.

Every transform takes the output size ``S`` (``--image_size``, 224 by default) so tests can run at 32 px; the
evaluation transform is ``Resize(round(S * 256 / 224)) + CenterCrop(S)``, i.e. Resize 256 + CenterCrop 224 at S=224.
"""
from __future__ import annotations

import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PilGaussianBlur",
    "moco_v2_augmentation",
    "moco_v1_augmentation",
    "pretrain_augmentation",
    "linear_train_transform",
    "eval_transform",
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


def moco_v2_augmentation(size: int = 224) -> T.Compose:
    """RandomResizedCrop(0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8, grayscale p=0.2, blur p=0.5, flip."""
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.2, 1.0)),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([PilGaussianBlur((0.1, 2.0))], p=0.5),
            T.RandomHorizontalFlip(),
            *_normalise(),
        ]
    )


def moco_v1_augmentation(size: int = 224) -> T.Compose:
    """RandomResizedCrop(0.2-1), grayscale p=0.2, ColorJitter(0.4, 0.4, 0.4, 0.4) always, flip."""
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.2, 1.0)),
            T.RandomGrayscale(p=0.2),
            T.ColorJitter(0.4, 0.4, 0.4, 0.4),
            T.RandomHorizontalFlip(),
            *_normalise(),
        ]
    )


def pretrain_augmentation(size: int = 224, aug_plus: bool = True) -> T.Compose:
    """The distillation views: MoCo-v2 (``--aug_plus``, the default) or MoCo-v1."""
    return moco_v2_augmentation(size) if aug_plus else moco_v1_augmentation(size)


def linear_train_transform(size: int = 224) -> T.Compose:
    """Linear-probe training: RandomResizedCrop (default scale 0.08-1) and flip."""
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *_normalise()])


def resize_size(size: int) -> int:
    return round(size * 256 / 224)


def eval_transform(size: int = 224) -> T.Compose:
    """Deterministic evaluation crop: Resize(round(S*256/224)) + CenterCrop(S), ImageNet normalisation."""
    return T.Compose([T.Resize(resize_size(size)), T.CenterCrop(size), *_normalise()])
