"""Views made on the training device (``--device_views``): loader workers only read files and draw the random
parameters; the device decodes the JPEGs (nvJPEG on CUDA, through torchvision) and applies crop, colour jitter,
grayscale, blur and flip to the whole batch at once (torchvision and Kornia ops with per-view parameters).

``sample_view`` draws the parameters with exactly the torch RNG calls, in exactly the order, of the CPU pipeline
(``datasets.transforms.augmentation``), so under the same seed both paths make the same views up to rounding
(PIL rounds to 8 bits after every step, the device path works in float32; PIL's blur is a box approximation).
tests/test_device_views.py checks that view for view.
"""
from __future__ import annotations

import functools
import io
import itertools
import math
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from kornia.color import rgb_to_grayscale
from kornia.enhance import adjust_contrast_with_mean_subtraction, adjust_hue, adjust_saturation_with_gray_subtraction
from kornia.filters import gaussian_blur2d
from PIL import Image
from torch.utils.data import default_collate
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from datasets.folders import BagDataset, DatasetError, IndexedImageFolder, load_rgb, to_rgb
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, AugmentSpec, resize_size
from utils.logs import Progress, log

__all__ = [
    "ViewParams",
    "sample_view",
    "read_encoded",
    "read_decoded",
    "DecodedCache",
    "EncodedBagDataset",
    "EncodedImageFolder",
    "collate_encoded",
    "PackedImages",
    "DeviceViews",
]


class ViewParams(NamedTuple):
    """One view's random draws as numpy arrays and Python numbers (cheap to make in a worker); after collation a
    batch of them as tensors."""

    crop: np.ndarray | torch.Tensor  # int64 [4]: top, left, height, width in source pixels
    jitter: bool | torch.Tensor  # colour jitter applied
    factors: np.ndarray | torch.Tensor  # float32 [4]: brightness, contrast, saturation, hue factors
    order: np.ndarray | torch.Tensor  # int64 [4]: order of the jitter ops (0 brightness, 1 contrast, 2 sat., 3 hue)
    gray: bool | torch.Tensor
    blur_sigma: float | torch.Tensor  # 0 where not blurred
    flip: bool | torch.Tensor


def _draw(p: float) -> bool:
    """``RandomApply``'s test: applied unless p < U(0, 1)."""
    return not bool(p < torch.rand(1))


@functools.lru_cache(maxsize=None)
def _colour_jitter(strengths: tuple[float, float, float, float]) -> T.ColorJitter:
    return T.ColorJitter(*strengths)


def sample_view(width: int, height: int, spec: AugmentSpec) -> ViewParams:
    """The random parameters of one view of a ``width`` x ``height`` image, drawn from torch's global RNG with the
    calls torchvision's pipeline for ``spec`` makes (the caller seeds it, as ``BagDataset`` does)."""
    # get_params reads only the size: a zero-size stand-in avoids decoding the image in the worker.
    crop = T.RandomResizedCrop.get_params(torch.empty(0, height, width), list(spec.scale), list(spec.ratio))
    colour_jitter = _colour_jitter(spec.jitter)
    jitter, factors, order = False, [1.0, 1.0, 1.0, 0.0], np.arange(4)
    gray = False
    for stage in ("gray", "jitter") if spec.gray_before_jitter else ("jitter", "gray"):
        if stage == "gray":
            gray = spec.gray_p > 0 and bool(torch.rand(1) < spec.gray_p)
        elif spec.jitter_p > 0 and (spec.jitter_p >= 1 or _draw(spec.jitter_p)):
            jitter = True
            order, *drawn = colour_jitter.get_params(colour_jitter.brightness, colour_jitter.contrast,
                                                     colour_jitter.saturation, colour_jitter.hue)
            order = order.numpy()
            factors = [default if value is None else value for value, default in zip(drawn, factors)]
    sigma = 0.0
    if spec.blur_p > 0 and _draw(spec.blur_p):
        low, high = spec.blur_sigma
        sigma = low + (high - low) * torch.rand(()).item()  # as PilGaussianBlur draws it
    flip = bool(torch.rand(1) < 0.5)
    return ViewParams(np.array(crop, dtype=np.int64), jitter, np.array(factors, dtype=np.float32), order, gray,
                      sigma, flip)


class EncodedImage(NamedTuple):
    """A file's bytes when the device can decode them (JPEG, RGB or grayscale), else the decoded ``uint8 [3, H, W]``
    pixels; the image's size, read from the header; and the file, for error messages."""

    data: torch.Tensor
    width: int
    height: int
    path: str


def read_encoded(path: str) -> EncodedImage:
    """Read ``path`` for the device path: JPEGs stay encoded, other formats (PNG, CMYK JPEG, ...) are decoded here."""
    try:
        raw = Path(path).read_bytes()
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size
            if image.format == "JPEG" and image.mode in ("RGB", "L"):
                data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            else:
                data = torch.from_numpy(np.array(to_rgb(image))).permute(2, 0, 1).contiguous()
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"cannot read image {path}: {error}. Remove or replace the file.") from error
    return EncodedImage(data, width, height, str(path))


