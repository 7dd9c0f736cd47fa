"""Distillation: train a student against a frozen self-supervised teacher with BINGO (or the SEED / MoCo-v2
baselines in the same loop).

    torchrun --nproc_per_node=8 main_distill.py --s_arch=resnet18 --t_arch=resnet50 \
        --pretrain_path=moco_v2_200ep_pretrain.pth.tar --corr_npy=imgs_corr_moco_epoch200.npy \
        --data_dir=/data/imagenet --output_dir=runs/SR18-TR50

One process per GPU under torchrun (any number of GPUs and nodes), a single process on one GPU, or the CPU (gloo).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from absl import app, flags
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from datasets.device_views import DeviceViews, EncodedBagDataset, collate_encoded
from datasets.folders import BagDataset, DatasetError, file_list_sha256, labelled_splits, open_split
from datasets.neighbours import neighbour_path, read_neighbours
from datasets.transforms import eval_transform, pretrain_augmentation, pretrain_spec
from engine import cli
from engine.checkpoints import check_resumable, checkpoint_payload, load_checkpoint, save_checkpoint, save_final
from engine.evaluation import KnnMonitor
from engine.training import RunState, check_teacher_unchanged, make_train_loader, train_epoch
from models.backbones import BACKBONES, STUDENTS, build_backbone
from models.checkpoints import file_sha256, load_backbone, load_teacher, torch_load
from models.distiller import DistillConfig, Distiller, Embedder, unwrap
from models.heads import compress_head, student_head
from models.methods import build_method
from utils import dist as edist
from utils.io import OutputFolderError, RunFolderLock, atomic_json, check_writable, resolve_resume
from utils.logs import MetricsLog, log, prune_metrics
from utils.schedule import learning_rate, set_lr
from utils.signals import Preempted, StopRequests

FLAGS = flags.FLAGS
# Official flags (names and defaults of haohang96/bingo main_moco.py).
flags.DEFINE_string("output_dir", None, "Run folder for checkpoints, metrics and flags (required).")
flags.DEFINE_string("train_url", None, "Official name of --output_dir (accepted as an alias).")
flags.DEFINE_string("data_dir", None, "Dataset root; <data_dir>/train is used.")
flags.DEFINE_integer("moco_dim", 128, "Embedding (and queue) dimension.")
flags.DEFINE_integer("moco_k", 65536, "Queue length; a multiple of the global batch.")
flags.DEFINE_float("moco_m", 0.999, "Momentum of the student's momentum copy (--method=moco, disco, compress); the "
                   "distillation teacher is frozen.")
flags.DEFINE_float("moco_t", 0.2, "Softmax temperature (EfficientNet-B0 script: 0.12).")
flags.DEFINE_bool("mlp", True, "Student head: 2-layer MLP (feature -> 2048 -> dim); false: one linear layer.")
flags.DEFINE_bool("aug_plus", True, "MoCo-v2 augmentation (false: MoCo-v1); given explicitly, it sets --augmentation.")
flags.DEFINE_enum("decay_method", "cos", ["cos", "step"], "Learning-rate schedule, stepped per epoch.")
flags.DEFINE_string("resume", "", "Checkpoint to continue from, or 'auto' for <output_dir>/checkpoint.pth.")
flags.DEFINE_integer("seed", None, "Run seed; when unset one is drawn at random and recorded, so --resume stays exact.")
flags.DEFINE_float("init_lr", 0.03, "Learning rate for the global batch.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("wd", 1e-4, "Weight decay (EfficientNet-B0 script: 4e-5).")
flags.DEFINE_integer("batch_size", 256, "Global batch, split evenly over the processes.")
flags.DEFINE_integer("num_workers", 8, "Data-loading workers per process (the official flag was global).")
flags.DEFINE_integer("end_epoch", 200, "Number of epochs.")
flags.DEFINE_list("schedule", ["120", "160"], "Milestone epochs for --decay_method=step.")
flags.DEFINE_float("lr_decay", 0.1, "Factor at each milestone for --decay_method=step.")
flags.DEFINE_integer("report_freq", 100, "Steps between progress lines.")
flags.DEFINE_integer("save_freq", 10, "Epochs between numbered checkpoints.")
flags.DEFINE_integer("subgroup", 8, "Shuffle-BN group size (capped at the number of processes).")
flags.DEFINE_list("lam", ["0.5", "0.5"], "Weights of own key and other bag member's key after the warm-up.")
flags.DEFINE_integer("clus_pos_num", 5, "Neighbours to sample from (leading columns of the .npy).")
flags.DEFINE_enum("s_arch", "resnet18", sorted(BACKBONES),
                  f"Student network (the paper's: {', '.join(sorted(STUDENTS))}; any registered network trains, "
                  "e.g. a resnet50 MoCo-v2 teacher with --method=moco).")
flags.DEFINE_enum("t_arch", "resnet50", sorted(BACKBONES), "Teacher network.")
flags.DEFINE_string("corr_npy", "imgs_corr_epoch800_MoCo.npy",
                    "Neighbour .npy from run_knn.py: a bare name is read from ./imgs_corr/, a path as given (.npy appended "
                    "when missing, as run_knn.py does).")
flags.DEFINE_string("pretrain_path", "moco_v2_800ep_pretrain.pth.tar", "Teacher checkpoint.")
flags.DEFINE_enum("pretrain_alg", "moco", ["moco", "swav"],
                  "Teacher checkpoint family; checked against the detected format.")
# Additions.
flags.DEFINE_enum("method", "bingo", ["bingo", "seed", "disco", "compress", "moco"],
                  "bingo, the SEED, DisCo or CompRess baseline, or MoCo-v2 (no teacher). Each baseline takes its "
                  "release's defaults for the flags not given (see METHOD_DEFAULTS; flags.json records them).")
flags.DEFINE_enum("loss", "official", ["official", "paper"],
                  "official: the released code's loss (neighbour key, 11-epoch warm-up, CutMix term, /3); "
                  "paper: CE(anchor) + CE(neighbour) against the anchor's teacher key.")
flags.DEFINE_enum("teacher_mode", None, ["train", "eval"],
                  "train: teacher BN uses batch statistics (official BINGO: shuffled; DisCo's release: each "
                  "process's own); eval: its running statistics (SEED's and CompRess's releases). Default: each "
                  "method's release.")
flags.DEFINE_enum("augmentation", None, ["mocov2", "mocov1", "crop_flip"],
                  "The views: MoCo-v2, MoCo-v1, or RandomResizedCrop + flip (CompRess's). Default: --aug_plus's "
                  "choice, crop_flip for --method=compress.")
flags.DEFINE_float("disco_mse_weight", 32.0,
                   "--method=disco: weight of each MSE term on its batch mean of ||teacher - student||^2. DisCo's "
                   "release sums over one process's batch, i.e. weight = the per-process batch: 32 at its 8 x 32 "
                   "setting (the default, whatever the process count here).")
flags.DEFINE_bool("compress_one_bank", False,
                  "--method=compress: CompRess-1q (a linear map to the teacher's width, the teacher's bank only, no "
                  "momentum copy) instead of CompRess's two banks.")
flags.DEFINE_integer("head_hidden", 2048,
                     "Hidden width of the student's MLP head (official BINGO: 2048 for every student and method; "
                     "MoCo's and SEED's releases use the backbone's width, 512 for a ResNet-18).")
flags.DEFINE_float("seed_teacher_t", 1e-4, "SEED's teacher temperature (its release's default).")
flags.DEFINE_bool("anchor_term", True, "--loss=official: keep L_anchor (the loss ablation: --noanchor_term drops it).")
flags.DEFINE_bool("neighbour_term", True, "--loss=official: keep L_neighbour (--noneighbour_term drops it).")
flags.DEFINE_bool("mix_term", True, "--loss=official: keep the CutMix term L_mix (--nomix_term drops it).")
flags.DEFINE_bool("cross_keys", True, "--loss=official: after the warm-up, pull each query to the other bag member's "
                  "key too (--lam); --nocross_keys keeps the own key only, weight 1, throughout. The loss is the mean "
                  "of the terms kept (the official /3 with all three).")
flags.DEFINE_integer("bag_warmup_epochs", 10,
                     "--loss=official: epochs 0..N use only the own-key terms (official: 10, i.e. 11 epochs).")
flags.DEFINE_integer("image_size", 224, "Crop size of the views.")
flags.DEFINE_bool("amp", False, "bf16 autocast on CUDA.")
flags.DEFINE_bool("channels_last", False, "channels_last memory format on CUDA.")
flags.DEFINE_bool("compile", False, "torch.compile the student and the teacher (CUDA speed switch; compiles first).")
flags.DEFINE_bool("device_views", False,
                  "Decode JPEGs (nvJPEG on CUDA) and make the views on the training device; loader workers only read "
                  "files and draw the views' random parameters (the same draws as the CPU path).")
flags.DEFINE_bool("in_memory", False,
                  "With --device_views: decode every training image once at start-up and keep the pixels in memory "
                  "(small datasets such as Fashion-MNIST or CIFAR; 3 KB an image at 32 px).")
flags.DEFINE_bool("fuse_teacher", False, "One teacher forward for anchor and neighbour keys (needs teacher_mode=eval).")
flags.DEFINE_bool("check_corr_json", True,
                  "Require the .npy's JSON from run_knn.py and check it against this dataset (turn off only for "
                  ".npy files made by the official code).")
flags.DEFINE_enum("device", "auto", ["auto", "cuda", "cpu"], "Where to run (auto: CUDA when available).")
flags.DEFINE_integer("knn_monitor_freq", 0,
                     "Every N epochs, before the first and after the last, score the backbone being trained (the "
                     "student; the query encoder for --method=moco) with main_lincls.py --protocol=knn's classifier "
                     "(k = 10) and log it to metrics.jsonl as kind 'knn'. 0: off.")
flags.DEFINE_string("knn_monitor_data", None,
                    "Labelled dataset root for the k-NN monitor: train/ is the memory, val/ the queries (default: "
                    "--data_dir).")


def build_teacher(announce: bool = True) -> Embedder | None:
    if FLAGS.method == "moco":
        return None
    if FLAGS.method == "compress":  # CompRess distils the pooled backbone features: no head
        backbone, weights = load_backbone(FLAGS.t_arch, FLAGS.pretrain_path)
        head = torch.nn.Identity()
    else:
        backbone, head, weights = load_teacher(FLAGS.t_arch, FLAGS.pretrain_path)
    family = "swav" if weights.fmt == "swav" else "moco"
    if weights.fmt in ("swav", "moco", "bingo") and family != FLAGS.pretrain_alg:
        raise app.UsageError(f"--pretrain_alg={FLAGS.pretrain_alg}, but {FLAGS.pretrain_path} is a {weights.fmt} "
                             f"checkpoint: pass --pretrain_alg={family}")
    what = "backbone" if FLAGS.method == "compress" else "+ head"
    log(f"teacher {FLAGS.t_arch} {what} from {FLAGS.pretrain_path} (format: {weights.fmt})", announce)
    return Embedder(backbone, head)


def build_dataset(seed: int, device: torch.device) -> tuple[BagDataset, Callable | None, Callable | None]:
    """The bag dataset (no neighbours yet), and with --device_views the batch -> views step and its collate."""
    views = "bag" if FLAGS.method == "bingo" else "pair"
    root = open_split(FLAGS.data_dir, "train")
    if not FLAGS.device_views:
        transform = pretrain_augmentation(FLAGS.image_size, FLAGS.augmentation)
        return BagDataset(root, transform, neighbours=None, views=views, seed=seed), None, None
    spec = pretrain_spec(FLAGS.augmentation)
    dataset = EncodedBagDataset(root, spec, neighbours=None, views=views, seed=seed, in_memory=FLAGS.in_memory)
    return dataset, DeviceViews(FLAGS.image_size, spec, device, FLAGS.channels_last).train_views, collate_encoded


def build_distiller(teacher: Embedder | None, ctx: edist.Context, seed: int
                    ) -> tuple[Distiller, torch.optim.Optimizer]:
    """Student + teacher + queue on the device (DDP around the student when distributed), and the optimizer. The
    student's initial weights depend on ``seed`` alone, so every method starts from the same network under a seed
    (building a teacher first draws from the generator too)."""
    torch.manual_seed(seed)
    backbone = build_backbone(FLAGS.s_arch)
    if FLAGS.method == "compress":
        head = compress_head(backbone.feature_dim, teacher.backbone.feature_dim, FLAGS.compress_one_bank)
    else:
        head = student_head(backbone.feature_dim, FLAGS.moco_dim, FLAGS.mlp, FLAGS.head_hidden)
    student = Embedder(backbone, head)
    config = DistillConfig(
        method=FLAGS.method, loss=FLAGS.loss, dim=FLAGS.moco_dim, queue_size=FLAGS.moco_k, t=FLAGS.moco_t,
        moco_m=FLAGS.moco_m, lam=tuple(float(x) for x in FLAGS.lam), seed_teacher_t=FLAGS.seed_teacher_t,
        warmup_epochs=FLAGS.bag_warmup_epochs, official_terms=official_terms(), cross_keys=FLAGS.cross_keys,
        disco_mse_weight=FLAGS.disco_mse_weight,
        compress_one_bank=FLAGS.compress_one_bank, teacher_mode=teacher_mode(), fuse_teacher=FLAGS.fuse_teacher, subgroup=FLAGS.subgroup, amp=FLAGS.amp)
    distiller = build_method(student, teacher, config).to(ctx.device)
    memory_format = torch.channels_last if FLAGS.channels_last else torch.contiguous_format
    distiller = distiller.to(memory_format=memory_format)
    if FLAGS.compile:
        distiller.compile_networks()
    if ctx.distributed:
        distiller.student = DistributedDataParallel(
            distiller.student, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    optimizer = torch.optim.SGD(unwrap(distiller.student).parameters(), lr=FLAGS.init_lr, momentum=FLAGS.momentum,
                                weight_decay=FLAGS.wd)
    return distiller, optimizer


def build_monitor(ctx: edist.Context, batch_per_process: int) -> KnnMonitor | None:
    """The k-NN monitor on --knn_monitor_data (default --data_dir), or None when --knn_monitor_freq is 0."""
    if FLAGS.knn_monitor_freq <= 0:
        return None
    root, flag = monitor_data()
    transform = eval_transform(FLAGS.image_size)
    memory, queries = labelled_splits(root, transform, transform, flag)
    return KnnMonitor(memory, queries, ctx, batch_per_process, FLAGS.num_workers)


def monitor_data() -> tuple[str, str]:
    """The k-NN monitor's dataset root and the flag that gave it."""
    if FLAGS.knn_monitor_data:
        return FLAGS.knn_monitor_data, "--knn_monitor_data"
    return FLAGS.data_dir, "--data_dir (the k-NN monitor's default --knn_monitor_data)"


