"""Evaluation of a distilled student: linear probe (default), k-NN classifier, logistic regression, or
semi-supervised: fine-tuning on a label subset, or a linear layer on the frozen backbone trained on it.

    torchrun --nproc_per_node=8 main_lincls.py --arch=resnet18 --pretrained=runs/SR18-TR50/final.pth \
        --data_dir=/data/imagenet --output_dir=runs/SR18-TR50/lincls

Writes ``results.json`` (last and best epoch, top-1 and top-5) and ``epochs.csv`` into ``--output_dir``; the
frozen protocols (``--protocol=knn|logreg``, ``--with_knn``) write ``results.json`` and ``predictions.npz``, each
protocol's predicted class per test image (``utils.io.load_predictions``).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from absl import app, flags
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from datasets.device_views import held_splits
from datasets.folders import DatasetError, IndexedImageFolder, labelled_splits, open_split
from datasets.transforms import (
    eval_transform,
    linear_train_transform,
    transfer_eval_transform,
    transfer_train_transform,
)
from engine.checkpoints import read_probe, save_probe
from engine.cli import check_minimums, check_stem, refuse_inert_flags, run
from engine.evaluation import (
    Classifier,
    FrozenProtocols,
    assert_unchanged,
    backbone_fingerprint,
    embed_splits,
    evaluate,
    frozen_protocol_scores,
    label_subset,
    labels_of,
    recompute_bn_statistics,
    train_classifier_epoch,
)
from engine.options import LinclsOptions, from_flags
from models.backbones import BACKBONES, FLOORS, STEMS, build_backbone
from models.checkpoints import file_sha256, load_backbone, read_file
from utils import dist as edist
from utils.io import OutputFolderError, RunFolderLock, atomic_json, check_writable, resolve_resume, save_predictions
from utils.logs import log, process_seconds
from utils.metrics import with_intervals
from utils.schedule import learning_rate, set_lr

FLAGS = flags.FLAGS
# Official flags (haohang96/bingo main_lincls.py); defaults follow its ready scripts (cosine, 120 epochs).
flags.DEFINE_bool("evaluate", False, "Only score the probe saved in --resume (or <output_dir>/probe.pth).")
flags.DEFINE_string("output_dir", None, "Folder for results.json, epochs.csv and the probe checkpoint (required).")
flags.DEFINE_string("train_url", None, "Official name of --output_dir (accepted as an alias).")
flags.DEFINE_string("data_dir", None, "Dataset root with train/ and val/, or a CIFAR, STL-10 or MNIST-format "
                    "(Fashion-MNIST) release folder (val: its test set).")
flags.DEFINE_integer("seed", 0, "Seed for the probe initialisation, data order and label subsets.")
flags.DEFINE_float("init_lr", 30.0, "Learning rate for the global batch (EfficientNet default: 3).")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("wd", 0.0, "Weight decay.")
flags.DEFINE_integer("batch_size", 256, "Global batch, split evenly over the processes.")
flags.DEFINE_integer("num_workers", 8, "Data-loading workers per process.")
flags.DEFINE_integer("end_epoch", 120, "Epochs (100 by default with --decay_method=step, MoCo's protocol).")
flags.DEFINE_list("schedule", ["60", "80"], "Milestone epochs for --decay_method=step.")
flags.DEFINE_float("lr_decay", 0.1, "Factor at each milestone for --decay_method=step.")
flags.DEFINE_enum("decay_method", "cos", ["cos", "step"], "cos: official scripts; step: MoCo's protocol.")
flags.DEFINE_float("min_lr", 0.01, "Cosine floor (EfficientNet default: 0.001).")
flags.DEFINE_enum("arch", "resnet18", sorted(BACKBONES) + sorted(FLOORS),
                  "Network whose backbone is evaluated; pixels: the raw-input floor (the image, 32x32, flattened).")
flags.DEFINE_enum("pool_type", "avg", ["avg", "max"], "Global pooling before the linear layer.")
flags.DEFINE_string("resume", "", "Probe checkpoint to continue from, or 'auto' for <output_dir>/probe.pth.")
flags.DEFINE_integer("report_freq", 100, "Steps between progress lines.")
flags.DEFINE_integer("save_freq", 10, "Epochs between numbered probe checkpoints.")
# Additions.
flags.DEFINE_string("pretrained", None, "Checkpoint with the backbone: this project's, official BINGO, MoCo-v2, SwAV "
                    "or a plain torchvision state_dict.")
flags.DEFINE_bool("recompute_bn", False,
                  "Before scoring, replace every BatchNorm's running statistics by their averages over train/ (the "
                  "evaluation crop), as PreciseBN does; with --untrained: the floor of a random network that "
                  "normalises its activations as a trained one does (its own running statistics are the identity).")
flags.DEFINE_bool("untrained", False, "Score --arch as initialised (random weights drawn with --seed), with no "
                  "checkpoint: the floor a trained network must beat. --arch=pixels never takes a checkpoint.")
flags.DEFINE_float("logreg_holdout", FrozenProtocols.holdout,
                   "--protocol=logreg: share of train/ held out to choose the regularisation.")
flags.DEFINE_enum("protocol", "linear", ["linear", "knn", "semi", "semi_linear", "transfer", "logreg"],
                  "linear probe (SGD, the official protocol), k-NN classifier, semi-supervised fine-tuning of the "
                  "whole network, semi_linear: a linear layer on the frozen backbone trained on the label subset "
                  "(DisCo's main_lincls_semi.py, the protocol of its semi-supervised numbers), transfer: SEED's and "
                  "DisCo's linear transfer to CIFAR (a linear layer on the frozen backbone, the images upsampled to "
                  "224 px with bicubic interpolation; its release's optimiser and epochs unless given), or logreg: a "
                  "converged L-BFGS logistic regression on the frozen features (small data; the regularisation "
                  "chosen on --logreg_holdout of train/).")
flags.DEFINE_list("knn_k", [str(k) for k in FrozenProtocols.knn_k], "k values for --protocol=knn.")
flags.DEFINE_bool("with_knn", False, "With --protocol=linear, semi, semi_linear or logreg: score the backbone with "
                  "the k-NN classifier too, in the same start-up, into results.json's 'knn' (for semi: the fine-tuned "
                  "backbone; for logreg: on the same embedded features).")
flags.DEFINE_float("knn_t", FrozenProtocols.knn_t,
                   "Temperature of the weighted k-NN vote (the plain majority vote is also reported).")
flags.DEFINE_float("label_fraction", None, "--protocol=semi or semi_linear: fraction of each class's labels (e.g. "
                   "0.01, 0.1).")
flags.DEFINE_string("label_file", None, "--protocol=semi or semi_linear: file listing the labelled images (SimCLR "
                    "split format).")
flags.DEFINE_integer("image_size", 224, "Crop size.")
flags.DEFINE_enum("stem", "imagenet", list(STEMS), "The ResNet's stem: imagenet (the paper's) or small (3x3 stride-1 "
                  "convolution, no max-pool); a checkpoint of the other stem is refused, naming the flag.")
flags.DEFINE_bool("in_memory", False, "--protocol=knn or logreg: hold train/ and val/ on the device as two tensors, "
                  "decoded once (images of one size: Fashion-MNIST, CIFAR, STL-10), and make the evaluation crop "
                  "there a batch at a time (float resize, no 8-bit rounding: within 1/255 of PIL's crop).")
flags.DEFINE_enum("device", "auto", ["auto", "cuda", "cpu"], "Where to run (auto: CUDA when available).")
flags.mark_flags_as_required(["data_dir"])

CSV_FIELDS = ["epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5"]


def resolve_defaults(opts: LinclsOptions) -> LinclsOptions:
    """EfficientNet's official learning rates, MoCo's 100 epochs for step decay, and the CIFAR transfer protocol's
    settings (``TRANSFER_DEFAULTS``), unless given explicitly."""
    changes = {}
    if "efficientnet" in opts.arch:
        if "init_lr" not in opts.explicit:
            changes["init_lr"] = 3.0
        if "min_lr" not in opts.explicit:
            changes["min_lr"] = 0.001
    if opts.protocol == "transfer":
        changes.update({name: value for name, value in TRANSFER_DEFAULTS.items() if name not in opts.explicit})
    elif opts.decay_method == "step" and "end_epoch" not in opts.explicit:
        changes["end_epoch"] = 100
    return dataclasses.replace(opts, **changes)


_TRAINED = ("linear", "semi", "semi_linear", "transfer")
_SUBSET = ("semi", "semi_linear")  # trained on a label subset
_FROZEN = ("linear", "semi_linear", "transfer")  # the backbone never changes
# --protocol=transfer: DisCo-pytorch @1d732c8, DisCo/cifar_main_lincls.py (SEED's protocol, which DisCo follows): only
# fc trains (L181-184, L259-260) with BatchNorm in eval mode (L417), SGD momentum 0.9 (L68), weight decay 0 (L70), batch
# 256 (L59), a constant rate (no milestones: L66, L584-590); lr 3 and 200 epochs from Reproduction.md L141, L143.
TRANSFER_DEFAULTS = {"image_size": 224, "init_lr": 3.0, "end_epoch": 200, "decay_method": "step", "schedule": [],
                     "momentum": 0.9, "wd": 0.0, "batch_size": 256}
# Where each flag that does not act in every evaluation acts; given on the command line anywhere else it is refused:
# flag -> (where it acts, the test).
FLAG_SCOPE: dict[str, tuple[str, Callable[[LinclsOptions], bool]]] = {
    **{name: ("a trained probe (--protocol=linear, semi or semi_linear, without --evaluate)",
              lambda o: o.protocol in _TRAINED and not o.evaluate)
       for name in ("init_lr", "momentum", "wd", "end_epoch", "decay_method", "min_lr", "save_freq", "report_freq")},
    **{name: ("--decay_method=step", lambda o: o.protocol in _TRAINED and o.decay_method == "step")
       for name in ("schedule", "lr_decay")},
    "resume": ("a trained probe (--protocol=linear, semi or semi_linear): knn and logreg train nothing to resume",
               lambda o: o.protocol in _TRAINED),
    "evaluate": ("--protocol=linear, semi or semi_linear (a saved probe)", lambda o: o.protocol in _TRAINED),
    "logreg_holdout": ("--protocol=logreg", lambda o: o.protocol == "logreg"),
    "with_knn": ("--protocol=linear, semi or logreg (--protocol=knn is the k-NN classifier already)",
                 lambda o: o.protocol != "knn"),
    **{name: ("--protocol=knn or --with_knn", lambda o: o.protocol == "knn" or o.with_knn)
       for name in ("knn_k", "knn_t")},
    **{name: ("--protocol=semi or semi_linear", lambda o: o.protocol in _SUBSET)
       for name in ("label_fraction", "label_file")},
    "in_memory": ("--protocol=knn or logreg (the frozen features: a trained probe draws its augmentations per image)",
                  lambda o: o.protocol in ("knn", "logreg")),
}


def check_options(opts: LinclsOptions) -> None:
    """Flag values and combinations that cannot work, and flags given where they would do nothing (``FLAG_SCOPE``),
    refused before the network loads or a folder is made."""
    at_least = {"batch_size": 1, "image_size": 16, "num_workers": 0, "report_freq": 1, "save_freq": 0, "seed": 0}
    if opts.protocol in _TRAINED and not opts.evaluate:
        at_least["end_epoch"] = 1
    check_minimums(opts, at_least)
    refuse_inert_flags(opts, FLAG_SCOPE, f"this evaluation (--protocol={opts.protocol})")
    check_stem(opts.stem, {"arch": opts.arch})
    if opts.protocol == "logreg" and not 0 < opts.logreg_holdout < 1:
        raise app.UsageError(f"--logreg_holdout={opts.logreg_holdout}: must be in (0, 1)")
    if opts.protocol in ("logreg", "knn") and opts.evaluate:
        raise app.UsageError(f"--evaluate scores a saved probe; --protocol={opts.protocol} trains none: drop one")
    if opts.protocol == "knn" and any(not k.isdigit() or int(k) < 1 for k in opts.knn_k):
        raise app.UsageError(f"--knn_k={','.join(opts.knn_k)}: give positive integers, e.g. --knn_k=10,200")
    if opts.protocol in _SUBSET and not opts.evaluate:
        if not opts.label_file and opts.label_fraction is None:
            raise app.UsageError(f"--protocol={opts.protocol} needs --label_fraction (e.g. 0.01) or --label_file")
        if opts.label_fraction is not None and not 0 < opts.label_fraction <= 1:
            raise app.UsageError(f"--label_fraction={opts.label_fraction}: must be in (0, 1]")


def claim_output_dir(opts: LinclsOptions, output_dir: Path) -> RunFolderLock:
    """Own the output folder; a fresh evaluation may not replace another one's probe and results."""
    lock = RunFolderLock(check_writable(output_dir)).acquire()
    existing = [name for name in ("probe.pth", "results.json") if (output_dir / name).is_file()]
    if existing == ["results.json"]:  # finished, with no probe to continue: never replaced
        lock.release()
        raise OutputFolderError(f"{output_dir} already holds a finished evaluation (results.json) and no probe to "
                                "continue: choose another --output_dir")
    if not opts.resume and not opts.evaluate:
        if existing:
            lock.release()
            again = "pass --resume=auto to continue its probe, or " if "probe.pth" in existing else ""
            raise OutputFolderError(f"{output_dir} already holds an evaluation ({', '.join(existing)}): {again}"
                                    "choose another --output_dir")
    return lock


