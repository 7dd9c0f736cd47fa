"""Data-relation step: embed every training image with the frozen teacher and write its K nearest neighbours (or
another kind of bag: ``--bagging``).

    torchrun --nproc_per_node=8 run_knn.py --arch=resnet50w2 --ckpt_name=swav_RN50w2_400ep_pretrain.pth.tar \
        --data_dir=/data/imagenet --corr_name=imgs_corr_swav_epoch400.npy

Writes ``[N, K]`` int64 neighbour indices (ImageFolder order, nearest first, the image itself excluded by index) and
beside it a JSON file saying what made them (and the bags' purity, the share of members in the image's class folder,
for the report only); ``main_distill.py`` checks that JSON against its own dataset.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from absl import app, flags
from torch import nn

from datasets.device_views import DeviceViews, EncodedImageFolder, HeldImages, collate_encoded
from datasets.folders import IndexedImageFolder, open_split
from datasets.neighbours import dataset_fingerprint, neighbour_path, write_neighbours
from datasets.transforms import eval_transform
from engine.bags import (
    BAGGINGS,
    REDRAWS,
    BagError,
    bag_purity,
    group_bags,
    kmeans_assignments,
    label_bags,
    random_bags,
    redraw_members,
)
from engine.cli import check_minimums, check_stem, refuse_inert_flags, run
from engine.features import SEARCH_BACKENDS, embed, exact_knn
from engine.options import KnnStepOptions, from_flags
from models.backbones import BACKBONES, STEMS
from models.checkpoints import head_from_state, load_backbone, read_file
from utils import dist as edist
from utils.io import check_writable
from utils.logs import log

FLAGS = flags.FLAGS
flags.DEFINE_enum("arch", "resnet50", sorted(BACKBONES), "Teacher network.")
flags.DEFINE_string("ckpt_name", "", "Teacher checkpoint (MoCo-v2, SwAV, torchvision or this project's).")
flags.DEFINE_string("data_dir", None, "Dataset root; <data_dir>/train is embedded. Or a CIFAR, STL-10 or MNIST-format "
                    "(Fashion-MNIST) release folder, as main_distill.py reads it.")
flags.DEFINE_string("corr_name", "imgs_corr_moco_epoch800.npy",
                    "Output .npy: a bare name is written under ./imgs_corr/, a path is used as given.")
flags.DEFINE_integer("clus_pos_num", 5, "K: neighbours kept per image (itself excluded).")
flags.DEFINE_integer("batch_size", 32, "Images per process per batch.")
flags.DEFINE_integer("image_size", 224, "Centre-crop size S (Resize round(S*256/224) first).")
flags.DEFINE_enum("stem", "imagenet", list(STEMS), "The teacher's ResNet stem: imagenet (the paper's) or small (3x3 "
                  "stride-1 convolution, no max-pool); a checkpoint of the other stem is refused, naming the flag.")
flags.DEFINE_integer("num_workers", 8, "Data-loading workers per process.")
flags.DEFINE_enum("feature", "backbone", ["backbone", "head"],
                  "Embed with the pooled backbone feature (official) or the teacher's projection-head output.")
flags.DEFINE_enum("search", "auto", list(SEARCH_BACKENDS), "Exact search backend.")
flags.DEFINE_bool("save_distances", False, "Also write the neighbours' cosine similarities (<name>_sims.npy).")
flags.DEFINE_enum("device", "auto", ["auto", "cuda", "cpu"], "Where to run (auto: CUDA when available).")
flags.DEFINE_bool("device_views", False,
                  "Decode JPEGs (nvJPEG on CUDA), resize and crop on the device; loader workers only read files.")
flags.DEFINE_bool("in_memory", False,
                  "Hold every training image on the device as one tensor, decoded once (images of one size: "
                  "Fashion-MNIST, CIFAR, STL-10), and make the crops there a batch at a time: no loader processes.")
flags.DEFINE_bool("channels_last", False, "Run the teacher in channels_last memory format (CUDA speed switch).")
flags.DEFINE_enum("bagging", "knn", list(BAGGINGS),
                  "How bags are made: knn (the teacher's K nearest neighbours, the paper's), kmeans (K members of the "
                  "image's k-means cluster of the teacher's features), label (K members of its class folder: an "
                  "oracle that uses labels), random (K other images: the control). label and random load no teacher.")
flags.DEFINE_integer("kmeans_clusters", None, "--bagging=kmeans: the number of clusters.")
flags.DEFINE_float("label_bag_purity", 1.0, "--bagging=label: the probability that a bag member is of the image's "
                   "class (else it is drawn from the other classes); below 1 it makes bags of a chosen purity whose "
                   "wrong members are unrelated to the image.")
flags.DEFINE_enum("redraw_members", "none", list(REDRAWS),
                  "--bagging=knn, an ablation that reads the labels: redraw each bag member of the image's class from "
                  "its class (same_class: the teacher's mistakes kept) or each member of another class from the other "
                  "classes (other_class: the teacher's right members kept), in place; the bags' purity is unchanged.")
flags.DEFINE_integer("bag_seed", 0, "Seed of the k-means initialisation and of the members drawn for kmeans, label and "
                     "random bags and by --redraw_members.")
flags.mark_flag_as_required("data_dir")


# The flags of the teacher's embedding and search, which label and random bags (no teacher) would ignore.
TEACHER_FLAGS = ("arch", "ckpt_name", "stem", "feature", "search", "batch_size", "image_size", "num_workers",
                 "device_views", "in_memory", "channels_last")
FLAG_SCOPE = {name: ("--bagging=knn or kmeans (label and random bags load no teacher)",
                     lambda o: o.bagging in ("knn", "kmeans")) for name in TEACHER_FLAGS}
FLAG_SCOPE["label_bag_purity"] = ("--bagging=label", lambda o: o.bagging == "label")
FLAG_SCOPE["redraw_members"] = ("--bagging=knn", lambda o: o.bagging == "knn")


def check_options(opts: KnnStepOptions) -> None:
    """Flag values that cannot work, and flags given where they would do nothing, refused before the teacher
    loads."""
    check_minimums(opts, {"batch_size": 1, "image_size": 16, "clus_pos_num": 1, "num_workers": 0, "bag_seed": 0})
    check_stem(opts.stem, {"arch": opts.arch})
    if opts.bagging == "kmeans" and opts.kmeans_clusters is None:
        raise app.UsageError("--bagging=kmeans needs --kmeans_clusters (the number of clusters)")
    if opts.bagging != "kmeans" and opts.kmeans_clusters is not None:
        raise app.UsageError(f"--kmeans_clusters is a --bagging=kmeans flag; this run is --bagging={opts.bagging}")
    if opts.kmeans_clusters is not None and opts.kmeans_clusters < 1:
        raise app.UsageError(f"--kmeans_clusters={opts.kmeans_clusters}: must be at least 1")
    if not 0.0 <= opts.label_bag_purity <= 1.0:
        raise app.UsageError(f"--label_bag_purity={opts.label_bag_purity}: a probability, from 0 to 1")
    if opts.in_memory and opts.device_views:
        raise app.UsageError("--in_memory and --device_views are two ways to make the crops on the device: give one")
    if opts.bagging in ("label", "random") and opts.save_distances:
        raise app.UsageError(f"--save_distances: --bagging={opts.bagging} computes no similarities")
    if opts.redraw_members != "none" and opts.save_distances:
        raise app.UsageError(f"--save_distances: --redraw_members={opts.redraw_members} replaces members whose "
                             "similarities were computed; drop one")
    refuse_inert_flags(opts, FLAG_SCOPE, f"this run (--bagging={opts.bagging})")


def build_network(arch: str, ckpt: str, feature: str, stem: str) -> tuple[nn.Module, str]:
    """The teacher network that embeds (its pooled backbone, or backbone + head) and its file's sha256."""
    if not ckpt:
        raise app.UsageError("--ckpt_name is required: neighbours from a random teacher are meaningless")
    data, sha256 = read_file(ckpt)  # one read: its hash and its load
    backbone, weights = load_backbone(arch, ckpt, data=data, stem=stem)
    log(f"teacher {arch} from {ckpt} (format: {weights.fmt})")
    if feature == "backbone":
        return backbone, sha256
    if not weights.head:
        raise app.UsageError(f"--feature=head, but {ckpt} (format {weights.fmt}) has no projection head")
    head = head_from_state(weights.head, ckpt)
    network = nn.Sequential(backbone, head)
    network.feature_dim = head[-1].out_features
    return network, sha256