def read_decoded(path: str) -> EncodedImage:
    """Read and decode ``path`` (any format PIL reads) to ``uint8 [3, H, W]`` pixels."""
    pixels = torch.from_numpy(np.array(load_rgb(path))).permute(2, 0, 1).contiguous()
    return EncodedImage(pixels, pixels.shape[2], pixels.shape[1], str(path))


class DecodedCache:
    """Every image of a dataset decoded once and held in memory, for small datasets (Fashion-MNIST, CIFAR: 3 KB an
    image at 32 px): the loader then reads nothing from disk and decodes nothing. Used as the dataset's loader;
    loader workers share the pixels with the main process."""

    def __init__(self, paths: Sequence[str]) -> None:
        progress = Progress(len(paths), "decode into memory")
        self.images = {}
        for path in paths:
            self.images[path] = read_decoded(path)
            progress.update(1)
        log(progress.line())

    def __call__(self, path: str) -> EncodedImage:
        return self.images[path]


class _Sampler:
    """``BagDataset``'s per-view transform on the device path: (the image, that view's parameters)."""

    def __init__(self, spec: AugmentSpec) -> None:
        self.spec = spec

    def __call__(self, image: EncodedImage) -> tuple[EncodedImage, ViewParams]:
        return image, sample_view(image.width, image.height, self.spec)


class EncodedBagDataset(BagDataset):
    """``BagDataset`` for ``--device_views``: items are ``(images, view parameters, index)`` where ``images`` holds
    the anchor (and the neighbour) once as ``EncodedImage`` and the parameters are those of the CPU path's views.
    With ``in_memory`` every image is decoded once, up front, and kept (``DecodedCache``)."""

    def __init__(self, root, spec: AugmentSpec, neighbours, clus_pos_num: int = 5, seed: int = 0,
                 views: str | None = None, in_memory: bool = False) -> None:
        super().__init__(root, _Sampler(spec), neighbours, clus_pos_num, seed, views)
        self.loader = DecodedCache([path for path, _ in self.samples]) if in_memory else read_encoded

    def __getitem__(self, index: int) -> tuple:  # type: ignore[override]
        *views, index = super().__getitem__(index)
        images = tuple(image for image, _ in views[::2])
        return images, tuple(params for _, params in views), index


class EncodedImageFolder(IndexedImageFolder):
    """``IndexedImageFolder`` whose items are ``(images, target, index)`` with ``images`` a 1-tuple of
    ``EncodedImage``."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.loader = read_encoded

    def __getitem__(self, index: int) -> tuple:  # type: ignore[override]
        image, target, index = super().__getitem__(index)
        return (image,), target, index


class PackedImages(NamedTuple):
    """A batch slot's images in one buffer, so a worker hands over one tensor instead of one per image."""

    data: torch.Tensor  # uint8: every image's bytes (JPEG) or pixels (uint8 [3, H, W]) one after another
    offsets: torch.Tensor  # int64 [n + 1]: image i is data[offsets[i]:offsets[i + 1]]
    shapes: torch.Tensor  # int64 [n, 3]: pixel shape, or zeros where the bytes are a JPEG file
    paths: tuple[str, ...]

    @classmethod
    def pack(cls, images: Sequence[EncodedImage]) -> "PackedImages":
        data = [image.data for image in images]
        offsets = torch.tensor([0, *itertools.accumulate(t.numel() for t in data)])
        shapes = torch.tensor([tuple(t.shape) if t.dim() == 3 else (0, 0, 0) for t in data], dtype=torch.int64)
        return cls(torch.cat([t.flatten() for t in data]), offsets, shapes, tuple(image.path for image in images))

    def unpack(self) -> list[torch.Tensor]:
        """Views into ``data``: 1-D JPEG bytes or ``[3, H, W]`` pixels."""
        bounds, shapes = self.offsets.tolist(), self.shapes.tolist()
        return [self.data[start:end] if shape[0] == 0 else self.data[start:end].view(shape)
                for start, end, shape in zip(bounds, bounds[1:], shapes)]


def collate_encoded(items: Sequence[tuple]) -> tuple:
    """Batch ``(images, rest...)`` items: each image slot becomes one ``PackedImages``, the rest is collated."""
    slots = [PackedImages.pack(slot) for slot in zip(*(item[0] for item in items))]
    return (slots, *default_collate([item[1:] for item in items]))


