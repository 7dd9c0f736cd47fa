"""The detectron2 export: every backbone tensor under detectron2's ResNet name (built here from detectron2's own
stage layout, not from the converter's rules), bit for bit, nothing left unconverted; the command reads any format
and writes detectron2's model-zoo pickle; the configs match what the export holds."""
import pickle
import re
import subprocess
import sys

import pytest
import torch

from models.backbones import build_backbone
from models.detectron2 import FPN_PREFIX, detectron2_name, to_detectron2

from helpers import REPO, moco_release, subprocess_env

# detectron2's ResNet.make_default_stages: blocks per stage, and its block's convolutions
BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}
NORM_FIELDS = ("weight", "bias", "running_mean", "running_var")


def detectron2_names(depth: int) -> set[str]:
    """The parameter and buffer names of detectron2's ResNet of ``depth`` (stem, res2..res5; a shortcut in a stage's
    first block when its channels or stride change: every stage of a bottleneck ResNet, res3..res5 of a basic one)."""
    names = {"stem.conv1.weight", *(f"stem.conv1.norm.{f}" for f in NORM_FIELDS)}
    convs = ("conv1", "conv2") if depth < 50 else ("conv1", "conv2", "conv3")
    for stage, count in enumerate(BLOCKS[depth], start=2):
        for block in range(count):
            parts = list(convs) + (["shortcut"] if block == 0 and (depth >= 50 or stage > 2) else [])
            for part in parts:
                names |= {f"res{stage}.{block}.{part}.weight", *(f"res{stage}.{block}.{part}.norm.{f}"
                                                                 for f in NORM_FIELDS)}
    return names


@pytest.mark.parametrize("arch,depth", [("resnet18", 18), ("resnet34", 34), ("resnet50", 50)])
def test_every_tensor_gets_detectron2s_name_unchanged_and_nothing_is_left(arch, depth):
    torch.manual_seed(depth)
    state = build_backbone(arch).state_dict()
    exported = to_detectron2(state)
    assert {name.removeprefix(FPN_PREFIX) for name in exported} == detectron2_names(depth)
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert len(exported) == len(state) - len(counters)
    for key, value in state.items():
        if key not in counters:
            assert exported[FPN_PREFIX + detectron2_name(key)] is value  # the very tensor: bit for bit


def test_a_key_with_no_place_in_detectron2_is_an_error():
    with pytest.raises(KeyError, match="fc.weight has no place"):
        detectron2_name("fc.weight")


def test_the_command_exports_a_released_checkpoint_into_detectron2s_pickle(tmp_path):
    saved = moco_release("resnet18", tmp_path / "moco.pth.tar", seed=4)["backbone"]
    out = tmp_path / "r18.pkl"
    done = subprocess.run([sys.executable, "-m", "scripts.export_detectron2", "--arch=resnet18",
                           str(tmp_path / "moco.pth.tar"), str(out)], cwd=REPO, env=subprocess_env(tmp_path),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with open(out, "rb") as handle:  # the file this test just wrote
        exported = pickle.load(handle)
    assert exported["matching_heuristics"] is False and "moco" in exported["__author__"]
    model = exported["model"]
    assert set(model) == {FPN_PREFIX + n for n in detectron2_names(18)}
    for key, value in saved.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(torch.from_numpy(model[FPN_PREFIX + detectron2_name(key)]), value), key
    refused = subprocess.run([sys.executable, "-m", "scripts.export_detectron2", "--arch=resnet50",
                              str(tmp_path / "moco.pth.tar"), str(tmp_path / "x.pkl")], cwd=REPO,
                             env=subprocess_env(tmp_path), capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stderr.startswith("error: ") and not (tmp_path / "x.pkl").exists()


def test_the_configs_build_the_network_the_export_holds():
    base = (REPO / "detection" / "Base-RCNN-FPN-SyncBN.yaml").read_text()
    for setting in ('NAME: "build_resnet_fpn_backbone"', "STRIDE_IN_1X1: False", 'FORMAT: "RGB"',
                    "PIXEL_MEAN: [123.675, 116.280, 103.530]", "PIXEL_STD: [58.395, 57.120, 57.375]",
                    "RES2_OUT_CHANNELS: 64", "FREEZE_AT: 0"):
        assert setting in base, setting
    from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

    mean = [float(x) for x in re.search(r"PIXEL_MEAN: \[(.*)\]", base).group(1).split(",")]
    std = [float(x) for x in re.search(r"PIXEL_STD: \[(.*)\]", base).group(1).split(",")]
    assert mean == pytest.approx([255 * m for m in IMAGENET_MEAN])
    assert std == pytest.approx([255 * s for s in IMAGENET_STD])
    coco, voc = ((REPO / "detection" / name).read_text() for name in ("coco_R18_FPN_1x.yaml", "voc_R18_FPN_24k.yaml"))
    assert "MASK_ON: True" in coco and "MASK_ON: False" in voc and "NUM_CLASSES: 20" in voc
    assert all('_BASE_: "Base-RCNN-FPN-SyncBN.yaml"' in text and "DEPTH: 18" in text for text in (coco, voc))
