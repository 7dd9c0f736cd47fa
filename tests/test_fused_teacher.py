"""One teacher forward for several views with BatchNorm in train mode: each view normalised by its own statistics
and the running statistics updated view after view, as one forward per view does; through group shuffle-BN on two
gloo processes too."""
import copy

import pytest
import torch
import torch.multiprocessing as mp

from models.backbones import build_backbone
from models.batchnorm import statistics_per_chunk
from models.methods import build_method

from dist_workers import teacher_keys_worker, tiny_embedder
from helpers import distill_config, free_port


def test_one_forward_with_statistics_per_view_equals_a_forward_per_view():
    torch.manual_seed(0)
    network = build_backbone("resnet18").train()
    separate = copy.deepcopy(network)
    views = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    with torch.no_grad():
        expected = [separate(v) for v in views]
        with statistics_per_chunk(network, 2):
            fused = network(torch.cat(views)).split(4)
        plain = copy.deepcopy(network)(torch.cat(views)).split(4)  # the layers are themselves again outside
    for a, b in zip(fused, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain[0], expected[0], atol=1e-3)  # one batch's statistics would differ
    for (name, mine), theirs in zip(network.named_buffers(), separate.buffers()):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6, msg=name)
    assert "forward" not in vars(network.bn1)


def test_eval_layers_are_left_alone_and_an_uneven_batch_is_refused():
    network = build_backbone("resnet18").eval()
    with statistics_per_chunk(network, 2):
        assert "forward" not in vars(network.bn1)
    network.train()
    with pytest.raises(ValueError, match="does not split into 2 equal views"):
        with torch.no_grad(), statistics_per_chunk(network, 2):
            network(torch.randn(3, 3, 32, 32))


def test_the_fused_train_mode_teacher_gives_bingos_keys_of_two_forwards():
    torch.manual_seed(1)
    views = tuple(torch.randn(6, 3, 8, 8) for _ in range(4))
    steps = {}
    for fuse in (False, True):
        config = distill_config(dim=16, queue_size=24, teacher_mode="train", fuse_teacher=fuse)
        distiller = build_method(tiny_embedder(seed=1), tiny_embedder(seed=2), config)
        distiller.set_epoch(0, 0, 0)
        loss, _ = distiller(views, epoch=20)
        steps[fuse] = (loss, distiller.queue.keys.clone(), [b.clone() for b in distiller.teacher.buffers()])
    torch.testing.assert_close(steps[True][0], steps[False][0])
    torch.testing.assert_close(steps[True][1], steps[False][1])
    for a, b in zip(steps[True][2], steps[False][2]):
        torch.testing.assert_close(a, b)


def test_the_fused_teacher_through_group_shuffle_bn_on_two_processes_equals_its_forward_per_view(tmp_path):
    torch.manual_seed(2)
    views = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    mp.spawn(teacher_keys_worker, args=(2, free_port(), views, str(tmp_path)), nprocs=2)  # both ways, one group
    separate, fused = torch.load(tmp_path / "False.pt"), torch.load(tmp_path / "True.pt")
    for a, b in zip(fused, separate):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
