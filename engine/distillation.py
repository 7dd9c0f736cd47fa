"""One distillation run, from its options to ``final.pth``: ``Distillation(options).run()``.

It checks the options and the folders before anything loads, claims the run folder, reads a checkpoint to resume
(checked against this run's data, networks and method before the teacher loads), builds the teacher once, the bag
dataset with its neighbours, the k-NN monitor and the method's step, then trains epoch by epoch, each ending with
its metrics and ``checkpoint.pth``, and writes the final outputs. A stop signal ends it between two steps.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import secrets
import time
from pathlib import Path
from typing import Callable

import torch
from absl import app
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from datasets.device_views import (
    DeviceViews,
    EncodedBagDataset,
    HeldBagDataset,
    IndexBatches,
    collate_encoded,
    held_splits,
)
from datasets.folders import BagDataset, DatasetError, file_list_sha256, labelled_splits, open_split
from datasets.neighbours import bagging_kind, neighbour_path, read_neighbours
from datasets.transforms import eval_transform, pretrain_augmentation, pretrain_spec
from engine.checkpoints import (
    CHANGEABLE,
    check_resumable,
    checkpoint_payload,
    load_checkpoint,
    objective_changes,
    save_checkpoint,
    save_final,
)
from engine.cli import check_minimums, check_stem, refuse_inert_flags
from engine.evaluation import FrozenProtocols, KnnMonitor, frozen_protocol_scores, labels_of
from engine.options import DistillOptions
from engine.training import RunState, check_teacher_unchanged, make_train_loader, train_epoch
from models.backbones import build_backbone
from models.checkpoints import load_backbone, load_teacher, read_file, torch_load
from models.distiller import DistillConfig, Distiller, Embedder, unwrap
from models.heads import compress_head, student_head
from models.methods import build_method
from utils import dist as edist
from utils.io import (
    OutputFolderError,
    RunFolderLock,
    atomic_json,
    check_writable,
    file_sha256,
    resolve_resume,
    save_predictions,
)
from utils.logs import MetricsLog, log, process_seconds, prune_metrics
from utils.schedule import learning_rate, set_lr
from utils.signals import Preempted, StopRequests

__all__ = ["Distillation", "METHOD_DEFAULTS", "resolve_method_defaults", "check_options", "distill_config"]

# What each method's release runs where it differs from the official BINGO flags' defaults (their files: README).
METHOD_DEFAULTS = {
    "bingo": {"teacher_mode": "train"},
    "seed": {"teacher_mode": "eval"},
    "disco": {"teacher_mode": "train"},
    "compress": {"teacher_mode": "eval", "augmentation": "crop_flip", "moco_k": 128000, "moco_t": 0.04,
                 "init_lr": 0.01, "end_epoch": 130, "decay_method": "step", "schedule": ["90", "120"],
                 "lr_decay": 0.2},
    "moco": {"teacher_mode": "train"},  # its momentum encoder uses shuffled batch statistics
}


def _official_bags(o: DistillOptions) -> bool:
    return o.method == "bingo" and o.loss == "official"


# Where each flag that does not act in every run acts. A flag given on the command line (``opts.explicit``) in a run
# where it does nothing is refused by ``check_options``, before anything loads: flag -> (where it acts, the test).
FLAG_SCOPE: dict[str, tuple[str, Callable[[DistillOptions], bool]]] = {
    **{name: ("a run with a teacher (not --method=moco, whose keys come from its own momentum copy)",
              lambda o: o.uses_teacher) for name in ("t_arch", "pretrain_path", "pretrain_alg", "teacher_mode")},
    "fuse_teacher": ("--method=bingo --loss=official (the one step whose teacher embeds two views through the same "
                     "path: SEED's and CompRess's embed one, DisCo's release calls its teacher per view)",
                     _official_bags),
    "moco_m": ("a run with a momentum copy of the student (--method=moco, disco, or compress with two banks; "
               "BINGO's and SEED's teacher is frozen, and the official BINGO flag was unused)",
               lambda o: o.method in ("moco", "disco") or (o.method == "compress" and not o.compress_one_bank)),
    **{name: ("a run with a projection head (not --method=compress, whose head is set by the two networks' widths)",
              lambda o: o.method != "compress") for name in ("mlp", "moco_dim")},
    "head_hidden": ("an MLP head (--mlp; not --method=compress)", lambda o: o.method != "compress" and o.mlp),
    **{name: ("--method=bingo (the bags)", lambda o: o.method == "bingo")
       for name in ("loss", "corr_npy", "clus_pos_num", "check_corr_json")},
    **{name: ("--method=bingo --loss=official", _official_bags)
       for name in ("anchor_term", "neighbour_term", "mix_term", "cross_keys")},
    **{name: ("--method=bingo --loss=official with the cross-bag keys (not --nocross_keys)",
              lambda o: _official_bags(o) and o.cross_keys) for name in ("lam", "bag_warmup_epochs")},
    "seed_teacher_t": ("--method=seed", lambda o: o.method == "seed"),
    "disco_mse_weight": ("--method=disco", lambda o: o.method == "disco"),
    "compress_one_bank": ("--method=compress", lambda o: o.method == "compress"),
    **{name: ("--decay_method=step", lambda o: o.decay_method == "step") for name in ("schedule", "lr_decay")},
    "compile_mode": ("--compile", lambda o: o.compile),
    "compile_views": ("--device_views (the views made on the training device)", lambda o: o.device_views),
    **{name: ("--knn_monitor_freq above 0", lambda o: o.knn_monitor_freq > 0)
       for name in ("knn_monitor_data", "final_evaluation")},
    "resume_change": ("a resumed run (--resume)", lambda o: bool(o.resume)),
}


def resolve_method_defaults(opts: DistillOptions) -> DistillOptions:
    """``opts`` with every option the user did not give set to its method's release value (``METHOD_DEFAULTS``);
    ``--aug_plus``, given explicitly, chooses the views as in the official code."""
    chosen = {}
    if "aug_plus" in opts.explicit:
        chosen["augmentation"] = "mocov2" if opts.aug_plus else "mocov1"
        if "augmentation" in opts.explicit and opts.augmentation != chosen["augmentation"]:
            raise app.UsageError(f"--augmentation={opts.augmentation} and --{'' if opts.aug_plus else 'no'}aug_plus "
                                 "contradict each other: give one")
    changes = {name: chosen.get(name, value) for name, value in
               {"augmentation": "mocov2", **METHOD_DEFAULTS[opts.method]}.items() if name not in opts.explicit}
    return dataclasses.replace(opts, **changes)


def check_values(opts: DistillOptions) -> None:
    """One-line usage errors for values that make no sense: a negative seed, a NaN or out-of-range rate, weight or
    temperature, negative bag weights, a warm-up before epoch 0."""
    if opts.seed is not None and opts.seed < 0:
        raise app.UsageError(f"--seed={opts.seed}: give a seed of 0 or more (or none: one is drawn and recorded)")
    ranges = {"moco_t": (0, False), "seed_teacher_t": (0, False), "init_lr": (0, True), "momentum": (0, True),
              "wd": (0, True), "disco_mse_weight": (0, True), "lr_decay": (0, False)}
    for name, (low, inclusive) in ranges.items():
        value = getattr(opts, name)
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise app.UsageError(f"--{name}={value}: must be a finite number {'at least' if inclusive else 'above'} "
                                 f"{low}")
    if not 0 <= opts.moco_m <= 1:  # NaN fails too
        raise app.UsageError(f"--moco_m={opts.moco_m}: the momentum must lie in [0, 1]")
    try:
        lam = [float(x) for x in opts.lam]
    except ValueError:
        raise app.UsageError(f"--lam={','.join(opts.lam)}: give two numbers, e.g. --lam=0.5,0.5") from None
    if len(lam) != 2 or not all(math.isfinite(x) and x >= 0 for x in lam) or sum(lam) == 0:
        raise app.UsageError(f"--lam={','.join(opts.lam)}: give two weights of 0 or more, not both 0 (own key, other "
                             "bag member's key), e.g. --lam=0.5,0.5")
    if opts.bag_warmup_epochs < -1:
        raise app.UsageError(f"--bag_warmup_epochs={opts.bag_warmup_epochs}: epochs 0..N are the warm-up; give 0 or "
                             "more, or -1 for none")


def check_options(opts: DistillOptions, world_size: int) -> int:
    """Option values and combinations that cannot work, refused before anything is loaded; returns the per-process
    batch."""
    at_least = {"batch_size": 1, "image_size": 16, "end_epoch": 1, "moco_k": 1, "moco_dim": 1, "head_hidden": 1,
                "report_freq": 1, "num_workers": 0, "save_freq": 0, "subgroup": 1}
    if opts.method == "bingo":
        at_least["clus_pos_num"] = 1
    check_minimums(opts, at_least)
    refuse_inert_flags(opts, FLAG_SCOPE, f"this run (--method={opts.method})")
    check_values(opts)
    check_stem(opts.stem, {"s_arch": opts.s_arch, **({"t_arch": opts.t_arch} if opts.uses_teacher else {})})
    if opts.in_memory and not opts.device_views:
        raise app.UsageError("--in_memory needs --device_views (the batched views take the decoded pixels)")
    if opts.knn_monitor_freq < 0:
        raise app.UsageError(f"--knn_monitor_freq={opts.knn_monitor_freq}: give a number of epochs, or 0 for off")
    if opts.batch_size % world_size:
        raise app.UsageError(f"--batch_size={opts.batch_size} (global) is not divisible by {world_size} processes")
    if opts.method == "compress" and opts.moco_k < opts.batch_size:
        raise app.UsageError(f"--moco_k={opts.moco_k} (the memory banks) must hold one global --batch_size="
                             f"{opts.batch_size}")
    if opts.method != "compress" and opts.moco_k % opts.batch_size:
        raise app.UsageError(f"--moco_k={opts.moco_k} must be a multiple of the global --batch_size={opts.batch_size}")
    if not opts.official_terms:
        raise app.UsageError("--noanchor_term --noneighbour_term --nomix_term leave no loss term: keep one")
    unknown = [name for name in opts.resume_change if name not in CHANGEABLE]
    if unknown:
        raise app.UsageError(f"--resume_change={unknown[0]}: not a setting a resume can change (those are: "
                             f"{', '.join(CHANGEABLE)}; --end_epoch always can)")
    return opts.batch_size // world_size


def monitor_data(opts: DistillOptions) -> tuple[str, str]:
    """The k-NN monitor's dataset root and the flag that gave it."""
    if opts.knn_monitor_data:
        return opts.knn_monitor_data, "--knn_monitor_data"
    return opts.data_dir, "--data_dir (the k-NN monitor's default --knn_monitor_data)"