def build_evaluated(opts: LinclsOptions, announce: bool) -> tuple[torch.nn.Module, dict]:
    """The backbone to score and what results.json says about it: loaded strictly from --pretrained, or, for a
    floor (--untrained, --arch=pixels), built with no checkpoint."""
    floor = opts.untrained or opts.arch in FLOORS
    if floor and opts.pretrained:
        raise app.UsageError(f"--pretrained={opts.pretrained} and a floor (--untrained or --arch=pixels) exclude each "
                             "other: drop one")
    if not floor and not opts.pretrained:
        raise app.UsageError("--pretrained is required (or --untrained to score a randomly initialised network)")
    common = {"arch": opts.arch, "stem": opts.stem, "recomputed_bn": opts.recompute_bn, "flags": opts.as_dict()}
    if floor:
        backbone = build_backbone(opts.arch, opts.pool_type, opts.stem)
        what = "raw pixels" if opts.arch in FLOORS else f"randomly initialised (seed {opts.seed})"
        log(f"{opts.arch}: {what}, no checkpoint: a floor", announce)
        return backbone, {**common, "pretrained": None, "checkpoint_format": "untrained", "checkpoint_sha256": None}
    data, sha256 = read_file(opts.pretrained)  # one read: its hash and its load
    backbone, weights = load_backbone(opts.arch, opts.pretrained, opts.pool_type, data, opts.stem)
    log(f"{opts.arch} backbone from {opts.pretrained} (format: {weights.fmt}); every backbone weight loaded, the "
        "new linear classifier is the only part not from the checkpoint", announce)
    return backbone, {**common, "pretrained": str(opts.pretrained), "checkpoint_format": weights.fmt,
                      "checkpoint_sha256": sha256}


