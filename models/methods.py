"""The method a run trains, by ``--method`` name."""
from __future__ import annotations

from models.bingo import Bingo
from models.compress import CompRess
from models.disco import DisCo
from models.distiller import DistillConfig, Distiller, Embedder
from models.moco import MoCo
from models.seed import Seed

__all__ = ["build_method", "METHODS"]

METHODS = {"bingo": Bingo, "seed": Seed, "moco": MoCo, "disco": DisCo, "compress": CompRess}


def build_method(student: Embedder, teacher: Embedder | None, config: DistillConfig) -> Distiller:
    """``config.method``'s step around ``student``; the distillation methods need the frozen ``teacher``, MoCo-v2
    makes its momentum encoder from the student (and takes no teacher)."""
    if config.method not in METHODS:
        raise ValueError(f"unknown method {config.method!r}; choose one of {sorted(METHODS)}")
    if config.method == "moco":
        return MoCo(student, config)
    if teacher is None:
        raise ValueError(f"--method={config.method} needs a teacher")
    if config.method == "compress":
        return CompRess(student, teacher, config, student.backbone.feature_dim, teacher.backbone.feature_dim)
    return METHODS[config.method](student, teacher, config)
