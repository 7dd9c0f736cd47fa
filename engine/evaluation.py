"""Evaluation: the linear probe on a frozen backbone, sharded top-1/top-5, the k-NN classifier, the converged
logistic-regression probe for small data, and label subsets for semi-supervised fine-tuning. Every accuracy comes
with its 95 % binomial interval."""
from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from datasets.device_views import HeldImages
from engine.features import embed, search
from utils import dist as edist
from utils.logs import Progress, log
from utils.metrics import topk_correct, with_intervals

__all__ = [
    "Classifier",
    "linear_classifier",
    "evaluate",
    "knn_predict",
    "embed_splits",
    "knn_scores",
    "labels_of",
    "logistic_regression",
    "LOGREG_C",
    "LOGREG_PATIENCE",
    "FrozenProtocols",
    "frozen_protocol_scores",
    "fit_logistic_regression",
    "stratified_holdout",
    "ranked_correct",
    "KnnMonitor",
    "recompute_bn_statistics",
    "label_subset",
    "backbone_fingerprint",
    "assert_unchanged",
    "train_classifier_epoch",
]


class Classifier(nn.Module):
    """Backbone + linear layer. With ``frozen`` the backbone stays in eval mode (BN uses the running statistics it
    was trained with) and runs without gradients: the linear probe. Without it the whole network trains."""

    def __init__(self, backbone: nn.Module, num_classes: int, frozen: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.frozen = frozen
        self.fc = linear_classifier(backbone.feature_dim, num_classes)
        if frozen:
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            with torch.no_grad():
                features = self.backbone(images)
        else:
            features = self.backbone(images)
        return self.fc(features)


def linear_classifier(in_dim: int, num_classes: int) -> nn.Linear:
    """Linear layer with N(0, 0.01) weights and zero bias (MoCo's probe initialisation)."""
    layer = nn.Linear(in_dim, num_classes)
    nn.init.normal_(layer.weight, std=0.01)
    nn.init.zeros_(layer.bias)
    return layer


def backbone_fingerprint(backbone: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}


def assert_unchanged(backbone: nn.Module, reference: dict[str, torch.Tensor]) -> None:
    """Stop if any backbone tensor (weights and BN statistics) differs from ``reference``."""
    for key, value in backbone.state_dict().items():
        if not torch.equal(value.detach().cpu(), reference[key]):
            raise RuntimeError(f"the frozen backbone changed during linear evaluation: {key}")


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, ctx: edist.Context, batch_size: int, num_workers: int
             ) -> dict[str, float]:
    """Top-1 / top-5 (%) and mean loss on ``dataset``; each process scores the strided shard ``rank::world`` (every
    image exactly once, no padding) and the counts are summed over processes. Every process scores rank 0's
    network: a network trained under DDP holds each rank's own BatchNorm statistics until they are broadcast."""
    edist.broadcast_buffers(model)
    model.eval()
    shard = Subset(dataset, ctx.shard(len(dataset)))
    loader = DataLoader(shard, batch_size=batch_size, num_workers=num_workers,
                        pin_memory=ctx.device.type == "cuda")
    totals = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # top1, top5, loss sum, count
    for images, targets, _ in loader:
        images, targets = images.to(ctx.device, non_blocking=True), targets.to(ctx.device, non_blocking=True)
        logits = model(images).float()
        top1, top5 = topk_correct(logits, targets, (1, 5))
        totals += torch.stack([top1.double(), top5.double(), F.cross_entropy(logits, targets, reduction="sum").double(),
                               torch.tensor(float(targets.numel()), device=ctx.device, dtype=torch.float64)])
    if dist.is_initialized():
        dist.all_reduce(totals)
    count = totals[3].item()
    if count != len(dataset):
        raise RuntimeError(f"evaluation counted {count:.0f} images, expected {len(dataset)}")
    accuracy = {"top1": 100.0 * totals[0].item() / count, "top5": 100.0 * totals[1].item() / count}
    return {**with_intervals(accuracy, int(count)), "loss": totals[2].item() / count, "count": int(count)}