def check_data_folders(opts: DistillOptions) -> None:
    """The folders the run reads, checked before its output folder is made."""
    open_split(opts.data_dir, "train")
    if opts.knn_monitor_freq > 0:
        root, flag = monitor_data(opts)
        for split in ("train", "val"):
            open_split(root, split, flag)


def distill_config(opts: DistillOptions) -> DistillConfig:
    """The method's step settings, from the options of the same meaning."""
    return DistillConfig(
        method=opts.method, loss=opts.loss, dim=opts.moco_dim, queue_size=opts.moco_k, t=opts.moco_t,
        moco_m=opts.moco_m, lam=tuple(float(x) for x in opts.lam), warmup_epochs=opts.bag_warmup_epochs,
        official_terms=opts.official_terms, cross_keys=opts.cross_keys, seed_teacher_t=opts.seed_teacher_t,
        disco_mse_weight=opts.disco_mse_weight, compress_one_bank=opts.compress_one_bank,
        teacher_mode=opts.teacher_mode, fuse_teacher=opts.fuse_teacher, subgroup=opts.subgroup, amp=opts.amp)


def load_teacher_network(opts: DistillOptions, data: bytes, announce: bool) -> Embedder:
    """The frozen teacher (CompRess: its pooled backbone, no head) from its file's ``data``."""
    if opts.method == "compress":  # CompRess distils the pooled backbone features: no head
        backbone, weights = load_backbone(opts.t_arch, opts.pretrain_path, data=data, stem=opts.stem)
        head = torch.nn.Identity()
    else:
        backbone, head, weights = load_teacher(opts.t_arch, opts.pretrain_path, data, opts.stem)
    family = "swav" if weights.fmt == "swav" else "moco"
    if weights.fmt in ("swav", "moco", "bingo") and family != opts.pretrain_alg:
        raise app.UsageError(f"--pretrain_alg={opts.pretrain_alg}, but {opts.pretrain_path} is a {weights.fmt} "
                             f"checkpoint: pass --pretrain_alg={family}")
    what = "backbone" if opts.method == "compress" else "+ head"
    log(f"teacher {opts.t_arch} {what} from {opts.pretrain_path} (format: {weights.fmt})", announce)
    return Embedder(backbone, head)


