"""Views made on the training device, a whole batch at a time (``--device_views``, ``--in_memory``).

Two ways in: loader workers read the files (``EncodedBagDataset``: JPEGs stay encoded and the device decodes them,
nvJPEG on CUDA), or every training image is decoded once at start-up and held on the device as one tensor
(``HeldBagDataset``, ``--in_memory``; the loader then hands over index tensors, ``IndexBatches``). Either way the
training process draws every view's parameters for the batch at once (``datasets.draws``: from seed, epoch and
image index alone) and ``DeviceViews`` makes the views with a fixed number of tensor operations, whatever the batch:

- crop and resize as two batched matrix products per chunk of views: each view's rows and columns of
  torchvision's antialiased bilinear resize (``resize_weights``: the triangle filter, widened when shrinking, that
  ``interpolate(antialias=True)`` and PIL apply), zero outside the crop;
- colour jitter (each of its four ops computed for the batch at each of the four positions, kept where the view's
  random order puts it), grayscale, Gaussian blur (Kornia, per-view sigma) and flip, each kept by a per-view mask.

On the same parameters the views equal torchvision's per-image ops up to float32 rounding (``tests/
test_device_views.py``); against the CPU pipeline's PIL ops they differ by PIL's 8-bit rounding after each step and
its box approximation of the blur (a mean absolute 0.005 of the pixel range).
"""
from __future__ import annotations

import io
import itertools
import math
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from kornia.color import rgb_to_grayscale
from kornia.enhance import adjust_contrast_with_mean_subtraction, adjust_hue, adjust_saturation_with_gray_subtraction
from kornia.filters import gaussian_blur2d
from PIL import Image
from torch.utils.data import default_collate

from datasets.draws import ViewParams, draw_views, neighbour_columns
from datasets.folders import (
    BagDataset,
    DatasetError,
    IndexedImageFolder,
    check_same_classes,
    load_rgb,
    open_split,
    to_rgb,
)
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, AugmentSpec, resize_size
from utils.logs import Progress, log

__all__ = [
    "read_encoded",
    "read_decoded",
    "EncodedBagDataset",
    "EncodedImageFolder",
    "HeldBagDataset",
    "HeldImages",
    "held_splits",
    "hold_pixels",
    "IndexBatches",
    "collate_encoded",
    "PackedImages",
    "DeviceViews",
    "resize_weights",
    "PIXEL_BUDGET",
]

# Source pixels of one chunk of views (the resize's float32 input is 12 bytes a pixel: 768 MB).
PIXEL_BUDGET = 1 << 26


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


def encoded_loader(dataset: IndexedImageFolder) -> Callable[[str], EncodedImage]:
    """``read_encoded`` for a folder's files; an array release's images come as their pixels."""
    if dataset.arrays is None:
        return read_encoded
    arrays = dataset.arrays

    def pixels(path: str) -> EncodedImage:
        data = torch.from_numpy(np.ascontiguousarray(arrays.pixels(path))).permute(2, 0, 1).contiguous()
        return EncodedImage(data, data.shape[2], data.shape[1], path)

    return pixels


class EncodedBagDataset(BagDataset):
    """``BagDataset`` for ``--device_views`` read from files: items are ``(images, epoch, index)`` where ``images``
    holds the anchor (and its bag's other member) once each as ``EncodedImage``; the views are drawn and made on the
    device (``DeviceViews.train_views``). The other member is drawn by ``datasets.draws.neighbour_columns``."""

    def __init__(self, root, neighbours, clus_pos_num: int = 5, seed: int = 0, views: str | None = None) -> None:
        super().__init__(root, None, neighbours, clus_pos_num, seed, views)
        self.loader = encoded_loader(self)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple:  # type: ignore[override]
        epoch, index = self.epoch_and_index(key)
        anchor = self.loader(self.samples[index][0])
        if self.views == "pair":
            return (anchor,), epoch, index
        column = neighbour_columns(self.seed, epoch, np.array([index]), self.neighbours.shape[1])[0]
        neighbour = self.loader(self.samples[int(self.neighbours[index, column])][0])
        return (anchor, neighbour), epoch, index