@torch.no_grad()
def recompute_bn_statistics(backbone: nn.Module, dataset: Dataset, ctx: edist.Context, batch_size: int,
                            num_workers: int, report_every: float = 10.0) -> int:
    """Replace every BatchNorm's running mean and variance by their averages over ``dataset`` (PreciseBN), the
    weights untouched; returns how many BN layers were re-estimated. An untrained network's running statistics are
    the identity (mean 0, variance 1): this gives the random network the normalisation a trained one has. Each
    process averages over its shard, then the processes' averages are averaged. The first process logs its progress
    every ``report_every`` seconds (a pass over the training set: minutes on a CPU)."""
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    shard = Subset(dataset, ctx.shard(len(dataset)))
    held = isinstance(dataset, HeldImages)  # the crops made on the device from the held images
    progress = Progress(len(shard), "BatchNorm statistics")
    backbone.train()
    with torch.random.fork_rng(devices=[]):
        for batch in DataLoader(shard, batch_size=batch_size, num_workers=0 if held else num_workers):
            images = dataset.crops(batch) if held else batch[0]
            backbone(images.to(ctx.device, non_blocking=True))
            progress.update(len(images))
            progress.report(report_every, ctx.is_main)
    backbone.eval()
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
        if dist.is_initialized():
            for stat in (m.running_mean, m.running_var):
                dist.all_reduce(stat)
                stat /= ctx.world_size
    return len(norms)


def knn_predict(neighbour_labels: torch.Tensor, neighbour_sims: torch.Tensor, num_classes: int, k: int,
                temperature: float | None) -> torch.Tensor:
    """Class scores ``[Q, C]`` from the ``k`` nearest neighbours: a plain vote (``temperature=None``) or the
    similarity-weighted vote ``sum exp(sim / T)`` (as solo-learn and lightly report)."""
    labels = neighbour_labels[:, :k]
    sims = neighbour_sims[:, :k]
    weights = torch.ones_like(sims) if temperature is None else (sims / temperature).exp()
    scores = torch.zeros(labels.shape[0], num_classes, dtype=torch.float64)
    scores.scatter_add_(1, labels, weights.double())
    if temperature is None:
        # break vote ties in favour of the class whose members are nearer
        scores += 1e-6 * torch.zeros_like(scores).scatter_add_(1, labels, neighbour_sims[:, :k].double())
    return scores


def embed_splits(backbone: nn.Module, train_set: Dataset, val_set: Dataset, ctx: edist.Context, batch_size: int,
                 num_workers: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Normalised pooled features of both splits with the evaluation crop (``engine.features.embed``), on rank 0
    (None elsewhere). Every process embeds with rank 0's network (its BatchNorm statistics broadcast first, as
    ``evaluate`` does), and torch's random generator is left as it was found (loader workers draw their seeds from
    it), so what runs after draws the same numbers with or without it."""
    edist.broadcast_buffers(backbone)
    with torch.random.fork_rng(devices=[]):
        train_features = embed(backbone, train_set, ctx, batch_size, num_workers, label="embed train")
        val_features = embed(backbone, val_set, ctx, batch_size, num_workers, label="embed val")
    return train_features, val_features


def labels_of(dataset: Dataset) -> torch.Tensor:
    return torch.tensor(dataset.targets)


def knn_scores(train_features: torch.Tensor, train_labels: torch.Tensor, val_features: torch.Tensor,
               val_labels: torch.Tensor, num_classes: int, settings: list[tuple[int, float | None]],
               device: torch.device | str = "cpu") -> tuple[dict[str, dict[str, float]], dict[str, torch.Tensor]]:
    """k-NN accuracy (%) of ``val`` against the ``train`` memory for each ``(k, temperature or None)``, each with
    its 95 % binomial interval, and each setting's predicted class per query (``[Q]``, the same names)."""
    k_max = min(max(k for k, _ in settings), len(train_labels))
    idx, sims = search(val_features, train_features, k_max, device=device, report=log)
    neighbour_labels = train_labels[idx]
    results, predicted = {}, {}
    for k, temperature in settings:
        k = min(k, k_max)
        scores = knn_predict(neighbour_labels, sims, num_classes, k, temperature)
        top1, top5 = ranked_correct(scores, val_labels, (1, 5))
        name = f"k{k}_" + ("majority" if temperature is None else f"weighted_T{temperature:g}")
        accuracy = {"top1": 100.0 * top1.item() / len(val_labels), "top5": 100.0 * top5.item() / len(val_labels)}
        results[name] = {"k": k, "temperature": temperature, **with_intervals(accuracy, len(val_labels))}
        predicted[name] = scores.argmax(1)  # ties by class index, as ranked_correct
    return results, predicted