def check_data_folders() -> None:
    """The folders the run reads, checked before its output folder is made."""
    open_split(FLAGS.data_dir, "train")
    if FLAGS.knn_monitor_freq > 0:
        root, flag = monitor_data()
        for split in ("train", "val"):
            open_split(root, split, flag)


def monitor_knn(monitor: KnnMonitor | None, distiller: Distiller, epochs_done: int, metrics: MetricsLog,
                ctx: edist.Context) -> None:
    """Score the trained backbone after ``epochs_done`` epochs when the monitor is on and the epoch is due."""
    if monitor is None:
        return
    if epochs_done not in (0, FLAGS.end_epoch) and epochs_done % FLAGS.knn_monitor_freq:
        return
    scores = monitor(unwrap(distiller.student).backbone)
    if ctx.is_main:
        log(f"k-NN monitor after {epochs_done} epochs: top-1 {scores['knn10_top1']:.2f} "
            f"top-5 {scores['knn10_top5']:.2f} (k = 10)")
        metrics.write({"kind": "knn", "epoch": epochs_done, **scores}, step=epochs_done)


def check_flags(world_size: int) -> int:
    """Flag values and combinations that cannot work, refused before anything is loaded; returns the per-process
    batch."""
    at_least = {"batch_size": 1, "image_size": 16, "end_epoch": 1, "moco_k": 1, "moco_dim": 1, "head_hidden": 1,
                "report_freq": 1, "num_workers": 0, "save_freq": 0, "subgroup": 1}
    if FLAGS.method == "bingo":
        at_least["clus_pos_num"] = 1
    for name, low in at_least.items():
        if FLAGS[name].value < low:
            raise app.UsageError(f"--{name}={FLAGS[name].value}: must be at least {low}")
    if FLAGS.moco_t <= 0 or FLAGS.seed_teacher_t <= 0:
        raise app.UsageError(f"--moco_t={FLAGS.moco_t} and --seed_teacher_t={FLAGS.seed_teacher_t} must be positive")
    if len(FLAGS.lam) != 2:
        raise app.UsageError(f"--lam={','.join(FLAGS.lam)}: give two weights, e.g. --lam=0.5,0.5")
    if FLAGS.in_memory and not FLAGS.device_views:
        raise app.UsageError("--in_memory needs --device_views (the batched views take the decoded pixels)")
    if FLAGS.fuse_teacher and teacher_mode() != "eval":
        raise app.UsageError("--fuse_teacher needs --teacher_mode=eval (in train mode BN statistics of one forward "
                             "over anchor and neighbour keys differ from the official two forwards)")
    if FLAGS.knn_monitor_freq < 0:
        raise app.UsageError(f"--knn_monitor_freq={FLAGS.knn_monitor_freq}: give a number of epochs, or 0 for off")
    if FLAGS.batch_size % world_size:
        raise app.UsageError(f"--batch_size={FLAGS.batch_size} (global) is not divisible by {world_size} processes")
    if FLAGS.method == "compress" and FLAGS.moco_k < FLAGS.batch_size:
        raise app.UsageError(f"--moco_k={FLAGS.moco_k} (the memory banks) must hold one global --batch_size="
                             f"{FLAGS.batch_size}")
    if FLAGS.method != "compress" and FLAGS.moco_k % FLAGS.batch_size:
        raise app.UsageError(f"--moco_k={FLAGS.moco_k} must be a multiple of the global --batch_size={FLAGS.batch_size}")
    for name, method in (("disco_mse_weight", "disco"), ("compress_one_bank", "compress")):
        if FLAGS[name].present and FLAGS.method != method:
            raise app.UsageError(f"--{name} is a --method={method} flag; this run is --method={FLAGS.method}")
    ablation = [name for name in ("anchor_term", "neighbour_term", "mix_term", "cross_keys") if FLAGS[name].present]
    if ablation and (FLAGS.method != "bingo" or FLAGS.loss != "official"):
        raise app.UsageError(f"--{ablation[0]} switches a term of --method=bingo --loss=official, not of this run")
    if not official_terms():
        raise app.UsageError("--noanchor_term --noneighbour_term --nomix_term leave no loss term: keep one")
    return FLAGS.batch_size // world_size


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