def build_dataset(opts: DistillOptions, seed: int, device: torch.device, check_images: Callable[[BagDataset], None]
                  ) -> tuple[BagDataset, Callable | None, Callable | None]:
    """The bag dataset with its neighbours (BINGO) or view pairs, and with --device_views the batch -> views step
    and its collate (none for --in_memory: its loader hands over index tensors, ``make_loader``). ``check_images``
    sees the scanned folder first (before a neighbour file is read)."""
    root = open_split(opts.data_dir, "train")
    neighbours = None
    if opts.method == "bingo":  # the file is checked against the folder's images as the dataset is made

        def neighbours(images):
            check_images(images)
            return read_neighbours(neighbour_path(opts.corr_npy), images, opts.clus_pos_num, opts.check_corr_json,
                                   report=log)
    if not opts.device_views:
        transform = pretrain_augmentation(opts.image_size, opts.augmentation)
        return BagDataset(root, transform, neighbours, seed=seed), None, None
    spec = pretrain_spec(opts.augmentation)
    views = DeviceViews(opts.image_size, spec, device, opts.channels_last, seed, compile=opts.compile_views)
    if opts.in_memory:
        dataset = HeldBagDataset(root, neighbours, device, seed=seed, workers=opts.num_workers)
        return dataset, functools.partial(views.held_views, dataset), None
    return EncodedBagDataset(root, neighbours, seed=seed), views.train_views, collate_encoded


