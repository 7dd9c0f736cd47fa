"""Fewer launches per step, each equal to the slow path on the CPU: the momentum update as two multi-tensor
operations, the networks compiled (with the fused train-mode teacher inside the compiled graph), and the views step
compiled."""
import copy

import torch
from torch.profiler import profile

from datasets.device_views import DeviceViews
from datasets.transforms import MOCO_V2
from models.backbones import build_backbone
from models.distiller import COMPILE_MODES, momentum_update
from models.methods import build_method

from dist_workers import tiny_embedder
from helpers import distill_config


def test_the_momentum_update_equals_the_releases_loop_bit_for_bit():
    torch.manual_seed(0)
    key, query = build_backbone("resnet18"), build_backbone("resnet18")
    for p in query.parameters():
        p.data.normal_()
    for p in key.parameters():
        p.requires_grad_(False)
    expected = copy.deepcopy(key)
    for k, q in zip(expected.parameters(), query.parameters()):  # MoCo's _momentum_update_key_encoder
        k.data = k.data * 0.99 + q.data * (1.0 - 0.99)
    released = copy.deepcopy(key)
    for k, q in zip(released.parameters(), query.parameters()):
        k.mul_(0.99).add_(q.detach(), alpha=1.0 - 0.99)
    buffers = [b.clone() for b in key.buffers()]
    momentum_update(key, query, 0.99)
    for (name, mine), theirs, moco in zip(key.named_parameters(), released.parameters(), expected.parameters()):
        assert torch.equal(mine, theirs), name
        torch.testing.assert_close(mine, moco, msg=name)
    assert not torch.equal(next(key.parameters()), next(build_backbone("resnet18").parameters()))
    for before, after in zip(buffers, key.buffers()):
        assert torch.equal(before, after)


def test_a_compiled_step_with_the_fused_train_mode_teacher_equals_the_plain_step():
    """Two BINGO steps, networks compiled in a CUDA-graph mode (on the CPU: compiled, no graphs) with one teacher
    forward for both views, against the uncompiled step with a forward per view: losses, gradients, queue and the
    teacher's BatchNorm statistics."""
    torch.manual_seed(3)
    steps = [tuple(torch.randn(6, 3, 8, 8) for _ in range(4)) for _ in range(2)]
    results = {}
    for compiled in (False, True):
        config = distill_config(dim=16, queue_size=24, teacher_mode="train", fuse_teacher=compiled)
        distiller = build_method(tiny_embedder(seed=1), tiny_embedder(seed=2), config)
        if compiled:
            distiller.compile_networks("reduce-overhead")
            assert distiller.cuda_graphs == COMPILE_MODES["reduce-overhead"] is True
        distiller.set_epoch(0, 0, 0)
        losses, grads = [], []
        for views in steps:
            distiller.begin_step()
            loss, _ = distiller(views, epoch=20)
            distiller.student.zero_grad()
            loss.backward()
            losses.append(loss.detach())
            grads.append([p.grad.clone() for p in distiller.student.parameters()])
        results[compiled] = (losses, grads, distiller.queue.keys.clone(), [b.clone() for b in
                                                                        distiller.teacher.buffers()])
    (losses, grads, queue, buffers), (c_losses, c_grads, c_queue, c_buffers) = results[False], results[True]
    torch.testing.assert_close(c_losses, losses, rtol=1e-5, atol=1e-6)
    for mine, theirs in zip(c_grads, grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(c_queue, queue, rtol=1e-5, atol=1e-6)
    for mine, theirs in zip(c_buffers, buffers):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_the_compiled_views_step_equals_the_views_as_written_with_a_handful_of_operators():
    """``--compile_views``: the same views (float32 rounding apart) from a few fused kernels instead of ~2,000
    operators over the whole batch."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 28, 28), dtype=torch.uint8)
    plain, compiled = DeviceViews(32, MOCO_V2, "cpu", seed=1), DeviceViews(32, MOCO_V2, "cpu", seed=1, compile=True)
    params = plain.draw(0, torch.arange(32), 2, torch.tensor([28, 28]).expand(64, 2))
    expected = plain.augment(images, params)
    torch.testing.assert_close(compiled.augment(images, params), expected, rtol=0, atol=1e-5)
    assert "augment" not in vars(plain)  # the class's method stays as written
    counts = {}
    for name, views in (("plain", plain), ("compiled", compiled)):
        with profile() as prof:
            views.augment(images, params)
        counts[name] = len(prof.events())
    assert counts["compiled"] * 20 < counts["plain"], counts