def resolve_method_defaults() -> None:
    """Give every flag the user did not set its method's release value (``METHOD_DEFAULTS``); ``--aug_plus``, given
    explicitly, chooses the views as in the official code."""
    chosen = {}
    if FLAGS["aug_plus"].present:
        chosen["augmentation"] = "mocov2" if FLAGS.aug_plus else "mocov1"
        if FLAGS["augmentation"].present and FLAGS.augmentation != chosen["augmentation"]:
            raise app.UsageError(f"--augmentation={FLAGS.augmentation} and --{'' if FLAGS.aug_plus else 'no'}aug_plus "
                                 "contradict each other: give one")
    for name, value in {"augmentation": "mocov2", **METHOD_DEFAULTS[FLAGS.method]}.items():
        if not FLAGS[name].present:
            FLAGS[name].value = chosen.get(name, value)


def official_terms() -> tuple[str, ...]:
    """The terms of the released loss this run keeps (all three by default)."""
    return tuple(term for term in ("anchor", "neighbour", "mix") if FLAGS[f"{term}_term"].value)


def teacher_mode() -> str:
    """The teacher's BatchNorm mode this run uses (``resolve_method_defaults`` has set it)."""
    return FLAGS.teacher_mode


def run_meta(seed: int) -> dict:
    """What a checkpoint records about its run; ``check_resumable`` compares it on --resume."""
    teacher = FLAGS.method != "moco"
    return {"s_arch": FLAGS.s_arch, "arch": FLAGS.s_arch, "method": FLAGS.method, "moco_dim": FLAGS.moco_dim,
            "moco_k": FLAGS.moco_k, "head_hidden": FLAGS.head_hidden if FLAGS.mlp and FLAGS.method != "compress"
            else None, "seed": seed,
            "t_arch": FLAGS.t_arch if teacher else None,
            "teacher_sha256": file_sha256(FLAGS.pretrain_path) if teacher and Path(FLAGS.pretrain_path).is_file()
            else None,
            "flags": FLAGS.flag_values_dict()}