def make_loader(opts: DistillOptions, dataset: BagDataset, ctx: edist.Context, batch_per_process: int, seed: int,
                collate_fn: Callable | None) -> DataLoader | IndexBatches:
    """The training loader: index tensors for images held on the device (--in_memory), else a ``DataLoader``."""
    if opts.in_memory:
        return IndexBatches(len(dataset), ctx.world_size, ctx.rank, batch_per_process, seed)
    return make_train_loader(dataset, ctx, batch_per_process, opts.num_workers, seed, collate_fn)


def build_distiller(opts: DistillOptions, teacher: Embedder | None, ctx: edist.Context, seed: int
                    ) -> tuple[Distiller, torch.optim.Optimizer]:
    """Student + teacher + queue on the device (DDP around the student when distributed), and the optimizer. The
    student's initial weights depend on ``seed`` alone, so every method starts from the same network under a seed
    (building a teacher first draws from the generator too)."""
    torch.manual_seed(seed)
    backbone = build_backbone(opts.s_arch, stem=opts.stem)
    if opts.method == "compress":
        head = compress_head(backbone.feature_dim, teacher.backbone.feature_dim, opts.compress_one_bank)
    else:
        head = student_head(backbone.feature_dim, opts.moco_dim, opts.mlp, opts.head_hidden)
    distiller = build_method(Embedder(backbone, head), teacher, distill_config(opts)).to(ctx.device)
    distiller = distiller.to(memory_format=torch.channels_last if opts.channels_last else torch.contiguous_format)
    if opts.compile:
        distiller.compile_networks(opts.compile_mode)
    if ctx.distributed:
        distiller.student = DistributedDataParallel(
            distiller.student, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    optimizer = torch.optim.SGD(unwrap(distiller.student).parameters(), lr=opts.init_lr, momentum=opts.momentum,
                                weight_decay=opts.wd, fused=opts.fused_optimizer or None)
    return distiller, optimizer


def build_monitor(opts: DistillOptions, ctx: edist.Context, batch_per_process: int,
                  training: BagDataset | None = None) -> KnnMonitor | None:
    """The k-NN monitor on --knn_monitor_data (default --data_dir), or None when --knn_monitor_freq is 0. With
    --in_memory its memory reuses ``training``'s held images when it reads the same ones (the default)."""
    if opts.knn_monitor_freq <= 0:
        return None
    root, flag = monitor_data(opts)
    if opts.in_memory:  # held on the device beside the training images, the crops made there
        memory, queries = held_splits(root, ctx.device, opts.image_size, opts.num_workers, flag, share=training)
    else:
        transform = eval_transform(opts.image_size)
        memory, queries = labelled_splits(root, transform, transform, flag)
    return KnnMonitor(memory, queries, ctx, batch_per_process, opts.num_workers, keep=opts.final_evaluation)


class Distillation:
    """One run: ``Distillation(options).run()``. Its parts, in the order ``run`` builds them, are attributes."""

    def __init__(self, opts: DistillOptions) -> None:
        output_dir = opts.output_dir or opts.train_url
        if not output_dir or not opts.data_dir:
            raise app.UsageError("--output_dir (or --train_url) and --data_dir are required")
        self.opts = resolve_method_defaults(opts)
        self.output_dir = Path(output_dir)
        self.lock: RunFolderLock | None = None

    def run(self) -> None:
        opts = self.opts
        self.ctx = ctx = edist.init(opts.device)
        self.per_process = check_options(opts, ctx.world_size)
        check_data_folders(opts)
        self.seed = opts.seed if opts.seed is not None else edist.broadcast_object(secrets.randbelow(2**31))
        resume_path = resolve_resume(opts.resume, self.output_dir)
        if ctx.is_main:
            self.lock = self.claim_output_dir(resume_path)
        teacher_file, teacher_sha256 = read_file(opts.pretrain_path) if opts.uses_teacher else (None, None)
        self.meta = self.run_meta(teacher_sha256)
        resumed = self.read_resume(resume_path)  # checked against this run before the teacher loads
        torch.manual_seed(self.seed)
        # a wrong teacher stops here, before any data is read
        teacher = load_teacher_network(opts, teacher_file, ctx.is_main) if teacher_file is not None else None
        del teacher_file
        def check_images(images: BagDataset) -> None:  # this run's images, and a resumed run's, are the same
            if "num_images" in self.meta:  # checked already, before the neighbour file was read
                return
            self.meta.update(num_images=len(images.samples), file_list_sha256=file_list_sha256(images))
            if resumed is not None:
                check_resumable(resumed, str(resume_path), self.meta, ("num_images", "file_list_sha256"))

        self.dataset, self.prepare, collate_fn = build_dataset(opts, self.seed, ctx.device, check_images)
        check_images(self.dataset)
        if len(self.dataset) < opts.batch_size:
            raise DatasetError(f"{self.dataset.root} has {len(self.dataset)} images, fewer than one global batch "
                               f"({opts.batch_size})")
        self.monitor = build_monitor(opts, ctx, self.per_process, self.dataset)
        # the teacher's parameters as loaded, compared with the running teacher's after every epoch
        self.teacher_reference = (None if teacher is None else
                                  {k: v.detach().clone() for k, v in teacher.named_parameters()})
        self.distiller, self.optimizer = build_distiller(opts, teacher, ctx, self.seed)
        start_epoch = 0
        if resumed is not None:
            start_epoch = load_checkpoint(resumed, str(resume_path), self.distiller, self.optimizer)
            log(f"resumed from {resume_path} at epoch {start_epoch}", ctx.is_main)
        if ctx.is_main:
            atomic_json(self.meta["flags"] | {"seed": self.seed, "world_size": ctx.world_size,
                                              "resume_changes": self.meta["changes"]},
                        self.output_dir / "flags.json")
            prune_metrics(self.output_dir / "metrics.jsonl", start_epoch)
        self.loader = make_loader(opts, self.dataset, ctx, self.per_process, self.seed, collate_fn)
        todo = (f"epochs {start_epoch}..{opts.end_epoch - 1}" if start_epoch < opts.end_epoch else
                f"no epoch left to train (--end_epoch={opts.end_epoch}): writing the final outputs")
        log(f"{opts.method}: {opts.s_arch} student, {self.dataset.describe()}; {len(self.loader)} steps/epoch of "
            f"{opts.batch_size} on {ctx.world_size} process(es), {todo}", ctx.is_main)
        self.train(start_epoch)
        self.finish()

    def claim_output_dir(self, resume_path: Path | None) -> RunFolderLock:
        """Own the run folder for this run; a fresh run may not overwrite another run's checkpoints."""
        check_writable(self.output_dir)
        lock = RunFolderLock(self.output_dir).acquire()
        if resume_path is None and (self.output_dir / "checkpoint.pth").is_file():
            lock.release()
            raise OutputFolderError(f"{self.output_dir} already holds a run (checkpoint.pth): pass --resume=auto to "
                                    "continue it, or choose another --output_dir")
        return lock

    def run_meta(self, teacher_sha256: str | None) -> dict:
        """What a checkpoint records about its run; ``check_resumable`` and ``objective_changes`` compare it on
        --resume. BINGO's neighbour file is named by its bytes (sha256) and kind of bag (its .json's)."""
        opts = self.opts
        meta = {"s_arch": opts.s_arch, "arch": opts.s_arch, "stem": opts.stem, "method": opts.method,
                "moco_dim": opts.moco_dim,
                "moco_k": opts.moco_k, "head_hidden": opts.head_hidden if opts.mlp and opts.method != "compress"
                else None, "seed": self.seed, "t_arch": opts.t_arch if opts.uses_teacher else None,
                "teacher_sha256": teacher_sha256, "flags": opts.as_dict(), "changes": []}
        path = neighbour_path(opts.corr_npy)
        if opts.method == "bingo" and path.is_file():  # a missing file is refused when the dataset reads it
            meta.update(neighbours_sha256=file_sha256(path), bagging=bagging_kind(path))
        return meta

    def read_resume(self, resume_path: Path | None) -> dict | None:
        """The checkpoint to resume from, checked against this run's options; its seed becomes the run's."""
        if resume_path is None:
            return None
        resumed = torch_load(resume_path)
        check_resumable(resumed, str(resume_path), self.meta)
        changes = objective_changes(resumed, str(resume_path), self.meta, set(self.opts.resume_change))
        done = int(resumed["epoch"])
        if done > self.opts.end_epoch:
            raise app.UsageError(f"--end_epoch={self.opts.end_epoch}, but {resume_path} has already trained {done} "
                                 f"epochs: give --end_epoch={done} or more")
        self.seed = self.meta["seed"] = int(resumed["bingo"]["seed"])
        self.meta["changes"] = [*resumed["bingo"].get("changes", []), *({"epoch": done, **c} for c in changes)]
        for change in changes:
            log(f"resumed with {change['setting']} changed from epoch {done}: {change['from']} -> {change['to']}",
                self.ctx.is_main)
        return resumed

    def train(self, start_epoch: int) -> None:
        """Epochs ``start_epoch .. --end_epoch - 1``, stopped between steps by a stop signal (the last epoch's
        checkpoint kept, and how to continue said)."""
        opts, ctx = self.opts, self.ctx
        self.metrics = MetricsLog(self.output_dir, enabled=ctx.is_main)
        steps = len(self.loader) * (opts.end_epoch - start_epoch)
        self.state = state = RunState(epoch=start_epoch, end_epoch=opts.end_epoch, report_freq=opts.report_freq,
                                      metrics=self.metrics, total_steps=steps, epochs_saved=start_epoch)
        # where a run's time goes: start-up (imports, teacher, decoding, building) here, then each epoch's steps
        # (train_s) and each k-NN monitor point (seconds)
        self.metrics.write({"kind": "setup", "epoch": start_epoch, "seconds": process_seconds()})
        try:
            with StopRequests() as state.stop:
                if start_epoch == 0:
                    self.monitor_knn(0)
                for epoch in range(start_epoch, opts.end_epoch):
                    self.train_one_epoch(epoch)
        except Preempted as stopped:
            last = self.output_dir / "checkpoint.pth"
            done = f"{last} holds {state.epochs_saved} finished epochs" if last.is_file() else "no epoch was finished"
            raise Preempted(stopped.signum, f"{stopped}; {done}. Continue with the same command and --resume=auto") \
                from None

    def train_one_epoch(self, epoch: int) -> None:
        """One epoch, its teacher check, monitor point, metrics and ``checkpoint.pth``."""
        opts, ctx, state, distiller = self.opts, self.ctx, self.state, self.distiller
        state.epoch = epoch
        self.loader.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        distiller.set_epoch(self.seed, epoch, ctx.rank)
        lr = learning_rate(epoch, opts.init_lr, opts.end_epoch, opts.decay_method, [int(m) for m in opts.schedule],
                           opts.lr_decay)
        set_lr(self.optimizer, lr)
        means = train_epoch(distiller, self.loader, self.optimizer, ctx, state, opts.channels_last, self.prepare)
        if self.teacher_reference is not None:
            check_teacher_unchanged(distiller.teacher, self.teacher_reference)
        self.monitor_knn(epoch + 1)
        if ctx.is_main:
            state.metrics.write({"kind": "epoch", "epoch": epoch, "lr": lr, **means}, step=epoch)
            save_checkpoint(checkpoint_payload(distiller, self.optimizer, epoch + 1, self.meta), self.output_dir,
                            epoch + 1, opts.save_freq)
        state.epochs_saved = epoch + 1
        edist.barrier()
        state.stop.check(f"after epoch {epoch}")

    def monitor_knn(self, epochs_done: int) -> None:
        """Score the trained backbone after ``epochs_done`` epochs when the monitor is on and the epoch is due."""
        opts = self.opts
        if self.monitor is None:
            return
        if epochs_done not in (0, opts.end_epoch) and epochs_done % opts.knn_monitor_freq:
            return
        started = time.perf_counter()
        scores = self.monitor(unwrap(self.distiller.student).backbone)
        if self.ctx.is_main:
            seconds = time.perf_counter() - started
            log(f"k-NN monitor after {epochs_done} epochs: top-1 {scores['knn10_top1']:.2f} "
                f"top-5 {scores['knn10_top5']:.2f} (k = 10; {seconds:.1f} s)")
            self.metrics.write({"kind": "knn", "epoch": epochs_done, **scores, "seconds": seconds},
                               step=epochs_done)

    def finish(self) -> None:
        """``final.pth`` and ``student_backbone.pth`` (and with --final_evaluation its scores), then the folder is
        released."""
        if self.ctx.is_main:
            payload = checkpoint_payload(self.distiller, self.optimizer, self.opts.end_epoch, self.meta)
            written = save_final(payload, unwrap(self.distiller.student).backbone, self.output_dir)
            log(f"done: {written[0]} and {written[1]}")
        if self.opts.final_evaluation:
            self.final_evaluation(self.output_dir / "final.pth")
        self.metrics.close()
        edist.barrier()
        if self.lock is not None:
            self.lock.release()
        edist.shutdown()

    def final_evaluation(self, final: Path) -> None:
        """--final_evaluation: ``final``'s backbone scored by main_lincls.py's frozen protocols with its defaults, on
        the monitor's images, from the monitor's last embedding (embedded again when this start trained no epoch);
        ``evaluation/results.json`` (and ``predictions.npz``) as main_lincls.py writes it, the flags it would have
        been given recorded."""
        opts, ctx = self.opts, self.ctx
        needs_embedding = edist.broadcast_object(ctx.is_main and self.monitor.features is None)
        if needs_embedding:  # every process embeds its shard
            self.monitor(unwrap(self.distiller.student).backbone)
        if ctx.is_main:
            train_features, val_features = self.monitor.features
            memory, queries = self.monitor.train_set, self.monitor.val_set
            seconds: dict[str, float] = {}
            protocols = FrozenProtocols()
            predictions: dict[str, torch.Tensor] = {}
            scores = frozen_protocol_scores(train_features, labels_of(memory), val_features, labels_of(queries),
                                            len(memory.classes), protocols, ctx.device, seconds, predictions)
            save_predictions(self.output_dir / "evaluation" / "predictions.npz", labels_of(queries), predictions)
            as_given = {"arch": opts.s_arch, "stem": opts.stem, "pretrained": str(final), "protocol": "logreg",
                        "with_knn": True, "data_dir": monitor_data(opts)[0], "image_size": opts.image_size,
                        "in_memory": opts.in_memory, "seed": protocols.seed, "logreg_holdout": protocols.holdout}
            results = {"protocol": "logreg", "arch": opts.s_arch, "stem": opts.stem, "recomputed_bn": False,
                       "flags": as_given, "pretrained": str(final), "checkpoint_format": "bingo",
                       "checkpoint_sha256": file_sha256(final), "made_by": "main_distill.py --final_evaluation",
                       "num_train": len(memory), "num_val": len(queries), **scores,
                       "predictions": "predictions.npz", "seconds": seconds}
            atomic_json(results, self.output_dir / "evaluation" / "results.json")
            log(f"final evaluation: {self.output_dir / 'evaluation' / 'results.json'}")