class DeviceViews:
    """Decode and augment a batch on ``device``; the output equals the CPU pipeline's up to rounding."""

    def __init__(self, size: int, spec: AugmentSpec, device: torch.device, channels_last: bool = False) -> None:
        self.size, self.spec, self.device = size, spec, torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self.blur_kernel = 2 * math.ceil(3 * spec.blur_sigma[1]) + 1

    def decode(self, images: PackedImages) -> list[torch.Tensor]:
        """``uint8 [3, H, W]`` on the device for each image: the JPEGs in one batched decode, the rest copied.
        Should the batched decode fail, each JPEG is decoded alone on the CPU, and a file that cannot be decoded
        at all stops the run, named."""
        pieces = images.unpack()
        out = [data.to(self.device, non_blocking=True) if data.dim() == 3 else None for data in pieces]
        jpegs = [i for i, data in enumerate(pieces) if data.dim() == 1]
        if jpegs:
            try:
                decoded = decode_jpeg([pieces[i] for i in jpegs], mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError:
                decoded = [self._decode_alone(pieces[i], images.paths[i]) for i in jpegs]
            for i, pixels in zip(jpegs, decoded):
                out[i] = pixels
        return out

    def _decode_alone(self, data: torch.Tensor, path: str) -> torch.Tensor:
        try:
            pixels = decode_jpeg(data, mode=ImageReadMode.RGB)
        except RuntimeError as error:
            raise DatasetError(f"cannot decode {path}: {error}. Remove or replace the file.") from error
        return pixels.to(self.device, non_blocking=True)

    def train_views(self, batch: tuple) -> tuple[torch.Tensor, ...]:
        """A collated ``EncodedBagDataset`` batch -> the view tensors the distiller takes (each ``[B, 3, S, S]``):
        views 2i and 2i + 1 come from image slot i."""
        slots, params, _ = batch
        decoded = [self.decode(slot) for slot in slots]
        sources = [image for v in range(len(params)) for image in decoded[v // 2]]
        joined = ViewParams(*(torch.cat(field) for field in zip(*params)))
        return self.augment(sources, joined).chunk(len(params))

    def eval_crops(self, batch: tuple) -> torch.Tensor:
        """A collated ``EncodedImageFolder`` batch -> ``Resize(round(S*256/224)) + CenterCrop(S)``, normalised."""
        (slot,), _, _ = batch
        crops = [TF.center_crop(TF.resize(image.float(), [resize_size(self.size)], antialias=True), [self.size])
                 for image in self.decode(slot)]
        return self._finish(torch.stack(crops).div_(255).clamp_(0, 1))

    def augment(self, images: list[torch.Tensor], params: ViewParams) -> torch.Tensor:
        """View ``i`` of ``images[i]`` with ``params[i]``: ``[V, 3, S, S]`` normalised floats on the device."""
        crops = []
        for image, (top, left, height, width) in zip(images, params.crop.tolist()):
            crop = image[:, top:top + height, left:left + width].float()
            crops.append(TF.resize(crop, [self.size, self.size], antialias=True))
        x = torch.stack(crops).div_(255).clamp_(0, 1)
        stages = (self._gray, self._jitter) if self.spec.gray_before_jitter else (self._jitter, self._gray)
        for stage in stages:
            x = stage(x, params)
        x = self._where(x, params.blur_sigma > 0,
                        lambda part, rows: gaussian_blur2d(part, self.blur_kernel, self._sigmas(params, rows),
                                                           border_type="replicate"))
        x = self._where(x, params.flip, lambda part, rows: part.flip(-1))
        return self._finish(x)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def _on_device(self, values: torch.Tensor) -> torch.Tensor:
        """Host-side parameters of the selected rows, as float32 on the device."""
        return values.to(self.device, torch.float32, non_blocking=True)

    def _sigmas(self, params: ViewParams, rows: torch.Tensor) -> torch.Tensor:
        return self._on_device(params.blur_sigma[rows])[:, None].expand(-1, 2)

    def _where(self, x: torch.Tensor, mask: torch.Tensor, op) -> torch.Tensor:
        """Apply ``op(x[rows], rows)`` to the rows where the host-side ``mask`` is true (no device sync)."""
        rows = mask.nonzero().flatten()
        if len(rows):
            index = rows.to(self.device, non_blocking=True)
            x[index] = op(x[index], rows)
        return x

    def _gray(self, x: torch.Tensor, params: ViewParams) -> torch.Tensor:
        return self._where(x, params.gray, lambda part, rows: rgb_to_grayscale(part).expand(-1, 3, -1, -1))

    def _jitter(self, x: torch.Tensor, params: ViewParams) -> torch.Tensor:
        ops = (
            lambda part, f: (part * f.view(-1, 1, 1, 1)).clamp(0, 1),  # torchvision's brightness (Kornia's adds)
            adjust_contrast_with_mean_subtraction,
            adjust_saturation_with_gray_subtraction,
            lambda part, f: adjust_hue(part, f * (2 * math.pi)),  # Kornia's hue is in radians
        )
        for position in range(4):
            for op_id, op in enumerate(ops):
                mask = params.jitter & (params.order[:, position] == op_id)
                x = self._where(x, mask, lambda part, rows: op(part, self._on_device(params.factors[rows, op_id])))
        return x