def evaluation_crop(opts: LinclsOptions):
    """The evaluation images' transform: the transfer protocol's bicubic resize to S, else Resize(S*256/224) and
    CenterCrop(S)."""
    return (transfer_eval_transform if opts.protocol == "transfer" else eval_transform)(opts.image_size)


def evaluation_splits(opts: LinclsOptions, ctx, held: dict | None = None
                      ) -> tuple[IndexedImageFolder, IndexedImageFolder]:
    """train/ and val/ with the evaluation crop (``evaluation_crop``), or with --in_memory held on the device, the
    crop made there; ``held``: splits an earlier evaluation of this process held, by folder and crop size (reused,
    and this one's added)."""
    if not opts.in_memory:
        crop = evaluation_crop(opts)
        return labelled_splits(opts.data_dir, crop, crop)
    if held is None:
        return held_splits(opts.data_dir, ctx.device, opts.image_size, opts.num_workers)
    key = (str(Path(opts.data_dir).resolve()), opts.image_size, str(ctx.device))
    if key not in held:
        held[key] = held_splits(opts.data_dir, ctx.device, opts.image_size, opts.num_workers)
    return held[key]


def check_classes(train_set: IndexedImageFolder) -> None:
    """Refuse a train/ of one class: any classifier scores 100 % on it, which says nothing."""
    if len(train_set.classes) < 2:
        names = ", ".join(train_set.classes)
        raise DatasetError(f"{train_set.root} has {len(train_set.classes)} class folder ({names}): a classifier "
                           "needs two classes or more to mean anything; give a labelled dataset")