# inverse regularisation strengths tried, as scikit-learn's C: 1e-4 ... 1e2 (until 2026-12-05 the grid ended at 0.1,
# which most trained networks of the demo chose: docs/demo.md)
LOGREG_C = tuple(10.0 ** e for e in range(-4, 3))
LOGREG_PATIENCE = 2  # the path from strong to weak stops once this many successive C score below the best so far


@dataclass(frozen=True)
class FrozenProtocols:
    """What ``frozen_protocol_scores`` runs: the probe (``holdout`` of the training features choose its C, drawn with
    ``seed``; None: no probe) and, with ``knn``, the k-NN classifier: k = 10 majority vote and each of ``knn_k``
    weighted at temperature ``knn_t``. ``main_lincls.py``'s flags take their defaults from here."""

    seed: int = 0
    holdout: float | None = 0.2
    knn: bool = True
    knn_k: tuple[int, ...] = (10, 200)
    knn_t: float = 0.07

    @property
    def knn_settings(self) -> tuple[tuple[int, float | None], ...]:
        """``knn_scores``'s ``(k, temperature or None)`` settings (none without ``knn``)."""
        return ((10, None), *((k, self.knn_t) for k in self.knn_k)) if self.knn else ()


def frozen_protocol_scores(train_features: torch.Tensor, train_labels: torch.Tensor, val_features: torch.Tensor,
                           val_labels: torch.Tensor, num_classes: int, protocols: FrozenProtocols,
                           device: torch.device | str, seconds: dict[str, float],
                           predictions: dict[str, torch.Tensor] | None = None) -> dict:
    """``{"logreg"?, "knn"?}`` of frozen features (``logistic_regression``, ``knn_scores``), each logged with its
    interval; the seconds each took go into ``seconds``, and each protocol's predicted class per query into
    ``predictions`` (``logreg``, ``knn_<setting>``; for ``utils.io.save_predictions``)."""
    out, predicted = {}, {}
    if protocols.holdout is not None:
        started = time.perf_counter()
        out["logreg"], predicted["logreg"] = r, _ = logistic_regression(
            train_features, train_labels, val_features, val_labels, protocols.seed, protocols.holdout, device=device)
        log(f"logistic regression (C = {r['C']:g}, chosen on {100 * protocols.holdout:.0f} % of train/): top-1 "
            f"{r['top1']:.2f} [{r['top1_ci95'][0]:.1f}, {r['top1_ci95'][1]:.1f}]  top-5 {r['top5']:.2f}"
            + ("" if r["converged"] else f"  (L-BFGS stopped after {r['iterations']} iterations with a gradient "
               "entry still above its tolerance: not converged)")
            + (f"  (C at the end of the grid {min(LOGREG_C):g}-{max(LOGREG_C):g}: the best may lie beyond it)"
               if r["C_at_edge"] else ""))
        seconds["logreg"] = time.perf_counter() - started
    if protocols.knn:
        started = time.perf_counter()
        out["knn"], by_setting = knn_scores(train_features, train_labels, val_features, val_labels, num_classes,
                                            list(protocols.knn_settings), device)
        predicted.update({f"knn_{name}": p for name, p in by_setting.items()})
        for name, r in out["knn"].items():
            log(f"k-NN {name}: top-1 {r['top1']:.2f} [{r['top1_ci95'][0]:.1f}, {r['top1_ci95'][1]:.1f}]  "
                f"top-5 {r['top5']:.2f}")
        seconds["knn"] = time.perf_counter() - started
    if predictions is not None:
        predictions.update(predicted)
    return out


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(fit, held)``: ``fraction`` of each class held out (at least one image), drawn with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    fit, held = [], []
    for c in labels.unique().tolist():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        take = max(1, round(fraction * len(members))) if len(members) > 1 else 0
        held.append(members[:take])
        fit.append(members[take:])
    return torch.cat(fit).sort().values, torch.cat(held).sort().values


