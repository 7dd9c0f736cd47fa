"""Checkpoints never run code: a crafted pickle is refused before it can act, the plain types releases pickle still
load, and a file the user trusts converts once into one that loads."""
import argparse
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from models.checkpoints import CheckpointError, read_weights, torch_load

from helpers import REPO, compress_release, make_image_folder, run_cases, subprocess_env


class Payload:
    """Unpickling this calls a shell command that leaves a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted_teacher(tmp_path):
    """A MoCo-format "teacher" whose pickle would run a command."""
    marker = tmp_path / "ran"
    path = tmp_path / "teacher.pth"
    torch.save({"state_dict": {"module.encoder_q.conv1.weight": torch.zeros(1)}, "arch": Payload(marker)}, path)
    return path, marker


def test_a_checkpoint_whose_pickle_runs_code_is_refused_without_running_it(tmp_path):
    path, marker = crafted_teacher(tmp_path)
    with pytest.raises(CheckpointError) as error:
        torch_load(path)
    assert not marker.exists()
    message = str(error.value)
    assert "system" in message and "can run any code" in message and "scripts.trust_checkpoint" in message
    assert "\n" not in message


@pytest.mark.parametrize("module,args", [
    ("run_knn", ["--arch=resnet18", "--ckpt_name={ckpt}", "--corr_name={tmp}/n.npy"]),
    ("main_distill", ["--method=seed", "--t_arch=resnet18", "--pretrain_path={ckpt}", "--output_dir={tmp}/run",
                      "--batch_size=4", "--moco_k=8"]),
    ("main_lincls", ["--arch=resnet18", "--pretrained={ckpt}", "--output_dir={tmp}/probe", "--protocol=knn"]),
])
def test_each_entry_point_refuses_the_crafted_checkpoint_before_it_runs(tmp_path, module, args):
    path, marker = crafted_teacher(tmp_path)
    make_image_folder(tmp_path / "data", splits=("train", "val"))
    args = [a.format(ckpt=path, tmp=tmp_path) for a in args] + [f"--data_dir={tmp_path / 'data'}", "--device=cpu"]
    (result,) = run_cases(module, [args], tmp_path)
    assert result["status"] == 2 and not marker.exists(), result
    assert "unpickling them can run any code" in result["stderr"]


def test_the_plain_types_releases_pickle_still_load(tmp_path):
    compress_release("resnet18", tmp_path / "compress.pth")  # its options are an argparse.Namespace
    assert read_weights(tmp_path / "compress.pth").fmt == "compress"
    torch.save({"epoch": np.int64(7), "best_acc1": np.float64(61.5), "acc": np.float32(1.0),
                "opt": argparse.Namespace(lr=0.1)}, tmp_path / "numpy.pth")
    loaded = torch_load(tmp_path / "numpy.pth")
    assert loaded["epoch"] == 7 and loaded["best_acc1"] == 61.5 and loaded["opt"].lr == 0.1


def test_a_trusted_file_converts_once_into_one_that_loads(tmp_path):
    path, marker = crafted_teacher(tmp_path)
    torch.save({"state_dict": {"w": torch.ones(2)}, "config": argparse.Namespace(depth=18),
                "stats": np.arange(3), "misc": [np.float64(0.5), "text"]}, tmp_path / "objects.pth")
    target = tmp_path / "objects.plain.pth"
    result = subprocess.run([sys.executable, "-m", "scripts.trust_checkpoint", str(tmp_path / "objects.pth"),
                             str(target)], capture_output=True, text=True, env=subprocess_env(tmp_path), cwd=REPO)
    assert result.returncode == 0, result.stderr
    converted = torch_load(target)
    assert torch.equal(converted["state_dict"]["w"], torch.ones(2)) and converted["config"] == {"depth": 18}
    assert torch.equal(converted["stats"], torch.arange(3)) and converted["misc"] == [0.5, "text"]