def frozen_scores(opts: LinclsOptions, backbone, ctx, splits: tuple[IndexedImageFolder, IndexedImageFolder],
                  logreg: bool, knn: bool, seconds: dict[str, float], output_dir: Path) -> dict | None:
    """The protocols on frozen features of ``splits`` (train, val), embedded once: the logistic-regression probe
    and the k-NN classifier (k = 10 majority vote, and each --knn_k weighted). Rank 0 gets ``{"num_train",
    "num_val", "logreg"?, "knn"?, "seconds"}``, the other processes None; ``seconds``: where the time went, from
    ``seconds`` (what ran before) on. Rank 0 writes each protocol's prediction per query to
    ``output_dir/predictions.npz`` (``save_predictions``)."""
    started = time.perf_counter()
    train_set, val_set = splits
    per_process = opts.batch_size // ctx.world_size
    train_features, val_features = embed_splits(backbone.to(ctx.device), train_set, val_set, ctx, per_process,
                                                opts.num_workers)
    if not ctx.is_main:
        return None
    seconds["embed"] = time.perf_counter() - started
    protocols = FrozenProtocols(seed=opts.seed, holdout=opts.logreg_holdout if logreg else None, knn=knn,
                                knn_k=tuple(int(k) for k in opts.knn_k), knn_t=opts.knn_t)
    predictions: dict[str, torch.Tensor] = {}
    scores = frozen_protocol_scores(train_features, labels_of(train_set), val_features, labels_of(val_set),
                                    len(train_set.classes), protocols, ctx.device, seconds, predictions)
    save_predictions(output_dir / "predictions.npz", labels_of(val_set), predictions)
    return {"num_train": len(train_set), "num_val": len(val_set), **scores, "predictions": "predictions.npz",
            "seconds": seconds}


