"""Embedding a dataset with a frozen network, and exact nearest-neighbour search on the embeddings.

Shared by the kNN step (``run_knn.py``) and the k-NN classifier (``main_lincls.py --protocol=knn``).
"""
from __future__ import annotations

import logging
import math
import time
from types import ModuleType
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from datasets.device_views import HeldImages
from utils import dist as edist
from utils.logs import Progress, log

__all__ = ["embed", "exact_knn", "search", "faiss_info", "import_faiss", "check_finite_features", "NonFiniteFeatures",
           "SEARCH_BACKENDS"]

SEARCH_BACKENDS = ("auto", "faiss", "torch")
# Bound on |fp16 dot product - exact dot product| for unit vectors (inputs rounded to fp16, fp32 accumulation,
# fp16 output rounding), with a safety factor: used to certify the fast GPU search (see _two_stage_knn).
_FP16_DOT_ERROR = 4e-3
_CANDIDATE_MARGIN = 16


@torch.no_grad()
def embed(
    network: nn.Module,
    dataset: Dataset,
    ctx: edist.Context,
    batch_size: int,
    num_workers: int = 4,
    channels_last: bool = False,
    report_every: float = 10.0,
    label: str = "embed",
    collate_fn: Callable | None = None,
    prepare: Callable[[tuple], torch.Tensor] | None = None,
) -> torch.Tensor | None:
    """L2-normalised ``network`` outputs for every item of ``dataset`` (items are ``(image, target, index)``).

    Each process embeds the strided shard ``rank, rank + world, ...`` (no padding duplicates); batches are gathered
    as they are made and rank 0 returns all ``N`` features, float32 on the CPU, in dataset order, each exactly once.
    Other ranks return ``None``. ``collate_fn`` and ``prepare`` (batch -> images on the device) are the
    ``--device_views`` path's; by default items are image tensors. A ``HeldImages`` split gives its crops made on the
    device (no loader processes).
    """
    if isinstance(dataset, HeldImages):
        collate_fn, prepare, num_workers = None, dataset.crops, 0
    network.eval()
    n = len(dataset)
    shard = ctx.shard(n)
    steps = math.ceil(math.ceil(n / ctx.world_size) / batch_size)
    loader = DataLoader(
        Subset(dataset, shard),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=False,
        collate_fn=collate_fn,
    )
    width = _width(network)
    out = torch.empty(n, width, dtype=torch.float32) if ctx.is_main else None
    seen = torch.zeros(n, dtype=torch.int32) if ctx.is_main else None
    progress = Progress(n, label)
    batches = iter(loader)
    for _ in range(steps):
        batch = next(batches, None)
        index = torch.full((batch_size,), -1, dtype=torch.int64)
        features_pad = torch.zeros(batch_size, width, device=ctx.device)
        if batch is not None:
            idx = batch[-1]
            images = prepare(batch) if prepare is not None else batch[0]
            index[: len(idx)] = idx
            features_pad[: len(idx)] = _forward(network, images, ctx.device, channels_last)
        all_features = edist.all_gather(features_pad)
        all_index = edist.all_gather(index.to(ctx.device))
        if ctx.is_main:
            all_features, all_index = all_features.cpu(), all_index.cpu()
            valid = all_index >= 0
            out[all_index[valid]] = all_features[valid]
            seen[all_index[valid]] += 1
            progress.update(int(valid.sum()))
            progress.report(report_every)
    if ctx.is_main:
        log(progress.line())
        if not bool((seen == 1).all()):
            raise RuntimeError(f"embedding bookkeeping error: {int((seen != 1).sum())} images not embedded once")
        check_finite_features(out, dataset)
    return out


class NonFiniteFeatures(FloatingPointError):
    """The network gave NaN or infinite features; a search over them would return meaningless neighbours."""


def check_finite_features(features: torch.Tensor, dataset: Dataset) -> None:
    """Raise ``NonFiniteFeatures`` naming how many rows are bad and the first image's file."""
    bad = (~torch.isfinite(features)).any(dim=1).nonzero().flatten()
    if len(bad):
        first = int(bad[0])
        samples = getattr(dataset, "samples", None)
        name = samples[first][0] if samples is not None else f"item {first}"
        raise NonFiniteFeatures(
            f"the network's features are NaN or infinite for {len(bad)} of {len(features)} images (first: {name}); "
            "no neighbour search on them. The weights loaded finite, so check the images and the network's scale")


def _width(network: nn.Module) -> int:
    width = getattr(network, "feature_dim", None)
    if width is None:
        raise TypeError("the network to embed with must carry feature_dim (its output width)")
    return width