def build_dataset(opts: KnnStepOptions, device: torch.device) -> tuple[IndexedImageFolder, dict]:
    """The training images, and with --device_views the loader's collate and the batch -> crops step; with
    --in_memory held on the device (``embed`` makes their crops)."""
    root = open_split(opts.data_dir, "train")
    if opts.in_memory:
        return HeldImages(root, device, opts.image_size, opts.num_workers, opts.channels_last), {}
    if not opts.device_views:
        return IndexedImageFolder(root, eval_transform(opts.image_size)), {}
    crops = DeviceViews(opts.image_size, None, device).eval_crops
    return EncodedImageFolder(root), {"collate_fn": collate_encoded, "prepare": crops}


def make_bags(opts: KnnStepOptions, ctx: edist.Context, teacher: tuple[nn.Module, str] | None,
              dataset: IndexedImageFolder, labels: np.ndarray, loading: dict) -> tuple[np.ndarray | None, dict]:
    """The ``[N, K]`` bags by --bagging (rank 0; None elsewhere) and what the JSON says about how they were made;
    ``teacher`` (the network and its file's sha256) embeds for knn and kmeans bags; ``labels`` are the images'
    classes (label bags)."""
    k = opts.clus_pos_num
    info = {"bagging": opts.bagging, "bag_seed": opts.bag_seed,
            "uses_labels": opts.bagging == "label" or opts.redraw_members != "none"}
    # label bags and redrawn members only: their errors name the class folder
    class_names = np.array(dataset.classes)[labels] if info["uses_labels"] else None
    if opts.bagging == "random":
        return (random_bags(len(labels), k, opts.bag_seed) if ctx.is_main else None), info
    if opts.bagging == "label":
        info["label_bag_purity"] = opts.label_bag_purity
        return (label_bags(class_names, k, opts.bag_seed, opts.label_bag_purity) if ctx.is_main else None), info
    network, teacher_sha256 = teacher
    t0 = time.perf_counter()
    features = embed(network, dataset, ctx, opts.batch_size, opts.num_workers,
                     channels_last=opts.channels_last, label="embed", **loading)
    info["embed_seconds"] = round(time.perf_counter() - t0, 3)
    if not ctx.is_main:
        return None, info
    t1 = time.perf_counter()
    info.update(feature=opts.feature, feature_dim=int(features.shape[1]), teacher_arch=opts.arch,
                teacher_stem=opts.stem, checkpoint=Path(opts.ckpt_name).name, checkpoint_sha256=teacher_sha256)
    if opts.bagging == "knn":
        bags, sims, backend = exact_knn(features, k, opts.search, ctx.device, report=log)
        info["search_backend"] = backend
        bags = bags.numpy()
        if opts.redraw_members != "none":  # the similarities would no longer be the members'
            info["redraw_members"] = opts.redraw_members
            bags = redraw_members(bags, class_names, opts.redraw_members, opts.bag_seed)
        elif opts.save_distances:
            info["sims"] = sims.numpy()
    else:
        clusters, backend = kmeans_assignments(features, opts.kmeans_clusters, opts.bag_seed)
        info.update(kmeans_clusters=opts.kmeans_clusters, kmeans_backend=backend,
                    kmeans_cluster_sizes=np.bincount(clusters, minlength=opts.kmeans_clusters).tolist())
        bags = group_bags(clusters, k, opts.bag_seed, "k-means cluster")
    info["search_seconds"] = round(time.perf_counter() - t1, 3)
    return bags, info