def make_loader(opts: LinclsOptions, train_set: IndexedImageFolder, ctx, per_process: int) -> DataLoader:
    """The training loader: every image of train/, or the labelled subset for --protocol=semi and semi_linear."""
    train_items = train_set
    if opts.protocol in _SUBSET:
        chosen = label_subset(train_set.samples, train_set.root, opts.label_fraction, opts.label_file, opts.seed)
        log(f"semi-supervised: {len(chosen)} of {len(train_set)} training images labelled", ctx.is_main)
        train_items = Subset(train_set, chosen)
    sampler = DistributedSampler(train_items, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=opts.seed)
    return DataLoader(train_items, batch_size=per_process, sampler=sampler, num_workers=opts.num_workers,
                      pin_memory=ctx.device.type == "cuda", persistent_workers=opts.num_workers > 0)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one process's epoch: its crops, flips and loader-worker seeds depend on (seed, epoch, rank) alone,
    so a resumed probe trains bit for bit as an uninterrupted one."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def main(argv: list[str]) -> None:
    del argv
    evaluate_backbone(resolve_defaults(from_flags(LinclsOptions, FLAGS)))


def evaluate_backbone(opts: LinclsOptions, held: dict | None = None, since: float | None = None) -> None:
    """The whole evaluation ``opts`` asks for: the backbone (or floor), then the frozen protocols, or a probe
    trained (and resumed) epoch by epoch, or a saved probe scored. For several evaluations in one process
    (``scripts.demo.evaluations``): ``held``, the splits held so far (``evaluation_splits``), and ``since``, when
    this evaluation began (``time.perf_counter()``; its start-up is counted from there, not from the process start)."""
    output_dir = opts.output_dir or opts.train_url
    if not output_dir:
        raise app.UsageError("--output_dir (or --train_url) is required")
    output_dir = Path(output_dir)
    check_options(opts)
    for split in ("train", "val"):  # before any folder is made
        open_split(opts.data_dir, split)
    ctx = edist.init(opts.device)
    if opts.batch_size % ctx.world_size:
        raise app.UsageError(f"--batch_size={opts.batch_size} is not divisible by {ctx.world_size} processes")
    per_process = opts.batch_size // ctx.world_size
    lock = claim_output_dir(opts, output_dir) if ctx.is_main else None  # released on exit
    torch.manual_seed(opts.seed)
    backbone, provenance = build_evaluated(opts, ctx.is_main)  # before any data is read
    frozen = opts.protocol in ("knn", "logreg")
    # to the data: the network built or loaded
    seconds = {"start-up": process_seconds() if since is None else time.perf_counter() - since}
    started = time.perf_counter()
    splits = evaluation_splits(opts, ctx, held) if frozen else None
    if frozen:
        check_classes(splits[0])
    if opts.recompute_bn:
        backbone.to(ctx.device)
        train_crops = splits[0] if frozen else IndexedImageFolder(open_split(opts.data_dir, "train"),
                                                                  eval_transform(opts.image_size))
        count = recompute_bn_statistics(backbone, train_crops, ctx, per_process, opts.num_workers)
        log(f"BatchNorm running statistics of {count} layers re-estimated on {len(train_crops)} training images",
            ctx.is_main)
    seconds["data"] = time.perf_counter() - started  # the splits read (and held), BatchNorm re-estimated
    if frozen:
        scores = frozen_scores(opts, backbone, ctx, splits, logreg=opts.protocol == "logreg",
                               knn=opts.protocol == "knn" or opts.with_knn, seconds=seconds, output_dir=output_dir)
        if ctx.is_main:
            atomic_json({"protocol": opts.protocol, **provenance, **scores}, output_dir / "results.json")
    else:
        probe(opts, ctx, backbone, provenance, output_dir, per_process)
    if lock is not None:
        lock.release()
    edist.shutdown()


