"""The demo's configurations: what trains, for how long, on which images, and which images score it."""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Training:
    """One `main_distill.py` stage: the network, its schedule, and further recipe flags."""

    arch: str
    epochs: int
    batch_size: int
    lr: float
    queue: int
    flags: tuple[str, ...] = ()
    knn_every: int = 1  # epochs between k-NN monitor points


METHODS = ("moco", "seed", "disco", "compress", "bingo")
METHOD_LABELS = {"moco": "MoCo-v2 (no teacher)", "seed": "SEED", "disco": "DisCo", "compress": "CompRess",
                 "bingo": "BINGO"}
BAG_LABELS = {"random": "random", "kmeans": "k-means", "knn": "teacher k-NN", "label": "label (oracle)",
              "label-75": "label, 75 % pure", "knn-redraw-same": "teacher k-NN, same-class members redrawn",
              "knn-redraw-other": "teacher k-NN, other-class members redrawn"}
# run_knn.py's flags for each kind of bag a configuration names: ``label-75`` is the oracle's label bags with a quarter
# of their members drawn from the other classes (unrelated to the image), about the teacher's k-NN bags' purity;
# ``knn-redraw-same`` and ``knn-redraw-other`` the teacher's k-NN bags with the members of the image's class, or those
# of the other classes, redrawn at random from where they were (the purity unchanged, position by position)
BAG_FLAGS = {"random": ("--bagging=random",), "kmeans": ("--bagging=kmeans",), "knn": ("--bagging=knn",),
             "label": ("--bagging=label",), "label-75": ("--bagging=label", "--label_bag_purity=0.75"),
             "knn-redraw-same": ("--bagging=knn", "--redraw_members=same_class"),
             "knn-redraw-other": ("--bagging=knn", "--redraw_members=other_class")}


@dataclass(frozen=True)
class Config:
    name: str
    train_per_class: int | None  # the training stages' images per class (None: every image)
    val_per_class: int | None  # the k-NN monitor's queries per class
    eval_train_per_class: int | None  # the evaluation's labelled memory and probe-training images per class
    eval_val_per_class: int | None  # its queries per class (None: all 10,000 test images)
    image_size: int
    teacher: Training
    student: Training
    seeds: int = 1  # student runs per method (the teacher and the kNN step run once)
    workers: int = 0
    input_flags: tuple[str, ...] = ()  # how the training stages read images
    knn_step_flags: tuple[str, ...] = ()  # run_knn.py's speed switches
    methods: tuple[str, ...] = METHODS
    bags: tuple[str, ...] = ("knn",)  # run_knn.py --bagging kinds; BINGO trains once on each
    kmeans_clusters: int = 10
    stem: str = "imagenet"  # every ResNet's --stem
    shares: str | None = None  # a configuration whose floors/ and teacher/ this one uses (its run folder's sibling)
    # Fashion-MNIST's release read in place by every stage (all 60,000 training images; the 10,000 test images as the
    # monitor's and the evaluation's queries), no PNGs written or decoded; the per-class sizes above are then None
    in_place: bool = False
    eval_flags: tuple[str, ...] = ()  # main_lincls.py's input switches
    # each trained network scored by its own training process (main_distill.py --final_evaluation, from the monitor's
    # last embedding: the evaluation images must be the monitor's, as in place); main_lincls.py only if it did not
    evaluate_in_training: bool = False

    def __post_init__(self) -> None:
        evaluation = (self.eval_train_per_class, self.eval_val_per_class)
        if self.evaluate_in_training and evaluation != (self.train_per_class, self.val_per_class):
            raise ValueError(f"{self.name}: a network scored by its own training process is scored on its k-NN "
                             "monitor's images, the training split's: give the evaluation the same sizes")


def variants(cfg: Config) -> list[tuple[str, str, str | None]]:
    """``(model name, --method, --bagging or None)`` of every student: one per method, BINGO once per bag kind
    (named ``bingo`` on the teacher's k-NN bags, ``bingo-<kind>`` on the others)."""
    out = []
    for method in cfg.methods:
        if method != "bingo":
            out.append((method, method, None))
            continue
        for bagging in cfg.bags:
            out.append(("bingo" if bagging == "knn" else f"bingo-{bagging}", "bingo", bagging))
    return out


def model_label(cfg: Config, arch: str, method: str, bagging: str | None) -> str:
    label = f"{ARCH_LABELS.get(arch, arch)}, {METHOD_LABELS[method]}"
    return label + (f", {BAG_LABELS[bagging]} bags" if bagging and len(cfg.bags) > 1 else "")


ARCH_LABELS = {"resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50"}