def fit_logistic_regression(features: torch.Tensor, labels: torch.Tensor, num_classes: int, c: float,
                            start: tuple[torch.Tensor, torch.Tensor] | None = None, max_iter: int = 1000,
                            tolerance: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Multinomial logistic regression by full-batch L-BFGS (``torch.optim.LBFGS``, strong-Wolfe line search): the
    minimum of ``sum CE + ||W||^2 / (2C)`` over weights and (unpenalised) bias, scikit-learn's ``C`` convention,
    computed as its mean over the images for scale, until no gradient entry exceeds ``tolerance``. Returns
    ``(W [D, C], b [C], iterations, converged)``; ``start`` warm-starts from a nearby fit (the next C on a path)."""
    n, d = features.shape
    # held as [C, D]: the gradient is then grad.T @ features, which reads the features along their rows (3.4 times
    # faster on the CPU for 10,000 x 3,072 than features.T @ grad, the [D, C] layout's)
    weight = (start[0].T.clone(memory_format=torch.contiguous_format) if start else
              features.new_zeros(num_classes, d)).requires_grad_(True)
    bias = (start[1].clone() if start else features.new_zeros(num_classes)).requires_grad_(True)
    optimiser = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=tolerance, tolerance_change=1e-12, line_search_fn="strong_wolfe")
    penalty = 0.5 / (c * n)

    def objective() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(F.linear(features, weight, bias), labels) + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(objective)
    objective()
    converged = max(weight.grad.abs().max().item(), bias.grad.abs().max().item()) <= tolerance
    iterations = optimiser.state[optimiser.param_groups[0]["params"][0]].get("n_iter", 0)
    return weight.detach().T, bias.detach(), iterations, converged


def logistic_regression(train_features: torch.Tensor, train_labels: torch.Tensor, val_features: torch.Tensor,
                        val_labels: torch.Tensor, seed: int, holdout: float = 0.2,
                        grid: tuple[float, ...] = LOGREG_C, device: torch.device | str = "cpu",
                        patience: int | None = LOGREG_PATIENCE) -> tuple[dict, torch.Tensor]:
    """A converged linear probe for small data (CLIP's protocol): multinomial logistic regression with L-BFGS on the
    standardised frozen features. The regularisation ``C`` is chosen by top-1 on a stratified ``holdout`` share of
    the training features (drawn with ``seed``; the stronger regularisation wins a tie; the fits follow the path from
    strong to weak, each warm-started from the last, and stop once ``patience`` successive C score below the best so
    far, which spares the weakest, slowest fits; ``C_at_edge`` when the choice is an end of ``grid``), then the
    probe is refit on all of them and scored on ``val``: top-1 / top-5 (%) with 95 % intervals, and the predicted
    class per query (``[Q]``). The fits run on ``device`` (float32)."""
    num_classes = int(max(train_labels.max(), val_labels.max())) + 1
    x, y = train_features.to(device, torch.float32), train_labels.to(device, torch.long)

    def standardise(fit: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
        mean, std = fit.mean(0), fit.std(0).clamp_min(1e-6)
        return [(t - mean) / std for t in (fit, *others)]

    fit_idx, held_idx = (i.to(device) for i in stratified_holdout(y.cpu(), holdout, seed))
    fit_x, held_x = standardise(x[fit_idx], x[held_idx])
    held_top1, start, fits = {}, None, {}
    for c in sorted(grid):
        weight, bias, _, _ = fit_logistic_regression(fit_x, y[fit_idx], num_classes, c, start)
        start = fits[c] = (weight, bias)
        held_top1[c] = 100.0 * float(((held_x @ weight + bias).argmax(1) == y[held_idx]).float().mean())
        scores = list(held_top1.values())
        if patience and len(scores) > patience and max(scores[-patience:]) < max(scores[:-patience]):
            break
    best = max(held_top1, key=lambda c: (held_top1[c], -c))
    all_x, val_x = standardise(x, val_features.to(device, torch.float32))
    weight, bias, iterations, converged = fit_logistic_regression(all_x, y, num_classes, best, fits[best])
    logits = (val_x @ weight + bias).double().cpu()
    top1, top5 = ranked_correct(logits, val_labels, (1, 5))
    count = len(val_labels)
    accuracy = {"top1": 100.0 * top1.item() / count, "top5": 100.0 * top5.item() / count}
    results = {"C": best, "C_at_edge": best in (min(grid), max(grid)),
               "holdout_top1": {f"{c:g}": v for c, v in held_top1.items()}, "holdout_fraction": holdout,
               "iterations": iterations, "converged": converged, "num_train": len(y), "count": count,
               **with_intervals(accuracy, count)}
    return results, logits.argmax(1)


def ranked_correct(scores: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Like ``topk_correct``, but equal scores rank by class index (a stable sort, solo-learn's order): a k-NN top-5
    among classes with no votes then does not depend on ``topk``'s arbitrary order."""
    ranked = scores.sort(dim=1, descending=True, stable=True).indices
    return [(ranked[:, :k] == target[:, None]).any(dim=1).sum() for k in ks]


class KnnMonitor:
    """The k-NN classifier (``embed_splits`` then ``knn_scores``: 10 nearest neighbours, majority vote) as a monitor of
    a network while it trains, as solo-learn's and lightly's online k-NN: ``train_set`` is the labelled memory,
    ``val_set`` the queries, both with the evaluation crop. Every process calls it; rank 0 gets ``{"knn10_top1",
    "knn10_top5"}``, the others None. Like ``embed_splits`` it leaves the random generators as it found them: a run
    trains the same with or without it. ``keep``: rank 0 keeps the last point's features (``features``, for
    ``--final_evaluation``)."""

    def __init__(self, train_set: Dataset, val_set: Dataset, ctx: edist.Context, batch_size: int,
                 num_workers: int, keep: bool = False) -> None:
        self.train_set, self.val_set, self.ctx = train_set, val_set, ctx
        self.batch_size, self.num_workers, self.keep = batch_size, num_workers, keep
        self.features: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, backbone: nn.Module) -> dict[str, float] | None:
        was_training = backbone.training
        train_features, val_features = embed_splits(backbone, self.train_set, self.val_set, self.ctx,
                                                    self.batch_size, self.num_workers)
        backbone.train(was_training)
        if not self.ctx.is_main:
            return None
        self.features = (train_features, val_features) if self.keep else None
        results, _ = knn_scores(train_features, labels_of(self.train_set), val_features, labels_of(self.val_set),
                                len(self.train_set.classes), [(10, None)], self.ctx.device)
        return {"knn10_top1": results["k10_majority"]["top1"], "knn10_top5": results["k10_majority"]["top5"]}


def label_subset(samples: list[tuple[str, int]], root: str, fraction: float | None = None,
                 label_file: str | None = None, seed: int = 0) -> list[int]:
    """Indices of the labelled subset: from a file of image names (one a line, SimCLR's split format: a file name
    or a path relative to the split folder), or ``fraction`` of each class drawn with ``seed``."""
    if label_file:
        wanted = {line.strip() for line in Path(label_file).read_text().splitlines() if line.strip()}
        chosen = [i for i, (path, _) in enumerate(samples)
                  if os.path.basename(path) in wanted or os.path.relpath(path, root) in wanted]
        if len(chosen) != len(wanted):
            raise ValueError(f"{label_file} names {len(wanted)} images, {len(chosen)} of them found under {root}")
        return chosen
    if fraction is None or not 0 < fraction <= 1:
        raise ValueError("give a label file or a fraction in (0, 1]")
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, (_, target) in enumerate(samples):
        by_class[target].append(i)
    rng = np.random.default_rng(seed)
    chosen = []
    for target in sorted(by_class):
        members = by_class[target]
        take = max(1, round(fraction * len(members)))
        chosen += sorted(rng.choice(members, size=take, replace=False).tolist())
    return sorted(chosen)


def train_classifier_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                           ctx: edist.Context, epoch: int, report_freq: int) -> dict[str, float]:
    """One epoch of cross-entropy training; returns mean loss and top-1 (%) over this process's batches."""
    model.train()
    totals = torch.zeros(3, dtype=torch.float64, device=ctx.device)
    progress = Progress(len(loader.dataset), f"epoch {epoch}")
    for step, (images, targets, _) in enumerate(loader):
        images, targets = images.to(ctx.device, non_blocking=True), targets.to(ctx.device, non_blocking=True)
        logits = model(images)
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        (top1,) = topk_correct(logits.detach(), targets, (1,))
        totals += torch.stack([loss.detach().double() * targets.numel(), top1.double(),
                               torch.tensor(float(targets.numel()), device=ctx.device, dtype=torch.float64)])
        progress.update(targets.numel() * ctx.world_size)
        if ctx.is_main and (step + 1) % report_freq == 0:
            log(progress.line(f"loss {loss.item():.4f}"))
    if not torch.isfinite(totals[0]):
        raise FloatingPointError(f"the classifier loss became non-finite in epoch {epoch}; lower --init_lr")
    count = max(totals[2].item(), 1.0)
    return {"train_loss": totals[0].item() / count, "train_top1": 100.0 * totals[1].item() / count}