def probe(opts: LinclsOptions, ctx, backbone, provenance: dict, output_dir: Path, per_process: int) -> None:
    """--protocol=linear, semi_linear or semi: a linear layer on the backbone (frozen, or fine-tuned with it),
    resumed from ``probe.pth`` when asked; with --evaluate the saved probe is only scored."""
    train = (transfer_train_transform if opts.protocol == "transfer" else linear_train_transform)(opts.image_size)
    train_set, val_set = labelled_splits(opts.data_dir, train, evaluation_crop(opts))
    check_classes(train_set)
    log(f"train/: {train_set.describe()}; val/: {val_set.describe()}", ctx.is_main)
    model = Classifier(backbone, len(train_set.classes), frozen=opts.protocol in _FROZEN).to(ctx.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=opts.init_lr, momentum=opts.momentum, weight_decay=opts.wd)
    network = model
    if ctx.distributed:
        network = DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)

    start_epoch, best, history = 0, None, []
    resume = resolve_resume(opts.resume or ("auto" if opts.evaluate else ""), output_dir, "probe.pth")
    if resume is not None:
        frozen_from = (opts.pretrained or f"--untrained --seed={opts.seed}") if opts.protocol in _FROZEN else None
        saved = read_probe(resume, model, opts.protocol, frozen_from)
        optimizer.load_state_dict(saved["optimizer"])
        start_epoch, best, history = saved["epoch"], saved["best"], saved["history"]
        if opts.protocol == "semi":  # the fine-tuned network in the probe file is what is scored from here on
            provenance |= {"fine_tuned_in": str(resume), "fine_tuned_sha256": file_sha256(resume)}
        log(f"resumed from {resume} at epoch {start_epoch}", ctx.is_main)
    elif opts.evaluate:
        raise app.UsageError(f"--evaluate needs a probe: --resume=PATH or {output_dir / 'probe.pth'}")

    if opts.evaluate:
        scores = evaluate(network, val_set, ctx, per_process, opts.num_workers)
        if ctx.is_main:
            atomic_json({"protocol": opts.protocol, **provenance, "evaluated": str(resume), "val": scores},
                        output_dir / "results.json")
            log(f"val top-1 {scores['top1']:.2f}  top-5 {scores['top5']:.2f} on {scores['count']} images")
        return
    train_probe(opts, ctx, model, network, optimizer, (train_set, val_set), (start_epoch, best, history),
                provenance, output_dir, per_process)


