"""The entry points' options: one typed object per entry point, built once in its ``main`` from the parsed flags
and passed to every function that needs a setting (no function below ``main`` reads the flags). The defaults live in
the flag definitions alone; these classes only name and type the values."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["DistillOptions", "LinclsOptions", "KnnStepOptions", "from_flags", "from_argv"]

Options = TypeVar("Options")


def from_flags(cls: type[Options], flag_values: Any) -> Options:
    """``cls`` with each field's value from absl's parsed ``flag_values`` (the field of the same name), and
    ``explicit`` the names of the flags given on the command line."""
    names = [f.name for f in dataclasses.fields(cls) if f.name != "explicit"]
    values = {name: flag_values[name].value for name in names}
    values = {name: list(value) if isinstance(value, list) else value for name, value in values.items()}
    return cls(**values, explicit=frozenset(name for name in names if flag_values[name].present))


def from_argv(cls: type[Options], flag_values: Any, argv: list[str]) -> Options:
    """``cls`` from a command line (``argv[0]`` the program), parsed afresh into ``flag_values`` as absl parses a
    real one: how a bench or a test builds an entry point's options without running it."""
    flag_values.unparse_flags()
    flag_values(argv)
    return from_flags(cls, flag_values)


@dataclass(frozen=True)
class _Options:
    """What every entry point's options have besides their flags."""

    def as_dict(self) -> dict[str, Any]:
        """Every option by name: what ``flags.json``, the checkpoints and ``results.json`` record."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "explicit"}


@dataclass(frozen=True)
class DistillOptions(_Options):
    """``main_distill.py``'s flags (see their help there)."""

    output_dir: str | None
    train_url: str | None
    data_dir: str | None
    moco_dim: int
    moco_k: int
    moco_m: float
    moco_t: float
    mlp: bool
    aug_plus: bool
    decay_method: str
    resume: str
    resume_change: list[str]
    seed: int | None
    init_lr: float
    momentum: float
    wd: float
    batch_size: int
    num_workers: int
    end_epoch: int
    schedule: list[str]
    lr_decay: float
    report_freq: int
    save_freq: int
    subgroup: int
    lam: list[str]
    clus_pos_num: int
    s_arch: str
    t_arch: str
    corr_npy: str
    pretrain_path: str
    pretrain_alg: str
    method: str
    loss: str
    teacher_mode: str | None
    augmentation: str | None
    disco_mse_weight: float
    compress_one_bank: bool
    head_hidden: int
    seed_teacher_t: float
    anchor_term: bool
    neighbour_term: bool
    mix_term: bool
    cross_keys: bool
    bag_warmup_epochs: int
    image_size: int
    stem: str
    amp: bool
    channels_last: bool
    fused_optimizer: bool
    compile: bool
    compile_mode: str
    compile_views: bool
    device_views: bool
    in_memory: bool
    fuse_teacher: bool
    check_corr_json: bool
    device: str
    knn_monitor_freq: int
    knn_monitor_data: str | None
    final_evaluation: bool
    explicit: frozenset[str] = field(default_factory=frozenset)  # the flags given on the command line

    @property
    def uses_teacher(self) -> bool:
        return self.method != "moco"

    @property
    def official_terms(self) -> tuple[str, ...]:
        """The terms of the released loss this run keeps (all three by default)."""
        return tuple(term for term in ("anchor", "neighbour", "mix") if getattr(self, f"{term}_term"))


@dataclass(frozen=True)
class LinclsOptions(_Options):
    """``main_lincls.py``'s flags (see their help there)."""

    evaluate: bool
    output_dir: str | None
    train_url: str | None
    data_dir: str
    seed: int
    init_lr: float
    momentum: float
    wd: float
    batch_size: int
    num_workers: int
    end_epoch: int
    schedule: list[str]
    lr_decay: float
    decay_method: str
    min_lr: float
    arch: str
    pool_type: str
    resume: str
    report_freq: int
    save_freq: int
    pretrained: str | None
    recompute_bn: bool
    untrained: bool
    logreg_holdout: float
    protocol: str
    knn_k: list[str]
    with_knn: bool
    knn_t: float
    label_fraction: float | None
    label_file: str | None
    image_size: int
    stem: str
    in_memory: bool
    device: str
    explicit: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class KnnStepOptions(_Options):
    """``run_knn.py``'s flags (see their help there)."""

    arch: str
    ckpt_name: str
    data_dir: str
    corr_name: str
    clus_pos_num: int
    batch_size: int
    image_size: int
    stem: str
    num_workers: int
    feature: str
    search: str
    save_distances: bool
    device: str
    device_views: bool
    in_memory: bool
    channels_last: bool
    bagging: str
    kmeans_clusters: int | None
    label_bag_purity: float
    redraw_members: str
    bag_seed: int
    explicit: frozenset[str] = field(default_factory=frozenset)
