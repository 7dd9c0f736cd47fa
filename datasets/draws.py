"""The random draws of the device views, made for a whole batch at once from (run seed, epoch, image index).

Every number is a counter-based draw: the splitmix64 sequence of a key hashed from (seed, epoch, image index, stream),
so a view depends on nothing but those four, whatever the batch, the number of processes or loader workers, and
after a resume. ``draw_views`` gives the parameters of torchvision's pipeline for an ``AugmentSpec`` (the crop of
``RandomResizedCrop``, then ``ColorJitter``'s factors and order, grayscale, blur and flip) with the distributions
torchvision draws them from; ``neighbour_columns`` draws the bag member a view pair is made of. The CPU pipeline
(``datasets.transforms``) draws the same distributions from torch's generator instead, so under one seed the two
paths make different views of the same kind.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from datasets.transforms import AugmentSpec

__all__ = ["ViewParams", "uniforms", "draw_views", "neighbour_columns", "NEIGHBOUR_STREAM", "CROP_ATTEMPTS"]

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
NEIGHBOUR_STREAM = 4  # streams 0-3 are the views of a bag: anchor query, anchor key, neighbour query, neighbour key
CROP_ATTEMPTS = 10  # RandomResizedCrop's tries before its central fallback


class ViewParams(NamedTuple):
    """The random parameters of a batch of ``V`` views (tensors on the CPU)."""

    crop: torch.Tensor  # int64 [V, 4]: top, left, height, width in source pixels
    jitter: torch.Tensor  # bool [V]: colour jitter applied
    factors: torch.Tensor  # float32 [V, 4]: brightness, contrast, saturation, hue factors
    order: torch.Tensor  # int64 [V, 4]: order of the jitter ops (0 brightness, 1 contrast, 2 saturation, 3 hue)
    gray: torch.Tensor  # bool [V]
    blur_sigma: torch.Tensor  # float32 [V]: 0 where not blurred
    flip: torch.Tensor  # bool [V]


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's output function (wrapping uint64 arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def uniforms(seed: int, epoch: int, indices: np.ndarray, stream: int, count: int) -> np.ndarray:
    """``[len(indices), count]`` float64 draws, uniform in [0, 1), of image ``indices`` in ``epoch`` of the run
    ``seed``, from ``stream``: the first ``count`` numbers of splitmix64 seeded with the hash of the four."""
    with np.errstate(over="ignore"):
        key = np.zeros(1, dtype=np.uint64)
        for word in (seed, epoch, stream):
            key = _mix((key ^ np.uint64(word % 2**64)) + _GAMMA)
        keys = _mix((key ^ np.asarray(indices, dtype=np.int64).astype(np.uint64)) + _GAMMA)
        steps = np.arange(1, count + 1, dtype=np.uint64) * _GAMMA
        bits = _mix(keys[:, None] + steps[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _crops(spec: AugmentSpec, u: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """``RandomResizedCrop.get_params`` for every row: up to ``CROP_ATTEMPTS`` tries of an area and log-ratio, the
    first that fits wins; else the central crop of the ratio-clamped image. ``u``: ``[V, 4 * CROP_ATTEMPTS]``."""
    area_u, ratio_u, top_u, left_u = np.split(u, 4, axis=1)
    height, width = heights[:, None].astype(np.float64), widths[:, None].astype(np.float64)
    target = height * width * (spec.scale[0] + (spec.scale[1] - spec.scale[0]) * area_u)
    low, high = math.log(spec.ratio[0]), math.log(spec.ratio[1])
    aspect = np.exp(low + (high - low) * ratio_u)
    w = np.rint(np.sqrt(target * aspect))
    h = np.rint(np.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.argmax(axis=1)
    rows = np.arange(len(u))
    w, h = w[rows, first], h[rows, first]
    top = np.floor(top_u[rows, first] * (heights - h + 1))
    left = np.floor(left_u[rows, first] * (widths - w + 1))
    # the fallback: the whole image, or its centre at the nearest allowed ratio
    in_ratio = widths / heights
    fw = np.where(in_ratio > spec.ratio[1], np.rint(heights * spec.ratio[1]), widths)
    fh = np.where(in_ratio < spec.ratio[0], np.rint(widths / spec.ratio[0]), heights)
    found = fits.any(axis=1)
    h, w = np.where(found, h, fh), np.where(found, w, fw)
    top = np.where(found, top, (heights - fh) // 2)
    left = np.where(found, left, (widths - fw) // 2)
    return np.stack([top, left, h, w], axis=1).astype(np.int64)


def _jitter_factors(spec: AugmentSpec, u: np.ndarray) -> np.ndarray:
    """``ColorJitter.get_params``'s factors: brightness, contrast and saturation uniform in [max(0, 1 - s), 1 + s],
    hue in [-s, s]; a strength of 0 leaves its op out (factor 1, hue 0)."""
    factors = np.empty_like(u)
    for column, strength in enumerate(spec.jitter):
        low, high = (-strength, strength) if column == 3 else (max(0.0, 1 - strength), 1 + strength)
        identity = 0.0 if column == 3 else 1.0
        factors[:, column] = identity if strength == 0 else low + (high - low) * u[:, column]
    return factors


def draw_views(spec: AugmentSpec, seed: int, epoch: int, indices: np.ndarray, stream: int, heights: np.ndarray,
               widths: np.ndarray) -> ViewParams:
    """The parameters of the views of ``indices`` (one each, from ``stream``) of images ``heights`` x ``widths``:
    what torchvision's pipeline for ``spec`` draws, for the whole batch in a fixed number of array operations."""
    indices, heights, widths = (np.asarray(a, dtype=np.int64).reshape(-1) for a in (indices, heights, widths))
    crop_draws = 4 * CROP_ATTEMPTS
    u = uniforms(seed, epoch, indices, stream, crop_draws + 13)
    crop = _crops(spec, u[:, :crop_draws], heights, widths)
    jitter_u, factor_u, order_u, gray_u, blur_u, sigma_u, flip_u = np.split(
        u[:, crop_draws:], [1, 5, 9, 10, 11, 12], axis=1)
    jitter = (jitter_u[:, 0] < spec.jitter_p) if spec.jitter_p < 1 else np.ones(len(u), dtype=bool)
    blur = blur_u[:, 0] < spec.blur_p
    low, high = spec.blur_sigma
    return ViewParams(
        crop=torch.from_numpy(crop),
        jitter=torch.from_numpy(jitter),
        factors=torch.from_numpy(_jitter_factors(spec, factor_u).astype(np.float32)),
        order=torch.from_numpy(np.argsort(order_u, axis=1).astype(np.int64)),  # a uniform random permutation
        gray=torch.from_numpy(gray_u[:, 0] < spec.gray_p),
        blur_sigma=torch.from_numpy(np.where(blur, low + (high - low) * sigma_u[:, 0], 0.0).astype(np.float32)),
        flip=torch.from_numpy(flip_u[:, 0] < 0.5),
    )


def neighbour_columns(seed: int, epoch: int, indices: np.ndarray, k: int) -> np.ndarray:
    """For each anchor of ``indices``, which of its ``k`` neighbours is its bag's other member in ``epoch`` (uniform,
    int64)."""
    u = uniforms(seed, epoch, indices, NEIGHBOUR_STREAM, 1)[:, 0]
    return np.minimum((u * k).astype(np.int64), k - 1)
