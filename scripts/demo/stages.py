"""Running the demo: each stage is one of the project's entry points (the floors: their main_lincls.py evaluations in
one process), shown live, skipped when its output exists."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from datasets.arrays import release_kind
from datasets.folders import DatasetError, open_split
from models.backbones import FLOORS
from scripts.demo.configs import BAG_FLAGS, Config, Training, variants
from scripts.fashion_mnist import DEBIAN_DIR, prepare
from utils.io import atomic_json

REPO = Path(__file__).resolve().parent.parent.parent
SEPARATOR = "---"  # between two main_lincls.py command lines run in one process (scripts.demo.evaluations)


class Runner:
    """Runs entry points as subprocesses with live output, records each stage's wall time in the run folder."""

    def __init__(self, run_dir: Path, device: str) -> None:
        self.run_dir = run_dir
        self.device = device
        self.times_path = run_dir / "stage_times.json"
        self.times = json.loads(self.times_path.read_text()) if self.times_path.is_file() else {}

    def stage(self, name: str, done: Path, script: str, args: list[str]) -> None:
        """One entry point (``script``, relative to the repository) run with ``args``; skipped if ``done`` exists."""
        self._run(name, [done], [str(REPO / script), *args, f"--device={self.device}"], f"{script} {' '.join(args)}")

    def evaluations(self, name: str, evaluations: dict[Path, list[str]]) -> None:
        """Several frozen ``main_lincls.py`` evaluations (output folder -> its flags) in one process
        (``scripts.demo.evaluations``: one start-up, the images held once); skipped once each has its results.json."""
        argv = ["-m", "scripts.demo.evaluations"]
        for i, args in enumerate(evaluations.values()):
            argv += [SEPARATOR] * bool(i) + [*args, f"--device={self.device}"]
        shown = f" {SEPARATOR} ".join(f"main_lincls.py {' '.join(args)}" for args in evaluations.values())
        self._run(name, [out / "results.json" for out in evaluations], argv, f"-m scripts.demo.evaluations {shown}")

    def _run(self, name: str, done: list[Path], argv: list[str], shown: str) -> None:
        if all(path.exists() for path in done):
            print(f"[{name}] done already ({', '.join(str(p.relative_to(self.run_dir)) for p in done)}), skipped",
                  flush=True)
            return
        print(f"[{name}] python {shown}", flush=True)
        start = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        process = subprocess.Popen([sys.executable, *argv], cwd=self.run_dir, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        try:
            for line in process.stdout:
                # absl's INFO/WARNING lines (libraries' own logging; only a message's first line starts so, which is
                # why faiss's loader is quieted where faiss is imported: engine.features.import_faiss)
                if not line.startswith(("I1", "W1")):
                    print(f"[{name}] {line}", end="", flush=True)
        finally:  # stopped (SIGTERM, Ctrl-C): the stage stops too, between two steps, keeping its checkpoint
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    process.kill()
        if process.wait():
            raise SystemExit(f"[{name}] failed (exit {process.returncode}); run the demo again to resume")
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start
        atomic_json(self.times, self.times_path)


def acting(args: list[str], recipe: tuple[str, ...]) -> list[str]:
    """The flags of ``recipe`` that act in the ``main_distill.py`` run ``args`` (+ ``recipe``) describe, judged by
    its own ``FLAG_SCOPE`` (it refuses a flag where it would do nothing; a recipe is shared by several methods)."""
    import main_distill
    from engine.distillation import FLAG_SCOPE, resolve_method_defaults
    from engine.options import DistillOptions, from_argv

    opts = resolve_method_defaults(from_argv(DistillOptions, main_distill.FLAGS, ["main_distill.py", *args, *recipe]))

    def name(flag: str) -> str:
        bare = flag.split("=")[0].removeprefix("--")
        return bare[2:] if bare.startswith("no") and bare[2:] in FLAG_SCOPE else bare

    return [f for f in recipe if name(f) not in FLAG_SCOPE or FLAG_SCOPE[name(f)][1](opts)]


def train_args(cfg: Config, stage: Training, data: Path, out: Path, method: str, seed: int,
               extra: tuple[str, ...] = ()) -> list[str]:
    args = [f"--method={method}", f"--s_arch={stage.arch}", f"--data_dir={data}", f"--output_dir={out}",
            f"--image_size={cfg.image_size}", f"--batch_size={stage.batch_size}", f"--moco_k={stage.queue}",
            f"--init_lr={stage.lr}", f"--end_epoch={stage.epochs}", f"--num_workers={cfg.workers}", f"--seed={seed}",
            f"--knn_monitor_freq={stage.knn_every}", "--report_freq=50", "--save_freq=0", "--resume=auto",
            f"--stem={cfg.stem}", *cfg.input_flags, *(["--final_evaluation"] if cfg.evaluate_in_training else [])]
    return [*args, *acting([*args, *extra], stage.flags), *extra]


def evaluation_args(cfg: Config, eval_data: Path, out: Path, arch: str, weights: list[str]) -> list[str]:
    """``main_lincls.py``'s flags for the logistic-regression probe and the k-NN classifier of ``arch`` with
    ``weights`` (a checkpoint or a floor) on features embedded once, on the evaluation images, into ``out``."""
    stem = [] if arch in FLOORS else [f"--stem={cfg.stem}"]
    return [f"--arch={arch}", *weights, *stem, f"--data_dir={eval_data}", f"--image_size={cfg.image_size}",
            f"--batch_size={cfg.student.batch_size * 4}", f"--num_workers={cfg.workers}", "--protocol=logreg",
            "--with_knn", *cfg.eval_flags, f"--output_dir={out}"]


def evaluate(runner: Runner, cfg: Config, eval_data: Path, folder: str, arch: str, weights: list[str]) -> None:
    """``folder``'s network scored by ``main_lincls.py`` (``evaluation_args``); ``results.json`` is written last."""
    out = runner.run_dir / folder / "evaluation"
    runner.stage(f"{folder}: evaluation", out / "results.json", "main_lincls.py",
                 evaluation_args(cfg, eval_data, out, arch, weights))


def floors(cfg: Config) -> dict[str, tuple[str, list[str], str]]:
    """Folder -> (arch, main_lincls flags, label) of each floor: raw pixels; the teacher's and the students' network
    untrained (the very weights their seed-0 runs start from), as initialised and with BatchNorm statistics
    re-estimated on the data (an untrained network's running statistics are the identity; every trained one has
    data statistics)."""
    from scripts.demo.configs import ARCH_LABELS

    out = {"floors/pixels": ("pixels", [], "Raw pixels (32×32, no network)")}
    for arch in dict.fromkeys((cfg.teacher.arch, cfg.student.arch)):
        label = ARCH_LABELS.get(arch, arch)
        out[f"floors/untrained-{arch}"] = (arch, ["--untrained", "--seed=0"], f"{label}, untrained")
        out[f"floors/untrained-{arch}-data-bn"] = (arch, ["--untrained", "--seed=0", "--recompute_bn"],
                                                   f"{label}, untrained, BN statistics of the data")
    return out


def neighbours_file(run_dir: Path, bagging: str) -> Path:
    """The kNN step's output for one kind of bag (the teacher's k-NN bags keep the name of the earlier demos)."""
    return run_dir / ("neighbours.npy" if bagging == "knn" else f"neighbours-{bagging}.npy")


def student_folder(model: str, seed: int) -> str:
    return f"students/{model}/seed{seed}"


def run_stages(cfg: Config, run_dir: Path, data_dir: Path, eval_dir: Path, device: str,
               source: Path | None = None, floors_first: bool = True, stop_after: str | None = None
               ) -> tuple[Path, Path]:
    """Every stage of ``cfg`` in order: data, floors (unless not ``floors_first``), teacher, kNN step(s), students,
    each evaluated; ``stop_after="teacher"`` stops once the teacher is scored. Returns the training and evaluation
    data folders."""
    data = training_data(cfg, data_dir, source)
    # a network scored by its own training process is scored on the training split's images: the floors are too
    eval_data = (data if cfg.in_place or cfg.evaluate_in_training else
                 prepare(eval_dir, cfg.eval_train_per_class, cfg.eval_val_per_class, source=source).resolve())
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.shares:
        share(run_dir, run_dir.parent / f"demo-{cfg.shares}")
    runner = Runner(run_dir, device)
    if floors_first:  # in one process: one start-up, the evaluation images read (or held) once
        outs = {folder: run_dir / folder / "evaluation" for folder in floors(cfg)}
        runner.evaluations("floors: evaluation",
                           {outs[folder]: evaluation_args(cfg, eval_data, outs[folder], arch, weights)
                            for folder, (arch, weights, _) in floors(cfg).items()})

    teacher = run_dir / "teacher" / "final.pth"
    runner.stage("teacher", teacher, "main_distill.py",
                 train_args(cfg, cfg.teacher, data, run_dir / "teacher", "moco", seed=0))
    evaluate(runner, cfg, eval_data, "teacher", cfg.teacher.arch, [f"--pretrained={teacher}"])
    if stop_after == "teacher":
        return data, eval_data
    for bagging in cfg.bags:
        neighbours = neighbours_file(run_dir, bagging)
        kind = BAG_FLAGS[bagging][0].removeprefix("--bagging=")  # label-75 is a kind of label bags
        uses_teacher = kind in ("knn", "kmeans")
        runner.stage(f"kNN step ({bagging} bags)", neighbours.with_suffix(".json"), "run_knn.py",  # .json: last
                     [f"--data_dir={data}", "--clus_pos_num=5", f"--corr_name={neighbours}", *BAG_FLAGS[bagging],
                      *([f"--arch={cfg.teacher.arch}", f"--ckpt_name={teacher}", f"--stem={cfg.stem}",
                         f"--image_size={cfg.image_size}", f"--num_workers={cfg.workers}",
                         f"--batch_size={cfg.teacher.batch_size}", *cfg.knn_step_flags] if uses_teacher else []),
                      *([f"--kmeans_clusters={cfg.kmeans_clusters}"] if kind == "kmeans" else [])])
    for seed in range(cfg.seeds):
        for model, method, bagging in variants(cfg):
            folder = student_folder(model, seed)
            distilled = () if method == "moco" else (f"--t_arch={cfg.teacher.arch}", f"--pretrain_path={teacher}")
            if bagging:
                distilled += (f"--corr_npy={neighbours_file(run_dir, bagging)}",)
            runner.stage(folder, run_dir / folder / "final.pth", "main_distill.py",
                         train_args(cfg, cfg.student, data, run_dir / folder, method, seed, distilled))
            evaluate(runner, cfg, eval_data, folder, cfg.student.arch,
                     [f"--pretrained={run_dir / folder / 'final.pth'}"])
    return data, eval_data


def training_data(cfg: Config, data_dir: Path, source: Path | None) -> Path:
    """The training stages' images: Fashion-MNIST's release folder itself for an ``in_place`` configuration
    (``source``, default Debian's; checked here), else the class-balanced PNG subset written into ``data_dir``."""
    if not cfg.in_place:
        return prepare(data_dir, cfg.train_per_class, cfg.val_per_class, source=source).resolve()
    release = Path(source or DEBIAN_DIR).resolve()
    if release_kind(release) != "idx":
        files = "train-images-idx3-ubyte.gz and its three sibling files"
        if source:
            raise DatasetError(f"--fmnist_dir={source} holds no {files}: give the folder that holds them")
        raise DatasetError(f"Fashion-MNIST is not installed ({DEBIAN_DIR} holds no {files}): install it with sudo "
                           "apt-get install dataset-fashion-mnist, or give --fmnist_dir")
    for split in ("train", "val"):
        open_split(release, split, "--fmnist_dir")
    return release


def share(run_dir: Path, other: Path) -> None:
    """Make ``run_dir``'s floors/ and teacher/ those of the configuration run in ``other`` (relative symlinks): they
    train and are scored once, by whichever configuration runs first."""
    for name in ("floors", "teacher"):
        (other / name).mkdir(parents=True, exist_ok=True)
        link = run_dir / name
        if not link.is_symlink():
            if link.exists():
                raise SystemExit(f"{link} exists and is not the link to {other / name} this configuration shares")
            link.symlink_to(os.path.relpath(other / name, run_dir))


def load_average() -> list[float]:
    return list(os.getloadavg())