def claim_output_dir(output_dir: Path, resume_path: Path | None) -> RunFolderLock:
    """Own the run folder for this run; a fresh run may not overwrite another run's checkpoints."""
    check_writable(output_dir)
    lock = RunFolderLock(output_dir).acquire()
    if resume_path is None and (output_dir / "checkpoint.pth").is_file():
        lock.release()
        raise OutputFolderError(f"{output_dir} already holds a run (checkpoint.pth): pass --resume=auto to continue "
                                "it, or choose another --output_dir")
    return lock


def read_resume(resume_path: Path | None, meta: dict) -> dict | None:
    """The checkpoint to resume from, checked against this run's flags before the teacher loads."""
    if resume_path is None:
        return None
    resumed = torch_load(resume_path)
    check_resumable(resumed, str(resume_path), meta)
    done = int(resumed["epoch"])
    if done > FLAGS.end_epoch:
        raise app.UsageError(f"--end_epoch={FLAGS.end_epoch}, but {resume_path} has already trained {done} epochs: "
                             f"give --end_epoch={done} or more")
    return resumed


def main(argv: list[str]) -> None:
    del argv
    output_dir = FLAGS.output_dir or FLAGS.train_url
    if not output_dir or not FLAGS.data_dir:
        raise app.UsageError("--output_dir (or --train_url) and --data_dir are required")
    output_dir = Path(output_dir)
    resolve_method_defaults()
    ctx = edist.init(FLAGS.device)
    per_process = check_flags(ctx.world_size)
    check_data_folders()
    seed = FLAGS.seed if FLAGS.seed is not None else edist.broadcast_object(secrets.randbelow(2**31))
    resume_path = resolve_resume(FLAGS.resume, output_dir)
    lock = claim_output_dir(output_dir, resume_path) if ctx.is_main else None
    meta = run_meta(seed)
    resumed = read_resume(resume_path, meta)
    if resumed is not None:
        seed = meta["seed"] = int(resumed["bingo"]["seed"])
    torch.manual_seed(seed)
    teacher = build_teacher(ctx.is_main)  # before any data is read: a wrong checkpoint stops here

    dataset, prepare, collate_fn = build_dataset(seed, ctx.device)
    meta.update(num_images=len(dataset.samples), file_list_sha256=file_list_sha256(dataset))
    if resumed is not None:
        check_resumable(resumed, str(resume_path), meta, ("num_images", "file_list_sha256"))
    if dataset.views == "bag":
        neighbours = read_neighbours(neighbour_path(FLAGS.corr_npy), dataset, FLAGS.clus_pos_num,
                                     FLAGS.check_corr_json, report=log)
        dataset.set_neighbours(neighbours)
    if len(dataset) < FLAGS.batch_size:
        raise DatasetError(f"{dataset.root} has {len(dataset)} images, fewer than one global batch ({FLAGS.batch_size})")
    monitor = build_monitor(ctx, per_process)

    distiller, optimizer = build_distiller(teacher, ctx, seed)
    start_epoch = 0
    if resumed is not None:
        start_epoch = load_checkpoint(resumed, str(resume_path), distiller, optimizer)
        log(f"resumed from {resume_path} at epoch {start_epoch}", ctx.is_main)
    if ctx.is_main:
        atomic_json(meta["flags"] | {"seed": seed, "world_size": ctx.world_size}, output_dir / "flags.json")
        prune_metrics(output_dir / "metrics.jsonl", start_epoch)
    loader = make_train_loader(dataset, ctx, per_process, FLAGS.num_workers, seed, collate_fn)
    run = Run(ctx, seed, meta, output_dir, distiller, optimizer, loader, dataset, prepare, monitor,
               # the teacher's parameters are compared with the checkpoint file's after every epoch
               teacher_reference=None if FLAGS.method == "moco" else dict(build_teacher(False).named_parameters()))
    todo = (f"epochs {start_epoch}..{FLAGS.end_epoch - 1}" if start_epoch < FLAGS.end_epoch else
            f"no epoch left to train (--end_epoch={FLAGS.end_epoch}): writing the final outputs")
    log(f"{FLAGS.method}: {FLAGS.s_arch} student, {dataset.describe()}; {len(loader)} steps/epoch of "
        f"{FLAGS.batch_size} on {ctx.world_size} process(es), {todo}", ctx.is_main)

    metrics = MetricsLog(output_dir, enabled=ctx.is_main)
    state = RunState(epoch=start_epoch, end_epoch=FLAGS.end_epoch, report_freq=FLAGS.report_freq, metrics=metrics,
                     total_steps=len(loader) * (FLAGS.end_epoch - start_epoch), epochs_saved=start_epoch)
    try:
        with StopRequests() as state.stop:
            train(run, state, start_epoch)
    except Preempted as stopped:
        last = output_dir / "checkpoint.pth"
        done = f"{last} holds {state.epochs_saved} finished epochs" if last.is_file() else "no epoch was finished"
        raise Preempted(stopped.signum, f"{stopped}; {done}. Continue with the same command and --resume=auto") \
            from None
    if ctx.is_main:
        payload = checkpoint_payload(distiller, optimizer, FLAGS.end_epoch, meta)
        written = save_final(payload, unwrap(distiller.student).backbone, output_dir)
        log(f"done: {written[0]} and {written[1]}")
    metrics.close()
    edist.barrier()
    if lock is not None:
        lock.release()
    edist.shutdown()