def train_probe(opts: LinclsOptions, ctx, model, network, optimizer, splits, progress, provenance: dict,
                output_dir: Path, per_process: int) -> None:
    """The probe's epochs from ``progress`` = (start epoch, best row, history), each saved; then --with_knn."""
    train_set, val_set = splits
    start_epoch, best, history = progress
    reference = backbone_fingerprint(model.backbone) if opts.protocol in _FROZEN else None
    loader = make_loader(opts, train_set, ctx, per_process)
    for epoch in range(start_epoch, opts.end_epoch):
        torch.manual_seed(epoch_seed(opts.seed, epoch, ctx.rank))
        loader.sampler.set_epoch(epoch)
        lr = learning_rate(epoch, opts.init_lr, opts.end_epoch, opts.decay_method,
                           [int(m) for m in opts.schedule], opts.lr_decay, opts.min_lr)
        set_lr(optimizer, lr)
        t0 = time.perf_counter()
        train = train_classifier_epoch(network, loader, optimizer, ctx, epoch, opts.report_freq)
        if reference is not None:
            assert_unchanged(model.backbone, reference)
        val = evaluate(network, val_set, ctx, per_process, opts.num_workers)
        row = {"epoch": epoch, "lr": lr, **train, "val_loss": val["loss"], "val_top1": val["top1"],
               "val_top5": val["top5"]}
        history.append(row)
        if best is None or val["top1"] > best["val_top1"]:
            best = row
        if ctx.is_main:
            log(f"epoch {epoch}/{opts.end_epoch}: val top-1 {val['top1']:.2f} top-5 {val['top5']:.2f} "
                f"(best {best['val_top1']:.2f} at epoch {best['epoch']}), {time.perf_counter() - t0:.1f} s")
            save_outputs(opts, model, optimizer, epoch, best, history, provenance, output_dir, len(val_set))
        edist.barrier()
    if opts.with_knn:  # the backbone as trained (semi) or as given (linear: frozen, checked above)
        knn = frozen_scores(opts, model.backbone, ctx, evaluation_splits(opts, ctx), logreg=False, knn=True,
                            seconds={}, output_dir=output_dir)
        if ctx.is_main:
            results = json.loads((output_dir / "results.json").read_text())
            atomic_json({**results, "knn": knn["knn"]}, output_dir / "results.json")


def save_outputs(opts: LinclsOptions, model, optimizer, epoch, best, history, provenance, output_dir: Path,
                 num_val: int) -> None:
    """The probe checkpoint, epochs.csv and results.json after ``epoch``."""
    save_probe(model, optimizer, epoch + 1, best, history, output_dir, opts.save_freq, opts.protocol)
    with open(output_dir / "epochs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    last = history[-1]
    def summary(row: dict) -> dict:
        return with_intervals({"epoch": row["epoch"], "top1": row["val_top1"], "top5": row["val_top5"]}, num_val)

    atomic_json({"protocol": opts.protocol, **provenance, "num_val": num_val, "epochs_done": epoch + 1,
                 "last": summary(last), "best": summary(best)}, output_dir / "results.json")


if __name__ == "__main__":
    run(main)