def main(argv: list[str]) -> None:
    del argv
    make_neighbour_file(from_flags(KnnStepOptions, FLAGS))


def make_neighbour_file(opts: KnnStepOptions) -> None:
    """Embed, bag and write the neighbour file ``opts`` asks for."""
    check_options(opts)
    open_split(opts.data_dir, "train")  # before the output folder is made
    ctx = edist.init(opts.device)
    out = neighbour_path(opts.corr_name)
    if ctx.is_main:
        check_writable(out.parent)
    teacher = None
    if opts.bagging in ("knn", "kmeans"):  # before any data is read: a wrong checkpoint stops here
        network, sha256 = build_network(opts.arch, opts.ckpt_name, opts.feature, opts.stem)
        network = network.to(ctx.device).eval()
        if opts.channels_last:
            network = network.to(memory_format=torch.channels_last)
        teacher = (network, sha256)
    dataset, loading = build_dataset(opts, ctx.device)
    n, k = len(dataset), opts.clus_pos_num
    if not 0 < k < n:
        raise app.UsageError(f"--clus_pos_num={k} must be at least 1 and below the number of images ({n})")
    if opts.bagging == "kmeans" and opts.kmeans_clusters > n // (k + 1):  # before the embedding
        raise app.UsageError(f"--kmeans_clusters={opts.kmeans_clusters}: {n} images make at most {n // (k + 1)} "
                             f"clusters of K + 1 = {k + 1} (every image needs K others in its cluster)")
    if opts.bagging == "label" and not dataset.labelled:
        raise app.UsageError(f"--bagging=label: {dataset.describe()}; label bags need labels")
    if opts.redraw_members != "none" and not dataset.labelled:
        raise app.UsageError(f"--redraw_members={opts.redraw_members}: {dataset.describe()}; redrawing by class needs "
                             "labels")
    log(f"{dataset.describe()}; K={k}; bags: {opts.bagging}; {ctx.world_size} process(es)", ctx.is_main)
    labels = np.asarray(dataset.targets)
    try:
        bags, info = make_bags(opts, ctx, teacher, dataset, labels, loading)
    except BagError as error:
        raise app.UsageError(f"--bagging={opts.bagging}: {error}") from None
    if ctx.is_main:
        sims = info.pop("sims", None)
        meta = {"k": k, "data_root": str(Path(dataset.root).resolve()), **dataset_fingerprint(dataset),
                "image_size": opts.image_size, "world_size": ctx.world_size, **info,
                # the labels are read for this figure only; no bag but --bagging=label uses them
                "bag_purity": bag_purity(bags, labels) if len(dataset.classes) > 1 else None}
        write_neighbours(out, bags, meta, sims)
        purity = "" if meta["bag_purity"] is None else f"; {meta['bag_purity']:.1f} % of bag members share the class"
        log(f"wrote {out} {tuple(bags.shape)} and {out.with_suffix('.json')} ({opts.bagging} bags{purity})")
    edist.barrier()
    edist.shutdown()


if __name__ == "__main__":
    run(main)