@dataclass
class Run:
    """What the epochs of one run work on, built by ``main``."""

    ctx: edist.Context
    seed: int
    meta: dict
    output_dir: Path
    distiller: Distiller
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    dataset: BagDataset
    prepare: Callable | None  # --device_views: batch -> views on the device
    monitor: KnnMonitor | None
    teacher_reference: dict[str, torch.Tensor] | None


def train(run: Run, state: RunState, start_epoch: int) -> None:
    """Epochs ``start_epoch .. --end_epoch - 1``; each ends with its metrics, then ``checkpoint.pth``."""
    ctx, distiller, optimizer = run.ctx, run.distiller, run.optimizer
    if start_epoch == 0:
        monitor_knn(run.monitor, distiller, 0, state.metrics, ctx)
    for epoch in range(start_epoch, FLAGS.end_epoch):
        state.epoch = epoch
        run.loader.sampler.set_epoch(epoch)
        run.dataset.set_epoch(epoch)
        distiller.set_epoch(run.seed, epoch, ctx.rank)
        lr = learning_rate(epoch, FLAGS.init_lr, FLAGS.end_epoch, FLAGS.decay_method,
                           [int(m) for m in FLAGS.schedule], FLAGS.lr_decay)
        set_lr(optimizer, lr)
        means = train_epoch(distiller, run.loader, optimizer, ctx, state, FLAGS.channels_last, run.prepare)
        if run.teacher_reference is not None:
            check_teacher_unchanged(distiller.teacher, run.teacher_reference)
        monitor_knn(run.monitor, distiller, epoch + 1, state.metrics, ctx)
        if ctx.is_main:
            state.metrics.write({"kind": "epoch", "epoch": epoch, "lr": lr, **means}, step=epoch)
            save_checkpoint(checkpoint_payload(distiller, optimizer, epoch + 1, run.meta), run.output_dir,
                            epoch + 1, FLAGS.save_freq)
        state.epochs_saved = epoch + 1
        edist.barrier()
        state.stop.check(f"after epoch {epoch}")


if __name__ == "__main__":
    cli.run(main)