# Views made in the training process from decoded images held in memory (no loader processes, no decoding).
CPU_INPUT = ("--device_views", "--in_memory")
# The teacher's MoCo-v2 for short schedules (see the CPU configurations below; the ImageNet scripts keep the defaults).
SHORT_TEACHER = ("--moco_m=0.99", "--moco_t=0.1", "--nomlp", "--noaug_plus")
STUDENT_FLAGS = ("--moco_m=0.99", "--bag_warmup_epochs=1")
# The CPU configurations' networks: a ResNet-34 teacher of 12 epochs and ResNet-18 students of 5 (``long`` and ``bags``
# train them longer, with the warm-up scaled along).
CPU_TEACHER = Training("resnet34", epochs=12, batch_size=64, lr=0.03, queue=512, flags=SHORT_TEACHER, knn_every=6)
CPU_STUDENT = Training("resnet18", epochs=5, batch_size=64, lr=0.03, queue=512, flags=STUDENT_FLAGS)
LONGER_STUDENT_FLAGS = ("--moco_m=0.99", "--bag_warmup_epochs=2")
# The GPU configurations' networks, with the small-image stem: a ResNet-50 teacher of 15 epochs, ResNet-18 students of
# 4 (the cross-bag keys from their second epoch), batch 512; views made on the GPU from images held there.
GPU_TEACHER = Training("resnet50", epochs=15, batch_size=512, lr=0.06, queue=4096, flags=SHORT_TEACHER, knn_every=5)
GPU_STUDENT = Training("resnet18", epochs=4, batch_size=512, lr=0.06, queue=4096,
                       flags=("--moco_m=0.99", "--bag_warmup_epochs=0"), knn_every=2)
GPU_INPUT = ("--amp", "--channels_last", "--device_views", "--in_memory")
# Every image held on the GPU by every stage, the monitor's and the evaluation's too: no per-image Python anywhere.
GPU_DATA = dict(train_per_class=None, val_per_class=None, eval_train_per_class=None, eval_val_per_class=None,
                image_size=32, teacher=GPU_TEACHER, student=GPU_STUDENT, workers=16, input_flags=GPU_INPUT,
                knn_step_flags=("--channels_last", "--in_memory"), stem="small", in_place=True,
                eval_flags=("--in_memory",), evaluate_in_training=True)
# The bagging question on ten times the images, the CPU's longest configuration (about 160 minutes on our 2-core
# machines: the teacher 20, each seed 68, 13-14 of them per BINGO student): 10,000 training images (the
# evaluation's labelled ones, so the k-NN monitor reads what the table does), a ResNet-18 teacher of 40 epochs
# (6,240 steps; measured, it ends above its untrained network on the linear probe, where the default's 12 epochs
# on 1,000 images end below it), ResNet-18 students of 10 epochs, a quarter of the teacher's schedule: MoCo-v2,
# SEED, BINGO on random, k-means, teacher k-NN and label bags, 2 seeds (bench/RESULTS.md, docs/demo.md).
BAGS_10K = Config(name="bags-10k", train_per_class=1000, val_per_class=None, eval_train_per_class=1000,
                  eval_val_per_class=None, image_size=32,
                  teacher=replace(CPU_TEACHER, arch="resnet18", epochs=40, knn_every=4),
                  student=replace(CPU_STUDENT, epochs=10, flags=LONGER_STUDENT_FLAGS, knn_every=2),
                  seeds=2, input_flags=CPU_INPUT, methods=("moco", "seed", "bingo"),
                  bags=("random", "kmeans", "knn", "label"))
