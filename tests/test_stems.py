"""The small-image ResNet stem (``--stem=small``): its shapes, and a checkpoint of each stem through each entry
point, the other stem refused with one line naming the flag before any data is read."""
import json

import pytest
import torch

from models.backbones import build_backbone, stem_of
from models.checkpoints import CheckpointError, load_backbone

from helpers import calibrated_teacher, make_image_folder, moco_release, run_cases

USER_ERROR = 2


def first_stage_input(net: torch.nn.Module, size: int) -> tuple[int, ...]:
    seen = []
    hook = net.layer1.register_forward_pre_hook(lambda module, inputs: seen.append(tuple(inputs[0].shape)))
    with torch.no_grad():
        net.eval()(torch.randn(1, 3, size, size))
    hook.remove()
    return seen[0]


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet50w2"])
def test_the_small_stem_keeps_a_32_px_image_at_32_px_into_the_first_stage(arch):
    small, imagenet = build_backbone(arch, stem="small"), build_backbone(arch)
    assert first_stage_input(small, 32)[2:] == (32, 32)
    assert first_stage_input(imagenet, 32)[2:] == (8, 8)
    assert first_stage_input(imagenet, 224)[2:] == (56, 56)
    assert small.feature_dim == imagenet.feature_dim and small.stem == "small" and imagenet.stem == "imagenet"
    # the same parameter names, so checkpoints keep their layout; only conv1's kernel tells the stems apart
    ours, theirs = small.state_dict(), imagenet.state_dict()
    assert list(ours) == list(theirs)
    assert ours["conv1.weight"].shape[-2:] == (3, 3) and theirs["conv1.weight"].shape[-2:] == (7, 7)
    assert stem_of(ours) == "small" and stem_of(theirs) == "imagenet"


def test_networks_without_a_resnet_stem_refuse_the_small_one():
    for name in ("efficientnet-b0", "mobilenetv3_large", "pixels"):
        with pytest.raises(ValueError, match="use --stem=imagenet"):
            build_backbone(name, stem="small")
    assert stem_of(build_backbone("mobilenetv3_large").state_dict()) is None


def test_a_checkpoint_of_the_other_stem_is_refused_naming_the_flag(tmp_path):
    torch.save(build_backbone("resnet18", stem="small").state_dict(), tmp_path / "small.pth")
    moco_release("resnet18", tmp_path / "imagenet.pth.tar")
    net, weights = load_backbone("resnet18", tmp_path / "small.pth", stem="small")
    assert net.stem == "small" and weights.fmt == "torchvision"
    with pytest.raises(CheckpointError, match=r"small stem \(conv1 3x3\).*pass --stem=small$"):
        load_backbone("resnet18", tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match=r"format: moco.*imagenet stem.*pass --stem=imagenet$"):
        load_backbone("resnet18", tmp_path / "imagenet.pth.tar", stem="small")


def one_line_error(result: dict, named: str) -> None:
    assert result["status"] == USER_ERROR, result
    lines = result["stderr"].strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result["stderr"]


def test_each_entry_point_takes_its_stem_and_refuses_the_other(tmp_path):
    data = make_image_folder(tmp_path / "data", classes=3, per_class=4, size=28, splits=("train", "val"))
    calibrated_teacher("resnet18", data, tmp_path / "small.pth.tar", stem="small")
    calibrated_teacher("resnet18", data, tmp_path / "imagenet.pth.tar")
    common = [f"--data_dir={data}", "--image_size=32", "--num_workers=0"]

    def knn(teacher, out, *extra):
        return ["--arch=resnet18", f"--ckpt_name={tmp_path / teacher}", "--clus_pos_num=2", f"--corr_name={out}",
                *common, *extra]

    small, wrong, wrong_way = run_cases("run_knn", [
        knn("small.pth.tar", tmp_path / "nn.npy", "--stem=small"),
        knn("small.pth.tar", tmp_path / "no.npy"),
        knn("imagenet.pth.tar", tmp_path / "no2.npy", "--stem=small")], tmp_path)
    assert small["status"] == 0, small
    assert json.loads((tmp_path / "nn.json").read_text())["teacher_stem"] == "small"
    one_line_error(wrong, "pass --stem=small")
    one_line_error(wrong_way, "pass --stem=imagenet")
    assert "embed" not in wrong["stdout"] + wrong["stderr"]  # stopped before any image was read
    assert not (tmp_path / "no.npy").exists() and not (tmp_path / "no2.npy").exists()

    def distill(out, *extra):
        return ["--t_arch=resnet18", f"--pretrain_path={tmp_path / 'small.pth.tar'}", f"--corr_npy={tmp_path / 'nn'}",
                "--clus_pos_num=2", "--batch_size=4", "--moco_k=8", "--seed=0", "--end_epoch=1",
                f"--output_dir={tmp_path / out}", *common, *extra]

    cases = [distill("run", "--stem=small"), distill("refused"),
             distill("arch", "--stem=small", "--s_arch=efficientnet-b0")]
    trained, refused, arch = run_cases("main_distill", cases, tmp_path)
    assert trained["status"] == 0, trained
    final = torch.load(tmp_path / "run" / "final.pth", weights_only=True)
    assert final["bingo"]["stem"] == "small" and final["state_dict"]["module.encoder_q.conv1.weight"].shape[-1] == 3
    assert json.loads((tmp_path / "run" / "flags.json").read_text())["stem"] == "small"
    one_line_error(refused, "pass --stem=small")
    assert not (tmp_path / "refused" / "checkpoint.pth").exists()
    one_line_error(arch, "--s_arch=efficientnet-b0: use --stem=imagenet")
    (resumed,) = run_cases("main_distill", [distill("run", "--end_epoch=2", "--resume=auto")], tmp_path)
    one_line_error(resumed, "pass --stem=small to resume it")  # checked before the teacher loads

    def lincls(out, *extra):
        return ["--arch=resnet18", f"--pretrained={tmp_path / 'run' / 'final.pth'}", "--protocol=knn",
                "--knn_k=2", "--batch_size=8", f"--output_dir={tmp_path / out}", *common, *extra]

    scored, refused = run_cases("main_lincls", [lincls("eval", "--stem=small"), lincls("no")], tmp_path)
    assert scored["status"] == 0, scored
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["stem"] == "small"
    one_line_error(refused, "pass --stem=small")
    assert "embed" not in refused["stdout"] + refused["stderr"]
