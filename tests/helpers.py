"""Small synthetic data for the tests: image folders and release-format checkpoints made on the spot."""
from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.backbones import build_backbone
from models.heads import mlp_head, swav_head

REPO = Path(__file__).resolve().parent.parent


def make_image_folder(root: Path, classes: int = 3, per_class: int = 4, size: int = 40, seed: int = 0,
                      splits: tuple[str, ...] = ("train",)) -> Path:
    """``root/<split>/class_<c>/img_<i>.png``: class c is a noisy image of one colour, so classes are separable."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(classes, 3))
    for split in splits:
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                noise = rng.normal(0, 40, size=(size, size, 3))
                pixels = np.clip(colours[c] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"img_{i:03d}.png")
    return root


def write_idx_file(path: Path, array: np.ndarray, gzipped: bool = True) -> None:
    """``array`` (uint8) as an idx file (the MNIST format): magic 0x08 0x<dims>, each dimension big-endian, the
    bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with (gzip.open(path, "wb") if gzipped else open(path, "wb")) as handle:
        handle.write(header + array.tobytes())


def make_idx_release(folder: Path, train: int = 30, val: int = 15, classes: int = 3, seed: int = 0) -> Path:
    """A Fashion-MNIST-format release (four gzipped idx files, 28 x 28 gray): class c is a noisy image of one gray
    level, so classes are separable; labels cycle through the classes."""
    rng = np.random.default_rng(seed)
    levels = np.linspace(40, 215, classes)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", train), ("t10k", val)):
        labels = (np.arange(n) % classes).astype(np.uint8)
        images = np.clip(levels[labels][:, None, None] + rng.normal(0, 30, size=(n, 28, 28)), 0, 255).astype(np.uint8)
        write_idx_file(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx_file(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def moco_release(arch: str, path: Path, seed: int = 0, prefix: str = "module.encoder_q.") -> dict:
    """A file in the MoCo-v2 release layout (backbone + fc.0/fc.2 head under module.encoder_q., plus encoder_k)."""
    torch.manual_seed(seed)
    backbone = build_backbone(arch)
    head = mlp_head(backbone.feature_dim, 2048 if backbone.feature_dim >= 2048 else 64, 128)
    state = {f"{prefix}{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"{prefix}fc.{k}": v for k, v in head.state_dict().items()})
    state.update({k.replace("encoder_q", "encoder_k"): v.clone() for k, v in state.items()})
    state["module.queue"] = torch.randn(128, 16)
    torch.save({"epoch": 200, "arch": arch, "state_dict": state, "optimizer": {}}, path)
    return {"backbone": backbone.state_dict(), "head": head.state_dict()}


def seed_release(arch: str, path: Path, seed: int = 0) -> dict:
    """A file in SEED's release layout: ``state_dict`` with the student under ``module.student.*`` (its MLP head,
    hidden width = the backbone's, under ``fc.``), a teacher under ``module.teacher.*``, the queue and pointer."""
    torch.manual_seed(seed)
    backbone = build_backbone(arch)
    head = mlp_head(backbone.feature_dim, backbone.feature_dim, 128)
    teacher = build_backbone("resnet18")
    state = {f"module.student.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"module.student.fc.{k}": v for k, v in head.state_dict().items()})
    state.update({f"module.teacher.{k}": v for k, v in teacher.state_dict().items()})
    state.update({"module.queue": torch.randn(128, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    torch.save({"epoch": 200, "arch": arch, "state_dict": state, "optimizer": {}}, path)
    return {"backbone": backbone.state_dict(), "head": head.state_dict()}


def disco_release(arch: str, path: Path, seed: int = 0) -> dict:
    """A file in DisCo's release layout: ``state_dict`` with the student under ``module.encoder_q.*`` (its head
    ``fc.0``/``fc.2``, 2048 wide), its momentum copy under ``module.encoder_k.*``, the teacher (a ResNet-18 with a
    MoCo head here, to keep the file small) under ``module.teacher_encoder_q.*`` and ``_k.*``, queue and pointer."""
    torch.manual_seed(seed)
    backbone = build_backbone(arch)
    head = mlp_head(backbone.feature_dim, 2048, 128)
    teacher, teacher_head = build_backbone("resnet18"), mlp_head(512, 512, 128)
    state = {}
    for prefix, (net, fc) in {"encoder_q": (backbone, head), "encoder_k": (backbone, head),
                              "teacher_encoder_q": (teacher, teacher_head),
                              "teacher_encoder_k": (teacher, teacher_head)}.items():
        state.update({f"module.{prefix}.{k}": v.clone() for k, v in net.state_dict().items()})
        state.update({f"module.{prefix}.fc.{k}": v.clone() for k, v in fc.state_dict().items()})
    state.update({"module.queue": torch.randn(128, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    torch.save({"epoch": 200, "arch": arch, "state_dict": state, "optimizer": {}}, path)
    return {"backbone": backbone.state_dict(), "head": head.state_dict()}


def compress_release(arch: str, path: Path, one_bank: bool = False, seed: int = 0) -> dict:
    """A file in CompRess's release layout: ``{"opt": argparse options, "model": {module.<backbone>}, "optimizer",
    "epoch"}``, the student with no head, or CompRess-1q's ``fc`` (a linear map to the teacher's 2048)."""
    import argparse

    torch.manual_seed(seed)
    backbone = build_backbone(arch)
    model = {f"module.{k}": v for k, v in backbone.state_dict().items()}
    head = torch.nn.Linear(backbone.feature_dim, 2048)
    if one_bank:
        model.update({f"module.fc.{k}": v for k, v in head.state_dict().items()})
    options = argparse.Namespace(student_arch=arch, teacher_arch="resnet50", compress_memory_size=128000)
    torch.save({"opt": options, "model": model, "optimizer": {}, "epoch": 130}, path)
    return {"backbone": backbone.state_dict(), "head": head.state_dict() if one_bank else {}}


def swav_release(path: Path, seed: int = 0, arch: str = "resnet50w2", hidden: int = 8192) -> dict:
    torch.manual_seed(seed)
    backbone = build_backbone(arch)
    head = swav_head(backbone.feature_dim, hidden, 128)
    state = {f"module.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"module.projection_head.{k}": v for k, v in head.state_dict().items()})
    state["module.prototypes.weight"] = torch.randn(3000, 128)
    torch.save(state, path)
    return {"backbone": backbone.state_dict(), "head": head.state_dict()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(TORCH_HOME=str(tmp_path / "torch_home"), MPLCONFIGDIR=str(tmp_path / "mpl"), PYTHONPATH=str(REPO),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONDONTWRITEBYTECODE="1")
    return env


def run_script(script: str, args: list[str], tmp_path: Path, nproc: int = 1, timeout: int = 600,
               check: bool = True) -> subprocess.CompletedProcess:
    """Run an entry point as a user would: plain python for one process, torchrun (gloo) for several."""
    if nproc == 1:
        cmd = [sys.executable, str(REPO / script), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={free_port()}", str(REPO / script), *args]
    result = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(tmp_path), capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def calibrated_teacher(arch: str, data_dir: Path, path: Path, image_size: int = 32, seed: int = 0,
                       stem: str = "imagenet") -> None:
    """A MoCo-format teacher whose keys separate the images: a random backbone whose head input is centred and
    whitened on this folder (a random network alone maps every image to nearly the same direction)."""
    from datasets.folders import IndexedImageFolder
    from datasets.transforms import eval_transform

    torch.manual_seed(seed)
    backbone = build_backbone(arch, stem=stem).eval()
    folder = IndexedImageFolder(Path(data_dir) / "train", eval_transform(image_size))
    with torch.no_grad():
        features = torch.stack([backbone(folder[i][0][None])[0] for i in range(len(folder))])
    mean, std = features.mean(0), features.std(0) + 1e-6
    head = mlp_head(backbone.feature_dim, 256, 128)
    with torch.no_grad():
        head[0].weight /= std
        head[0].bias.copy_(-head[0].weight @ mean)
    state = {f"module.encoder_q.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"module.encoder_q.fc.{k}": v for k, v in head.state_dict().items()})
    torch.save({"epoch": 200, "arch": arch, "state_dict": state}, path)


def run_cases(module: str, cases: list[list[str]], tmp_path: Path, timeout: int = 600) -> list[dict]:
    """Each argument list of ``cases`` through ``module``'s main in one process (``tests/entry_cases.py``): the
    exit status, stdout and stderr a user would see for each."""
    import json

    cases_file, results_file = tmp_path / "cases.json", tmp_path / "results.json"
    cases_file.write_text(json.dumps([[str(a) for a in args] for args in cases]))
    cmd = [sys.executable, str(REPO / "tests" / "entry_cases.py"), module, str(cases_file), str(results_file)]
    done = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(tmp_path), capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return json.loads(results_file.read_text())


def recording_stand_in(bin_dir: Path, command: str, body: str) -> None:
    """An executable ``bin_dir/command`` (put ``bin_dir`` first on PATH) that runs the bash ``body``, in which
    ``record "$@"`` keeps the given arguments as one call in the folder ``$RECORD_DIR`` (read by ``recorded_calls``)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    stand_in = bin_dir / command
    stand_in.write_text("#!/usr/bin/env bash\n"
                        'record() { printf \'%s\\0\' "$@" > "$RECORD_DIR/call.$(date +%s%N)"; }\n' + body)
    stand_in.chmod(0o755)


def recorded_calls(folder: Path) -> list[list[str]]:
    """The argument lists the stand-ins of ``recording_stand_in`` kept in ``folder``, in the order of the calls."""
    return [p.read_text().split("\0")[:-1] for p in sorted(folder.iterdir())]


def distill_config(**overrides):
    """``main_distill.py``'s step settings at its flags' defaults (the method's release defaults for ``method``),
    with ``overrides``: how a test builds a method's step without the entry point."""
    import dataclasses

    import main_distill
    from engine.distillation import distill_config as from_options
    from engine.distillation import resolve_method_defaults
    from engine.options import DistillOptions, from_argv

    argv = ["main_distill.py"] + ([f"--method={overrides['method']}"] if "method" in overrides else [])
    config = from_options(resolve_method_defaults(from_argv(DistillOptions, main_distill.FLAGS, argv)))
    return dataclasses.replace(config, **overrides)


BAG_FLAGS = ("corr_npy", "clus_pos_num")  # main_distill.py's flags that act for --method=bingo only
TEACHER_FLAGS = ("t_arch", "pretrain_path")  # and those no --method=moco run takes


def without(args: list[str], *names: str) -> list[str]:
    """``args`` less the flags ``names``: a run refuses a flag it would ignore (``FLAG_SCOPE``)."""
    return [a for a in args if a.split("=")[0].lstrip("-").removeprefix("no") not in names]