def _forward(network: nn.Module, images: torch.Tensor, device: torch.device, channels_last: bool):
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return F.normalize(network(images).float(), dim=1)


def import_faiss() -> ModuleType | None:
    """faiss, or None where it is not installed. Its loader's INFO lines (each instruction set it tries, with the
    ``ModuleNotFoundError`` of every one its wheel lacks) stay out of the run's log: absl shows INFO."""
    loader = logging.getLogger("faiss.loader")
    level = loader.level
    loader.setLevel(logging.WARNING)
    try:
        import faiss
    except ImportError:
        return None
    finally:
        loader.setLevel(level)
    return faiss


def faiss_info() -> tuple[bool, bool]:
    """(faiss importable, faiss has GPU support)."""
    faiss = import_faiss()
    if faiss is None:
        return False, False
    return True, hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def exact_knn(
    features: torch.Tensor,
    k: int,
    backend: str = "auto",
    device: torch.device | str = "cpu",
    chunk: int | None = None,
    report: Callable[[str], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Exact ``k`` nearest neighbours by inner product of each row of ``features`` among all rows, itself excluded.

    Rows should be L2-normalised (inner product = cosine). Returns ``(indices int64 [N, k], similarities float32
    [N, k], backend used)``, nearest first. The row itself is excluded by index, never by position, so duplicate
    images cannot list themselves. ``auto`` picks faiss on the GPU when a faiss GPU build is installed, else the
    torch search on ``device``; on a CPU it picks faiss-cpu when installed, else torch.
    """
    n = features.shape[0]
    if not 0 < k < n:
        raise ValueError(f"K={k} neighbours need 0 < K < N, the number of images ({n})")
    if backend not in SEARCH_BACKENDS:
        raise ValueError(f"unknown search backend {backend!r}; choose one of {SEARCH_BACKENDS}")
    device = torch.device(device)
    has_faiss, faiss_gpu = faiss_info()
    if backend == "auto":
        backend = "faiss" if has_faiss and (faiss_gpu or device.type == "cpu") else "torch"
    if backend == "faiss":
        if not has_faiss:
            raise RuntimeError("--search=faiss, but faiss is not installed (pip install faiss-cpu or faiss-gpu-cu12)")
        idx, sims = _faiss_knn(features, k, use_gpu=faiss_gpu and device.type == "cuda", report=report)
        return idx, sims, "faiss-gpu" if faiss_gpu and device.type == "cuda" else "faiss-cpu"
    if device.type == "cuda":
        idx, sims = _two_stage_knn(features, k, device, chunk, report)
        return idx, sims, "torch-cuda"
    idx, sims = search(features, features, k, chunk=chunk, exclude_self=True, report=report)
    return idx, sims, "torch-cpu"


def _report_chunk(report, start: int, end: int, n: int, t0: float) -> None:
    if report is not None:
        elapsed = time.perf_counter() - t0
        rate = end / elapsed if elapsed > 0 else 0.0
        report(f"search {end}/{n} queries, {rate:.0f} queries/s, eta {(n - end) / rate if rate else 0:.0f} s")


def _exclude_self(sims: torch.Tensor, start: int) -> None:
    rows = torch.arange(sims.shape[0], device=sims.device)
    sims[rows, rows + start] = float("-inf")


@torch.no_grad()
def search(queries: torch.Tensor, database: torch.Tensor, k: int, device: torch.device | str = "cpu",
           chunk: int | None = None, exclude_self: bool = False, report: Callable[[str], None] | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact float32 top-``k`` inner-product search of ``queries`` in ``database`` (chunked matmul + top-k).

    With ``exclude_self`` the queries must be the database itself and row ``i`` never returns ``i``. Returns CPU
    ``(indices int64 [Q, k], similarities float32 [Q, k])``, nearest first.
    """
    device = torch.device(device)
    database = database.to(device, torch.float32)
    n, q = database.shape[0], queries.shape[0]
    chunk = chunk or max(1, min(q, (1 << 28) // (4 * n)))  # ~256 MB of similarities at a time
    indices = torch.empty(q, k, dtype=torch.int64)
    sims_out = torch.empty(q, k, dtype=torch.float32)
    t0 = time.perf_counter()
    for start in range(0, q, chunk):
        end = min(q, start + chunk)
        sims = queries[start:end].to(device, torch.float32) @ database.T
        if exclude_self:
            _exclude_self(sims, start)
        values, idx = sims.topk(k, dim=1)
        indices[start:end], sims_out[start:end] = idx.cpu(), values.cpu()
        _report_chunk(report, start, end, q, t0)
    return indices, sims_out


def _block_topk(sims: torch.Tensor, c: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``c`` of each row of ``sims`` ([Q, n_blocks * block]) without a top-k over the whole row: the rows'
    top-``c`` elements lie in the ``c`` blocks with the largest maxima, so a top-k over block maxima and one over
    those blocks' members give the same result (up to ties) at a fraction of the cost."""
    q = sims.shape[0]
    blocks = sims.view(q, -1, block)
    _, best_blocks = blocks.amax(dim=2).topk(min(c, blocks.shape[1]), dim=1)
    members = blocks.gather(1, best_blocks[:, :, None].expand(-1, -1, block)).view(q, -1)
    values, pos = members.topk(c, dim=1)
    columns = best_blocks.gather(1, pos // block) * block + pos % block
    return values, columns


def _two_stage_knn(features, k, device, chunk=None, report=None, block: int = 64):
    """Half-precision search for ``k + margin`` candidates (tensor cores, a blocked top-k), exact float32
    re-ranking of the candidates, and an exact float32 search for every row whose result the half-precision error
    bound cannot certify. The result equals a full float32 search up to exact ties."""
    n, d = features.shape
    exact = features.to(device, torch.float32)
    padded = -(-n // block) * block
    half = torch.zeros(padded, d, device=device, dtype=torch.float16)
    half[:n] = exact
    c = min(n - 1, k + _CANDIDATE_MARGIN)
    if chunk is None:
        free, _ = torch.cuda.mem_get_info(device) if device.type == "cuda" else (1 << 30, 0)
        chunk = max(1, min(n, int(free * 0.3) // (padded * 2 * 3)))
    indices = torch.empty(n, k, dtype=torch.int64, device=device)
    sims_out = torch.empty(n, k, dtype=torch.float32, device=device)
    uncertified = []
    matmul = torch.backends.cuda.matmul
    settings = (matmul.allow_fp16_reduced_precision_reduction, matmul.allow_tf32)
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        t0 = time.perf_counter()
        for start in range(0, n, chunk):
            end = min(n, start + chunk)
            sims = half[start:end] @ half.T
            sims[:, n:] = float("-inf")
            _exclude_self(sims, start)
            approx, cand = _block_topk(sims, c, block)
            del sims
            rescored = torch.einsum("qd,qcd->qc", exact[start:end], exact[cand])
            top, order = rescored.topk(k, dim=1)
            indices[start:end] = cand.gather(1, order)
            sims_out[start:end] = top
            if c < n - 1:
                bad = top[:, -1] < approx[:, -1].float() + _FP16_DOT_ERROR
                uncertified.append(torch.nonzero(bad).flatten() + start)
            if report is not None and (end == n or (start // chunk) % 50 == 0):
                _report_chunk(report, start, end, n, t0)
        redo = torch.cat(uncertified) if uncertified else torch.zeros(0, dtype=torch.long, device=device)
        if report is not None and redo.numel():
            report(f"search: {redo.numel()} rows re-searched in float32 (near-ties within the fp16 error bound)")
        for start in range(0, redo.numel(), chunk):
            rows = redo[start:start + chunk]
            sims = exact[rows] @ exact.T
            sims[torch.arange(rows.numel(), device=device), rows] = float("-inf")
            values, idx = sims.topk(k, dim=1)
            indices[rows], sims_out[rows] = idx, values
    finally:
        (torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
         torch.backends.cuda.matmul.allow_tf32) = settings
    return indices.cpu(), sims_out.cpu()


def _faiss_knn(features, k, use_gpu, report):
    import numpy as np

    faiss = import_faiss()

    data = np.ascontiguousarray(features.float().cpu().numpy())
    n, d = data.shape
    index = faiss.IndexFlatIP(d)
    if use_gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(data)
    extra = 1
    while True:
        # Search K+extra and drop the row itself by value; grow only if a row has >extra exact duplicates of
        # itself that pushed it out of its own list.
        t0 = time.perf_counter()
        sims, idx = index.search(data, min(n, k + extra))
        _report_chunk(report, 0, n, n, t0)
        keep = idx != np.arange(n)[:, None]
        if (keep.sum(1) >= k).all():
            break
        extra *= 4
    rows = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    out_idx = np.take_along_axis(idx, rows, 1).astype(np.int64)
    out_sims = np.take_along_axis(sims, rows, 1).astype(np.float32)
    return torch.from_numpy(out_idx), torch.from_numpy(out_sims)