class EncodedImageFolder(IndexedImageFolder):
    """``IndexedImageFolder`` whose items are ``(images, target, index)`` with ``images`` a 1-tuple of
    ``EncodedImage``."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.loader = encoded_loader(self)

    def __getitem__(self, index: int) -> tuple:  # type: ignore[override]
        image, target, index = super().__getitem__(index)
        return (image,), target, index


class PackedImages(NamedTuple):
    """A batch slot's images in one buffer, so a worker hands over one tensor instead of one per image."""

    data: torch.Tensor  # uint8: every image's bytes (JPEG) or pixels (uint8 [3, H, W]) one after another
    offsets: torch.Tensor  # int64 [n + 1]: image i is data[offsets[i]:offsets[i + 1]]
    shapes: torch.Tensor  # int64 [n, 3]: pixel shape, or zeros where the bytes are a JPEG file
    sizes: torch.Tensor  # int64 [n, 2]: every image's height and width (from the header for a JPEG)
    paths: tuple[str, ...]

    @classmethod
    def pack(cls, images: Sequence[EncodedImage]) -> "PackedImages":
        data = [image.data for image in images]
        offsets = torch.tensor([0, *itertools.accumulate(t.numel() for t in data)])
        shapes = torch.tensor([tuple(t.shape) if t.dim() == 3 else (0, 0, 0) for t in data], dtype=torch.int64)
        sizes = torch.tensor([(image.height, image.width) for image in images], dtype=torch.int64)
        return cls(torch.cat([t.flatten() for t in data]), offsets, shapes, sizes,
                   tuple(image.path for image in images))

    def unpack(self) -> list[torch.Tensor]:
        """Views into ``data``: 1-D JPEG bytes or ``[3, H, W]`` pixels."""
        bounds, shapes = self.offsets.tolist(), self.shapes.tolist()
        return [self.data[start:end] if shape[0] == 0 else self.data[start:end].view(shape)
                for start, end, shape in zip(bounds, bounds[1:], shapes)]


def collate_encoded(items: Sequence[tuple]) -> tuple:
    """Batch ``(images, rest...)`` items: each image slot becomes one ``PackedImages``, the rest is collated."""
    slots = [PackedImages.pack(slot) for slot in zip(*(item[0] for item in items))]
    return (slots, *default_collate([item[1:] for item in items]))


class _Decoded(torch.utils.data.Dataset):
    """Item ``i``: the decoded image of ``samples[i]`` (for decoding in loader processes)."""

    def __init__(self, samples: list[tuple[str, int]], read: Callable[[str], EncodedImage]) -> None:
        self.samples, self.read = samples, read

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> EncodedImage:
        return self.read(self.samples[index][0])

    @staticmethod
    def stack(images: list[EncodedImage]) -> torch.Tensor | list[EncodedImage]:
        """A batch as one tensor (one transfer from a loader process), or its images when their sizes differ."""
        if len({image.data.shape for image in images}) > 1:
            return images
        return torch.stack([image.data for image in images])


def hold_pixels(dataset: IndexedImageFolder, workers: int = 0) -> torch.Tensor:
    """Every image of ``dataset`` as one ``uint8 [N, 3, H, W]`` tensor on the CPU: an array release's copied as it
    is stored, files decoded (any format PIL reads) in ``workers`` loader processes. The images must share one size
    (Fashion-MNIST, CIFAR, STL-10); another size stops the run naming both files."""
    arrays = dataset.arrays
    if arrays is not None and isinstance(arrays.images, np.ndarray):  # [N, H, W, 3], in memory or mapped
        pixels = torch.from_numpy(np.ascontiguousarray(np.asarray(arrays.images).transpose(0, 3, 1, 2)))
        log(f"held {len(pixels)} images of {pixels.shape[3]}x{pixels.shape[2]} from {arrays.release}")
        return pixels
    read = encoded_loader(dataset) if arrays is not None else read_decoded  # arrays: already pixels
    first = read(dataset.samples[0][0])
    pixels = torch.empty(len(dataset.samples), *first.data.shape, dtype=torch.uint8)
    progress = Progress(len(dataset.samples), "decode into memory")
    batches = torch.utils.data.DataLoader(_Decoded(dataset.samples, read), batch_size=256, num_workers=workers,
                                          collate_fn=_Decoded.stack)  # in order
    for batch in batches:
        odd = None
        if isinstance(batch, list):  # sizes differ inside the batch: one of them differs from the first image's
            odd = next(image for image in batch if image.data.shape != first.data.shape)
        elif batch.shape[1:] != first.data.shape:
            odd = EncodedImage(batch[0], batch.shape[3], batch.shape[2], dataset.samples[progress.done][0])
        if odd is not None:
            raise DatasetError(f"--in_memory holds images of one size, but {odd.path} is {odd.width}x{odd.height} "
                               f"and {first.path} is {first.width}x{first.height}: resize the images to one size, "
                               "or drop --in_memory")
        pixels[progress.done:progress.done + len(batch)] = batch
        progress.update(len(batch))
    log(progress.line())
    return pixels