CONFIGS = {
    # The smoke test's: one architecture for teacher and students (three floors instead of five), and each trained
    # network scored by its own training process on its monitor's images (one process fewer per network, and the gpu
    # configurations' path through the chain on the CPU).
    "quick": Config(name="quick", train_per_class=20, val_per_class=10, eval_train_per_class=20, eval_val_per_class=10,
                    image_size=32,
                    teacher=Training("resnet18", epochs=1, batch_size=32, lr=0.03, queue=64),
                    student=Training("resnet18", epochs=1, batch_size=32, lr=0.03, queue=64),
                    input_flags=CPU_INPUT, evaluate_in_training=True),
    # MoCo-v2 as MoCo's one-GPU CIFAR demo sets it for short schedules (key-encoder momentum 0.99, temperature 0.1,
    # one linear projection), the learning rate for the batch, MoCo-v1's views (MoCo-v2's blur, sized for 224 px,
    # wipes out a 32 px image), a queue shorter than the data; see the README for what each measured. Every network
    # is scored on 10,000 labelled training images (k-NN memory, probe training) and the 10,000 test images.
    "cpu": Config(name="cpu", train_per_class=100, val_per_class=50, eval_train_per_class=1000,
                  eval_val_per_class=None, image_size=32,
                  teacher=CPU_TEACHER, student=CPU_STUDENT,
                  input_flags=CPU_INPUT),
    # The same data and recipe, five times the teacher's epochs and twice the students', three seeds.
    "long": Config(name="long", train_per_class=100, val_per_class=50, eval_train_per_class=1000,
                   eval_val_per_class=None, image_size=32,
                   teacher=replace(CPU_TEACHER, epochs=60, knn_every=10),
                   student=replace(CPU_STUDENT, epochs=10, flags=LONGER_STUDENT_FLAGS, knn_every=2),
                   seeds=3, input_flags=CPU_INPUT),
    # The bagging ablation (the paper's §3.1): BINGO students on random, k-means, teacher k-NN and label bags of the
    # default configuration's teacher, beside SEED (a teacher, no bags) and MoCo-v2 (no teacher), 3 seeds each. The
    # students train 8 epochs (the default's BINGO student's k-NN monitor is flat from its second epoch), the last 5
    # with the cross-bag keys, the part of the loss the bags act on.
    "bags": Config(name="bags", train_per_class=100, val_per_class=50, eval_train_per_class=1000,
                   eval_val_per_class=None, image_size=32,
                   teacher=CPU_TEACHER,
                   student=replace(CPU_STUDENT, epochs=8, flags=LONGER_STUDENT_FLAGS, knn_every=2),
                   seeds=3, input_flags=CPU_INPUT, methods=("moco", "seed", "bingo"),
                   bags=("random", "kmeans", "knn", "label")),
    "bags-10k": BAGS_10K,
    # At about equal purity, does it matter which members are wrong? BINGO on the teacher's k-NN bags (75 % pure in
    # bags-10k's run, their wrong members the teacher's nearest images of other classes), on label bags of 75 % purity
    # (their wrong members drawn from the other classes, unrelated to the image), on pure label bags, and on the
    # teacher's bags with their right members, or their wrong ones, redrawn at random (which of the two kinds of
    # member makes the difference), 2 seeds, with the floors and teacher of bags-10k (shared, trained once by
    # whichever runs first).
    "bags-10k-purity": replace(BAGS_10K, name="bags-10k-purity", methods=("bingo",),
                               bags=("knn", "label-75", "label", "knn-redraw-same", "knn-redraw-other"),
                               shares="bags-10k"),
    # The paper's shape of experiment in one sitting on one GPU: all 60,000 images, the small-image stem (why:
    # docs/demo.md), the floors, a ResNet-50 teacher trained almost 4 times longer than its ResNet-18 students (so that
    # it is far ahead of what a student reaches alone; the CPU teacher's recipe with MoCo's CIFAR queue, 4,096, and
    # lr 0.06 at batch 512), the kNN step, and the five students (MoCo-v2, SEED, DisCo, CompRess, BINGO on the
    # teacher's k-NN bags), one seed (--seeds for more). Every stage reads the release in place and holds it on the
    # GPU; every network is scored on all 60,000 labelled training images (k-NN memory, probe training) and the 10,000
    # test images, as its k-NN monitor is. Sizes and times: docs/demo.md.
    "gpu": Config(name="gpu", **GPU_DATA),
    # Whether the bags help, on the GPU: BINGO on random, k-means, teacher k-NN and label bags beside SEED and MoCo-v2,
    # 2 seeds, with the gpu configuration's floors and teacher (shared, trained once by whichever runs first).
    "gpu-bags": Config(name="gpu-bags", methods=("moco", "seed", "bingo"), bags=("random", "kmeans", "knn", "label"),
                       seeds=2, shares="gpu", **GPU_DATA),
}


def run_folder_name(cfg: Config) -> str:
    """The default run folder of ``cfg``: ``demo-<name>``, and ``-teacher<epochs>`` where the teacher's epochs differ
    from its configuration's (a different teacher, so nothing could be shared). The number of seeds is not in the
    name: a run with more seeds keeps the folder's finished stages."""
    epochs = cfg.teacher.epochs
    return f"demo-{cfg.name}" + (f"-teacher{epochs}" if epochs != CONFIGS[cfg.name].teacher.epochs else "")


def data_folder(cfg: Config) -> str:
    """The training stages' images; configurations with the same split share the folder."""
    return f"fmnist-{cfg.train_per_class or 'all'}-{cfg.val_per_class or 'all'}"


def eval_folder(cfg: Config) -> str:
    """The evaluation's images (labelled memory and probe training in train/, queries in val/)."""
    return f"fmnist-{cfg.eval_train_per_class or 'all'}-{cfg.eval_val_per_class or 'all'}"
