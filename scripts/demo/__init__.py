"""The whole pipeline on real images from one command: `make demo` (or `python -m scripts.demo`).

Fashion-MNIST stands in for ImageNet and everything is self-supervised, as in the paper: a larger teacher is
pretrained with this project's MoCo-v2 (`main_distill.py --method=moco`), the kNN step bags the training images
with it, and five students train for the same epochs: BINGO, the SEED, DisCo and CompRess baselines, and MoCo-v2
without a teacher (each `--seeds` times; every baseline with its release's own temperature, schedule and views).
Every network, and the floors it must beat (raw pixels, the teacher's and the student's network untrained), is
scored by the same code on 10,000 test images: `main_lincls.py --protocol=logreg --with_knn` (an L-BFGS logistic
regression and the k-NN classifier, k = 10, against 10,000 labelled training images), every accuracy with its 95 %
interval. The training runs log the k-NN classifier as a monitor on their own small split, so the plots show each run
learning (or not).

Each stage runs the project's own entry points, shows their progress, and is skipped when its output exists, so an
interrupted demo resumes where it stopped (training stages continue from their last epoch). The run folder ends
with results.md, results.json and PNG plots. `--quick` is the smoke version the tests run; `--config long` is the
longer CPU configuration; `--config bags` the bagging ablation (BINGO on random, k-means, teacher k-NN and label
bags, beside SEED and MoCo-v2, 3 seeds); `--config bags-10k` the same question on 10,000 training images with a
teacher of four times the students' schedule (the same four kinds of bag, 2 seeds, about 160 minutes), and
`--config bags-10k-purity` its bags at equal purity (the teacher's k-NN bags, 75 %-pure label bags, the teacher's bags
with their right or wrong members redrawn, and pure label bags; 2 seeds); with a GPU the
default configuration is `gpu` (all 60,000 images of the release read in place and held on the GPU, the five
students, every network scored on all 60,000 labelled images and the 10,000 test images), and `gpu-bags` its bagging
ablation (2 seeds).

Modules: `configs` (what runs), `stages` (running it), `evaluations` (the floors' evaluations in one process),
`results` (gathering the numbers), `report` (the table and results.md), `plots`.
"""
import importlib

# The names other code imports from the package, each from its module; loaded on first use (PEP 562), so that
# ``python -m scripts.demo`` checks its flags before torch is imported.
_EXPORTS = {**dict.fromkeys(("CONFIGS", "CPU_INPUT", "METHODS", "Config", "Training", "data_folder", "eval_folder",
                             "variants"), "configs"),
            "mean_curve": "plots", **dict.fromkeys(("cell", "summary", "table"), "report"),
            **dict.fromkeys(("aggregate", "differences", "training_record"), "results"),
            **dict.fromkeys(("REPO", "floors", "train_args"), "stages")}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