class HeldBagDataset(BagDataset):
    """``--in_memory``: every training image decoded once and held as one ``uint8 [N, 3, H, W]`` tensor on ``device``
    (``hold_pixels``), so a step reads nothing and runs no per-image Python: ``views(epoch, indices)`` makes the
    batch's views on the device."""

    def __init__(self, root, neighbours, device: torch.device, clus_pos_num: int = 5, seed: int = 0,
                 views: str | None = None, workers: int = 0) -> None:
        super().__init__(root, None, neighbours, clus_pos_num, seed, views)
        self.pixels = hold_pixels(self, workers).to(device)

    def sources(self, epoch: int, indices: torch.Tensor) -> torch.Tensor:
        """The image of each view slot, slot after slot: the anchors twice, then (bags) their drawn neighbours
        twice; ``[n_views * B]`` int64 on the CPU."""
        if self.views == "pair":
            return indices.repeat(2)
        anchors = indices.numpy()
        columns = neighbour_columns(self.seed, epoch, anchors, self.neighbours.shape[1])
        members = torch.from_numpy(self.neighbours[anchors, columns])
        return torch.cat([indices, indices, members, members])

    def num_views(self) -> int:
        return 2 if self.views == "pair" else 4


class HeldImages(IndexedImageFolder):
    """A split held on ``device`` as one ``uint8 [N, 3, H, W]`` tensor (``hold_pixels``) and embedded with the
    evaluation crop made a batch at a time there (``crops``): what the k-NN monitor, the frozen protocols and the kNN
    step read with ``--in_memory``, with no per-image Python. Items are ``(target, index)``;
    ``engine.features.embed`` and ``engine.evaluation.recompute_bn_statistics`` take the images from ``crops``."""

    def __init__(self, root, device: torch.device | str, size: int, workers: int = 0,
                 channels_last: bool = False, share: IndexedImageFolder | None = None) -> None:
        super().__init__(root)
        held = getattr(share, "pixels", None)  # ``share``: a dataset holding these very images already
        if held is not None and share.samples == self.samples:
            log(f"{self.root}: its {len(self.samples)} images held already, not held again")
            self.pixels = held.to(device)  # the same tensor where it is on ``device``
        else:
            self.pixels = hold_pixels(self, workers).to(device)
        self.views = DeviceViews(size, None, device, channels_last)

    def __getitem__(self, index: int) -> tuple[int, int]:  # type: ignore[override]
        return self.targets[index], index

    def crops(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """A collated batch (its last entry the indices) -> its images' evaluation crops on the device."""
        indices = batch[-1].to(self.pixels.device, non_blocking=True)
        return self.views.held_eval_crops(self.pixels.index_select(0, indices))


def held_splits(data_dir, device: torch.device | str, size: int, workers: int = 0, flag: str = "--data_dir",
                share: IndexedImageFolder | None = None) -> tuple[HeldImages, HeldImages]:
    """``labelled_splits`` held on ``device``: train/ and val/ of ``data_dir`` (given by ``flag``) as ``HeldImages``,
    with the same classes; train/ reuses ``share``'s held pixels where it holds the same images (the training set)."""
    train = HeldImages(open_split(data_dir, "train", flag), device, size, workers, share=share)
    val = HeldImages(open_split(data_dir, "val", flag), device, size, workers)
    check_same_classes(data_dir, train, val)
    return train, val


class ShardOrder:
    """``DistributedSampler``'s order (shuffled by seed + epoch, ``drop_last``) as one tensor per epoch."""

    def __init__(self, n: int, world_size: int, rank: int, seed: int) -> None:
        self.n, self.world_size, self.rank, self.seed = n, world_size, rank, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.world_size

    def order(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        total = len(self) * self.world_size
        return torch.randperm(self.n, generator=generator)[:total][self.rank:total:self.world_size]


class IndexBatches:
    """The training loader of a ``HeldBagDataset``: each step ``(epoch, indices)``, this process's next
    ``batch_size`` image indices as one tensor (``drop_last``); ``sampler.set_epoch`` as for a ``DataLoader``."""

    def __init__(self, n: int, world_size: int, rank: int, batch_size: int, seed: int) -> None:
        self.sampler = ShardOrder(n, world_size, rank, seed)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        order = self.sampler.order()
        for step in range(len(self)):
            yield self.sampler.epoch, order[step * self.batch_size:(step + 1) * self.batch_size]


def resize_weights(start: torch.Tensor, length: torch.Tensor, out_length: torch.Tensor, first: torch.Tensor,
                   count: int, extent: int) -> torch.Tensor:
    """``[V, count, extent]`` float32: for each view, outputs ``first .. first + count - 1`` of the antialiased
    bilinear resize of source pixels ``start .. start + length - 1`` to ``out_length`` pixels, as weights over the
    ``extent`` source pixels of one axis (zero outside the span). The weights are those of torch's
    ``interpolate(mode="bilinear", antialias=True, align_corners=False)`` and PIL's bilinear resize: the triangle
    filter around each output's centre, widened by the scale when shrinking, normalised. Arguments are ``[V]``
    tensors on the device."""
    start, length, out_length, first = (t.to(torch.float64)[:, None, None] for t in (start, length, out_length, first))
    device = start.device
    scale = length / out_length
    support = scale.clamp(min=1.0)
    centre = scale * (first + torch.arange(count, device=device, dtype=torch.float64)[None, :, None] + 0.5)
    position = torch.arange(extent, device=device, dtype=torch.float64)[None, None, :] - start
    weights = (1 - ((position + 0.5 - centre) / support).abs()).clamp(min=0)
    weights = weights * ((position >= 0) & (position < length))
    return (weights / weights.sum(-1, keepdim=True)).to(torch.float32)


def _resample(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``rows[v] @ images[v, c] @ cols[v].T`` for every view and channel, scaled to [0, 1]: ``[V, 3, S, S]``."""
    out = torch.matmul(torch.matmul(rows[:, None], images.float()), cols[:, None].transpose(-1, -2))
    return out.div_(255).clamp_(0, 1)


def _pad(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """``uint8 [n, 3, max H, max W]``: the images top-left aligned, zeros beside them."""
    out = images[0].new_zeros(len(images), 3, max(i.shape[1] for i in images), max(i.shape[2] for i in images))
    for slot, image in zip(out, images):
        slot[:, :image.shape[1], :image.shape[2]] = image
    return out


def _chunks(heights: Sequence[int], widths: Sequence[int], budget: int) -> list[slice]:
    """Consecutive runs of views whose padded size (count x largest height x largest width) stays within
    ``budget`` pixels (a view larger than the budget alone)."""
    out, start, high, wide = [], 0, 0, 0
    for i, (h, w) in enumerate(zip(heights, widths)):
        high2, wide2 = max(high, h), max(wide, w)
        if i > start and (i - start + 1) * high2 * wide2 > budget:
            out.append(slice(start, i))
            start, high2, wide2 = i, h, w
        high, wide = high2, wide2
    return out + [slice(start, len(heights))]


class DeviceViews:
    """Decode and augment batches on ``device`` (see the module docstring); ``seed`` is the run's, from which the
    views are drawn. ``compile``: ``augment`` through ``torch.compile``, its two thousand operators (most of them
    the colour jitter's, each over the whole batch) fused into a few kernels; equal up to float32 rounding."""

    def __init__(self, size: int, spec: AugmentSpec | None, device: torch.device, channels_last: bool = False,
                 seed: int = 0, pixel_budget: int = PIXEL_BUDGET, compile: bool = False) -> None:
        self.size, self.spec, self.device, self.seed = size, spec, torch.device(device), seed
        self.pixel_budget = pixel_budget
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self.blur_kernel = 2 * math.ceil(3 * spec.blur_sigma[1]) + 1 if spec is not None else None  # None: crops only
        if compile:  # an instance attribute: the class's augment stays as written
            self.augment = torch.compile(self.augment)

    # ---- the two ways in -------------------------------------------------------------------------------------------
    def held_views(self, dataset: HeldBagDataset, batch: tuple[int, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """An ``IndexBatches`` step of ``dataset`` -> its views (``[B, 3, S, S]`` each, in the bag's view order)."""
        epoch, indices = batch
        sources = dataset.sources(epoch, indices)
        _, _, height, width = dataset.pixels.shape
        sizes = torch.tensor([height, width]).expand(len(sources), 2)
        params = self.draw(epoch, indices, dataset.num_views(), sizes)
        per_chunk = max(1, self.pixel_budget // (height * width))
        views = []
        for begin in range(0, len(sources), per_chunk):
            part = slice(begin, begin + per_chunk)
            images = dataset.pixels.index_select(0, sources[part].to(self.device, non_blocking=True))
            views.append(self.augment(images, _select(params, part)))
        return torch.cat(views).chunk(dataset.num_views())

    def train_views(self, batch: tuple) -> tuple[torch.Tensor, ...]:
        """A collated ``EncodedBagDataset`` batch -> its views: views 2i and 2i + 1 come from image slot i."""
        slots, epochs, indices = batch
        epoch = int(epochs[0])
        decoded = [self.decode(slot) for slot in slots]
        num_views = 2 * len(slots)
        sizes = torch.cat([slots[v // 2].sizes for v in range(num_views)])
        params = self.draw(epoch, indices, num_views, sizes)
        crops = [image[:, top:top + height, left:left + width]
                 for image, (top, left, height, width) in zip(
                     (image for v in range(num_views) for image in decoded[v // 2]), params.crop.tolist())]
        views = []
        for part in _chunks([c.shape[1] for c in crops], [c.shape[2] for c in crops], self.pixel_budget):
            local = _select(params, part)
            local = local._replace(crop=torch.cat([torch.zeros_like(local.crop[:, :2]), local.crop[:, 2:]], dim=1))
            views.append(self.augment(_pad(crops[part]), local))
        return torch.cat(views).chunk(num_views)

    def draw(self, epoch: int, indices: torch.Tensor, num_views: int, sizes: torch.Tensor) -> ViewParams:
        """The parameters of ``num_views`` views of each image of ``indices``, slot after slot (view ``v`` of image
        ``i`` from stream ``v``); ``sizes``: ``[num_views * B, 2]`` heights and widths of the views' sources."""
        index = indices.numpy()
        height, width = sizes.numpy().T.reshape(2, num_views, len(index))
        parts = [draw_views(self.spec, self.seed, epoch, index, v, height[v], width[v]) for v in range(num_views)]
        return ViewParams(*(torch.cat(field) for field in zip(*parts)))

    def decode(self, images: PackedImages) -> list[torch.Tensor]:
        """``uint8 [3, H, W]`` on the device for each image: the JPEGs in one batched decode, the rest copied.
        Should the batched decode fail, each JPEG is decoded alone on the CPU, and a file that cannot be decoded
        at all stops the run, named."""
        from torchvision.io import ImageReadMode, decode_jpeg

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
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            pixels = decode_jpeg(data, mode=ImageReadMode.RGB)
        except RuntimeError as error:
            raise DatasetError(f"cannot decode {path}: {error}. Remove or replace the file.") from error
        return pixels.to(self.device, non_blocking=True)

    # ---- evaluation crops ------------------------------------------------------------------------------------------
    def eval_crops(self, batch: tuple) -> torch.Tensor:
        """A collated ``EncodedImageFolder`` batch -> ``Resize(round(S*256/224)) + CenterCrop(S)``, normalised."""
        (slot,), _, _ = batch
        heights, widths = slot.sizes.T.numpy()
        decoded = self.decode(slot)
        crops = []
        for part in _chunks(heights.tolist(), widths.tolist(), self.pixel_budget):
            crops.append(self._center_crops(_pad(decoded[part]), heights[part], widths[part]))
        return self._finish(torch.cat(crops))

    def held_eval_crops(self, images: torch.Tensor) -> torch.Tensor:
        """``eval_crops`` of ``uint8 [B, 3, H, W]`` images of one size already on the device."""
        count, _, height, width = images.shape
        heights, widths = np.full(count, height), np.full(count, width)
        crops = [self._center_crops(images[part], heights[part], widths[part])
                 for part in _chunks(heights.tolist(), widths.tolist(), self.pixel_budget)]
        return self._finish(torch.cat(crops))

    def _center_crops(self, images: torch.Tensor, heights: np.ndarray, widths: np.ndarray) -> torch.Tensor:
        """The resize and centre crop of each image of ``images`` (``uint8 [V, 3, H, W]``, image ``v`` in its top-left
        ``heights[v] x widths[v]``), scaled to [0, 1]."""
        resized = resize_size(self.size)
        # torchvision's Resize(int): the shorter side to `resized`, the longer in proportion (truncated)
        short, long = np.minimum(heights, widths), np.maximum(heights, widths)
        longer = (resized * long / short).astype(np.int64)
        out_h = np.where(heights <= widths, resized, longer)
        out_w = np.where(heights <= widths, longer, resized)
        top, left = np.rint((out_h - self.size) / 2), np.rint((out_w - self.size) / 2)  # CenterCrop's offsets
        rows = self._weights(np.zeros_like(heights), heights, out_h, top, images.shape[2])
        cols = self._weights(np.zeros_like(widths), widths, out_w, left, images.shape[3])
        return _resample(images, rows, cols)

    def _weights(self, start, length, out_length, first, extent: int) -> torch.Tensor:
        as_tensor = [torch.as_tensor(np.asarray(a, dtype=np.float64)).to(self.device) for a in
                     (start, length, out_length, first)]
        return resize_weights(*as_tensor, self.size, extent)

    # ---- the views' maths ------------------------------------------------------------------------------------------
    def augment(self, images: torch.Tensor, params: ViewParams) -> torch.Tensor:
        """View ``v`` of ``images[v]`` (``uint8 [V, 3, H, W]`` on the device) with ``params[v]``: ``[V, 3, S, S]``
        normalised floats, in a fixed number of operations."""
        top, left, height, width = params.crop.T
        size = torch.full_like(top, self.size)
        zero = torch.zeros_like(top)
        rows = self._weights(top, height, size, zero, images.shape[2])
        cols = self._weights(left, width, size, zero, images.shape[3])
        x = _resample(images, rows, cols)
        on_device = ViewParams(*(field.to(self.device, non_blocking=True) for field in params))
        stages = (self._gray, self._jitter) if self.spec.gray_before_jitter else (self._jitter, self._gray)
        for stage in stages:
            x = stage(x, on_device)
        if self.spec.blur_p > 0:
            blurred = on_device.blur_sigma > 0
            sigma = torch.where(blurred, on_device.blur_sigma, 1.0)[:, None].expand(-1, 2)
            x = _keep(blurred, gaussian_blur2d(x, self.blur_kernel, sigma, border_type="replicate"), x)
        x = _keep(on_device.flip, x.flip(-1), x)
        return self._finish(x)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def _gray(self, x: torch.Tensor, params: ViewParams) -> torch.Tensor:
        if self.spec.gray_p <= 0:
            return x
        return _keep(params.gray, rgb_to_grayscale(x).expand(-1, 3, -1, -1), x)

    def _jitter(self, x: torch.Tensor, params: ViewParams) -> torch.Tensor:
        if self.spec.jitter_p <= 0:
            return x
        ops = (
            lambda part, f: (part * f.view(-1, 1, 1, 1)).clamp(0, 1),  # torchvision's brightness (Kornia's adds)
            adjust_contrast_with_mean_subtraction,
            adjust_saturation_with_gray_subtraction,
            lambda part, f: adjust_hue(part, f * (2 * math.pi)),  # Kornia's hue is in radians
        )
        for position in range(4):
            for op_id, op in enumerate(ops):
                chosen = params.jitter & (params.order[:, position] == op_id)
                x = _keep(chosen, op(x, params.factors[:, op_id]), x)
        return x


def _keep(mask: torch.Tensor, changed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``changed`` for the views where ``mask`` (``[V]`` bool) is true, ``x`` elsewhere."""
    return torch.where(mask.view(-1, 1, 1, 1), changed, x)


def _select(params: ViewParams, part: slice) -> ViewParams:
    return ViewParams(*(field[part] for field in params))
