import pytest
import torch

from models.backbones import build_backbone
from models.checkpoints import CheckpointError, load_backbone, load_teacher, read_weights

from helpers import moco_release, run_script, swav_release


def _equal(module, state):
    return all(torch.equal(module.state_dict()[k], v) for k, v in state.items())


def test_moco_release_round_trip(tmp_path):
    path = tmp_path / "moco.pth.tar"
    saved = moco_release("resnet50", path)
    backbone, head, weights = load_teacher("resnet50", path)
    assert weights.fmt == "moco"
    assert _equal(backbone, saved["backbone"]) and _equal(head, saved["head"])


def test_swav_release_round_trip(tmp_path):
    path = tmp_path / "swav.pth.tar"
    saved = swav_release(path, arch="resnet50", hidden=64)
    backbone, head, weights = load_teacher("resnet50", path)
    assert weights.fmt == "swav" and weights.dropped == ["prototypes.weight"]
    assert _equal(backbone, saved["backbone"]) and _equal(head, saved["head"])
    assert isinstance(head[1], torch.nn.BatchNorm1d)


@pytest.mark.parametrize("mlp", [True, False])
def test_a_network_trained_here_loads_as_a_teacher_with_its_head(tmp_path, mlp):
    """What main_distill.py --method=moco saves (MLP head, or one linear layer with --nomlp) is a teacher."""
    from models.checkpoints import to_official_keys
    from models.distiller import Embedder
    from models.heads import student_head

    student = Embedder(build_backbone("resnet18"), student_head(512, 128, mlp=mlp))
    torch.save({"bingo": {"arch": "resnet18", "method": "moco"}, "state_dict": to_official_keys(student)},
               tmp_path / "final.pth")
    backbone, head, weights = load_teacher("resnet18", tmp_path / "final.pth")
    assert weights.fmt == "bingo" and len(head) == (3 if mlp else 1)
    assert _equal(backbone, student.backbone.state_dict()) and _equal(head, student.head.state_dict())


def test_torchvision_state_dict_round_trip(tmp_path):
    net = build_backbone("resnet18")
    state = {**net.state_dict(), "fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}
    torch.save(state, tmp_path / "tv.pth")
    loaded, weights = load_backbone("resnet18", tmp_path / "tv.pth")
    assert weights.fmt == "torchvision" and sorted(weights.dropped) == ["fc.bias", "fc.weight"]
    assert _equal(loaded, net.state_dict())
    with pytest.raises(CheckpointError, match="no projection head"):
        load_teacher("resnet18", tmp_path / "tv.pth")


def test_renamed_key_fails_naming_file_format_and_key(tmp_path):
    path = tmp_path / "broken.pth.tar"
    moco_release("resnet18", path)
    obj = torch.load(path, weights_only=True)
    obj["state_dict"]["module.encoder_q.layer4.1.conv2.weightX"] = obj["state_dict"].pop(
        "module.encoder_q.layer4.1.conv2.weight")
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as error:
        load_backbone("resnet18", path)
    message = str(error.value)
    assert str(path) in message and "moco" in message
    assert "layer4.1.conv2.weight" in message and "layer4.1.conv2.weightX" in message


def test_wrong_architecture_fails_with_shapes(tmp_path):
    path = tmp_path / "r18.pth.tar"
    moco_release("resnet18", path)
    with pytest.raises(CheckpointError, match="missing"):
        load_backbone("resnet50", path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_weights(tmp_path / "nope.pth")


@pytest.mark.parametrize("script,flag", [("run_knn.py", "--ckpt_name"), ("main_distill.py", "--pretrain_path"),
                                          ("main_lincls.py", "--pretrained")])
def test_every_entry_point_stops_on_a_renamed_key_before_reading_data(tmp_path, script, flag):
    arch = "resnet18"
    path = tmp_path / "broken.pth.tar"
    moco_release(arch, path)
    obj = torch.load(path, weights_only=True)
    obj["state_dict"]["module.encoder_q.layer4.0.bn1.weight_renamed"] = obj["state_dict"].pop(
        "module.encoder_q.layer4.0.bn1.weight")
    torch.save(obj, path)
    arch_flag = {"run_knn.py": "--arch", "main_distill.py": "--t_arch", "main_lincls.py": "--arch"}[script]
    # The split folders exist (checked before any output folder is made) but hold no image: if the script read data
    # first, the error would name them instead.
    for split in ("train", "val"):
        (tmp_path / "no_data_here" / split).mkdir(parents=True)
    args = [f"{flag}={path}", f"{arch_flag}={arch}", f"--data_dir={tmp_path / 'no_data_here'}", "--batch_size=4"]
    args += {"run_knn.py": [f"--corr_name={tmp_path / 'out.npy'}"],
             "main_distill.py": [f"--output_dir={tmp_path / 'out'}", "--moco_k=16"],
             "main_lincls.py": [f"--output_dir={tmp_path / 'out'}"]}[script]
    result = run_script(script, args, tmp_path, check=False)
    assert result.returncode != 0
    assert "layer4.0.bn1.weight" in result.stderr, result.stderr
    assert "no_data_here" not in result.stderr
