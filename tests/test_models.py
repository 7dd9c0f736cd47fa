import pytest
import torch
from torchvision.models import wide_resnet50_2

from models.backbones import BACKBONES, STUDENTS, TEACHERS, build_backbone
from models.heads import mlp_head, student_head, swav_head

WIDTHS = {"resnet18": 512, "resnet34": 512, "efficientnet-b0": 1280, "mobilenetv3_large": 960,
          "resnet50": 2048, "resnet101": 2048, "resnet152": 2048, "resnet50w2": 4096}


def test_registry_names_match_official_scripts():
    assert set(TEACHERS) == {"resnet50", "resnet101", "resnet152", "resnet50w2"}
    assert set(STUDENTS) == {"resnet18", "resnet34", "efficientnet-b0", "mobilenetv3_large"}
    assert set(BACKBONES) == set(WIDTHS)


@pytest.mark.parametrize("name", sorted(WIDTHS))
def test_every_network_builds_and_gives_its_width(name):
    torch.manual_seed(0)
    net = build_backbone(name).eval()
    assert net.feature_dim == WIDTHS[name]
    for size in (32, 48):  # adaptive pooling: any input size works
        with torch.no_grad():
            out = net(torch.randn(2, 3, size, size))
        assert out.shape == (2, WIDTHS[name])
        assert torch.isfinite(out).all()


def test_resnet50w2_is_swav_wide_not_torchvision_wide():
    ours = build_backbone("resnet50w2").state_dict()
    theirs = wide_resnet50_2().state_dict()
    # SwAV's RN50w2 doubles every stage: 128-channel stem, 4096-d output (torchvision's keeps 64 and 2048).
    assert ours["conv1.weight"].shape == (128, 3, 7, 7)
    assert theirs["conv1.weight"].shape == (64, 3, 7, 7)
    assert ours["layer4.2.conv3.weight"].shape == (4096, 1024, 1, 1)
    assert ours["layer1.0.downsample.0.weight"].shape == (512, 128, 1, 1)


def test_resnet50w2_has_the_public_swav_key_names():
    """Key names of swav_RN50w2_400ep_pretrain.pth.tar (after 'module.'), with their shapes."""
    state = build_backbone("resnet50w2").state_dict()
    expected = {
        "conv1.weight": (128, 3, 7, 7),
        "bn1.running_var": (128,),
        "layer1.0.conv1.weight": (128, 128, 1, 1),
        "layer1.0.conv2.weight": (128, 128, 3, 3),
        "layer2.3.bn3.weight": (1024,),
        "layer3.5.conv2.weight": (512, 512, 3, 3),
        "layer4.0.downsample.1.running_mean": (4096,),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert sum(k.endswith(".weight") for k in state) == 106  # 53 conv + 53 BN weights, no fc


def test_heads_have_the_release_shapes():
    moco = mlp_head(2048, 2048, 128)
    assert [k for k in moco.state_dict()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    swav = swav_head()
    assert swav.state_dict()["0.weight"].shape == (8192, 4096)
    assert swav.state_dict()["1.running_mean"].shape == (8192,)
    assert swav.state_dict()["3.weight"].shape == (128, 8192)
    assert student_head(512, 64)(torch.randn(3, 512)).shape == (3, 64)
    assert student_head(512, 64, mlp=False)(torch.randn(3, 512)).shape == (3, 64)


def test_max_pooling_option():
    net = build_backbone("resnet18", pool="max").eval()
    assert isinstance(net.avgpool, torch.nn.AdaptiveMaxPool2d)
    with pytest.raises(ValueError):
        build_backbone("resnet18", pool="median")
    with pytest.raises(ValueError, match="unknown network"):
        build_backbone("vgg16")
