"""The DisCo and CompRess baselines in the one loop: what each step feeds its queue or banks, its momentum copy, two
processes against one, the release defaults --method brings, and the released students' files."""
import json

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from models.backbones import build_backbone
from models.checkpoints import CheckpointError, load_backbone, load_teacher
from models.methods import build_method
from models.queue import KeyQueue

from dist_workers import method_step, per_image_embedder, tiny_embedder
from helpers import (
    calibrated_teacher,
    compress_release,
    disco_release,
    distill_config,
    free_port,
    make_image_folder,
    run_cases,
    run_script,
    seed_release,
)


def test_a_compress_bank_starts_uniform_and_wraps_around_its_end():
    torch.manual_seed(0)
    bank = KeyQueue(12, 10, init="uniform")
    bound = 1 / (12 / 3) ** 0.5
    assert bank.keys.shape == (12, 10) and bank.keys.abs().max() <= bound and bank.keys.abs().max() > 0.9 * bound
    rows = [torch.full((4, 12), float(i)) for i in range(3)]
    for r in rows:
        bank.enqueue(r)
    assert bank.ptr == 2  # 12 keys into 10 slots: the third batch went to slots 8, 9, 0, 1
    assert bank.keys[0, :2].tolist() == [2.0, 2.0] and bank.keys[0, 2:8].tolist() == [0, 0, 1, 1, 1, 1]
    assert bank.keys[0, 8:].tolist() == [2.0, 2.0]
    with pytest.raises(ValueError, match="does not fit"):
        KeyQueue(12, 3, init="uniform").enqueue(rows[0])


def test_disco_queues_the_momentum_keys_and_pulls_the_student_to_the_teacher_on_both_views():
    torch.manual_seed(0)
    student, teacher = tiny_embedder(seed=1), tiny_embedder(seed=2)
    distiller = build_method(student, teacher, distill_config(method="disco", dim=16, queue_size=8, moco_m=0.5,
                                                             disco_mse_weight=4.0))
    assert distiller.teacher.training and distiller.momentum_encoder.training  # as released: batch statistics
    view_q, view_k = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    keys_before = [p.clone() for p in distiller.momentum_encoder.parameters()]
    queries = [p.clone() for p in distiller.student.parameters()]
    queue = distiller.queue.keys.clone()
    loss, terms = distiller((view_q, view_k), epoch=0)
    for now, k, q in zip(distiller.momentum_encoder.parameters(), keys_before, queries):
        torch.testing.assert_close(now, 0.5 * k + 0.5 * q, rtol=0, atol=1e-7)
    with torch.no_grad():
        k = distiller.momentum_encoder(view_k)[0]
        teacher_q, teacher_k = teacher(view_q)[0], teacher(view_k)[0]
    q, qk = distiller.student(view_q, view_k)
    assert torch.allclose(distiller.queue.keys[:, :4], k.T, atol=1e-6) and distiller.queue.ptr == 4
    expected = (F.cross_entropy(torch.cat([(q * k).sum(1, keepdim=True), q @ queue], 1) / 0.2, torch.zeros(4).long())
                + 4.0 * ((teacher_q - q) ** 2).sum(1).mean() + 4.0 * ((teacher_k - qk) ** 2).sum(1).mean())
    assert torch.allclose(loss, expected, atol=1e-5)
    assert set(terms) >= {"loss_contrast", "loss_mse_q", "loss_mse_k", "acc1"}
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in distiller.momentum_encoder.parameters())


@pytest.mark.parametrize("one_bank", [False, True])
def test_compress_banks_hold_the_teacher_features_and_the_momentum_features(one_bank):
    torch.manual_seed(0)
    student = per_image_embedder(seed=1, hidden=12, head=False)
    if one_bank:
        student.head = torch.nn.Linear(12, 20)
    teacher = per_image_embedder(seed=2, hidden=20, head=False)
    config = distill_config(method="compress", queue_size=6, t=0.04, moco_m=0.5, teacher_mode="eval",
                           compress_one_bank=one_bank)
    distiller = build_method(student, teacher, config)
    assert not distiller.teacher.training
    assert set(distiller.memories()) == ({"teacher_bank"} if one_bank else {"teacher_bank", "student_bank"})
    view = torch.randn(4, 3, 8, 8)
    teacher_bank = distiller.teacher_bank.keys.clone()
    student_bank = None if one_bank else distiller.student_bank.keys.clone()
    loss, terms = distiller((view, view), epoch=0)
    with torch.no_grad():
        t = F.normalize(teacher.backbone(view), dim=1)
    s = F.normalize(distiller.student.head(distiller.student.backbone(view)), dim=1)
    against = teacher_bank if one_bank else student_bank
    expected = F.kl_div(F.log_softmax(s @ against / 0.04, 1), F.softmax(t @ teacher_bank / 0.04, 1),
                        reduction="batchmean")
    assert torch.allclose(loss, expected, atol=1e-6) and 0 <= terms["nn_agree"] <= 100
    assert torch.allclose(distiller.teacher_bank.keys[:, :4], t.T, atol=1e-6) and distiller.teacher_bank.ptr == 4
    if not one_bank:
        with torch.no_grad():
            s_key = F.normalize(distiller.momentum_encoder.backbone(view), dim=1)
        assert torch.allclose(distiller.student_bank.keys[:, :4], s_key.T, atol=1e-6)
        assert torch.equal(distiller.student_bank.keys[:, 4:], student_bank[:, 4:])
    distiller((view, view), epoch=0)
    assert distiller.teacher_bank.ptr == 2  # 8 features into 6 slots: wrapped


@pytest.mark.parametrize("method,one_bank", [("disco", False), ("compress", False), ("compress", True)])
def test_two_processes_equal_one_process_on_the_same_global_batch(tmp_path, method, one_bank):
    torch.manual_seed(3)
    batch = [torch.randn(2, 8, 3, 8, 8) for _ in range(2)]  # two steps of a global batch of 8, two views
    method_step(0, 1, 0, method, batch, str(tmp_path / "1.pt"), one_bank)  # one process: this one
    mp.spawn(method_step, args=(2, free_port(), method, batch, str(tmp_path / "2.pt"), one_bank), nprocs=2)
    one, two = (torch.load(tmp_path / f"{world}.pt") for world in (1, 2))
    for a, b in zip(one["loss"], two["loss"]):
        assert torch.allclose(a, b, atol=1e-6), (a, b)
    for step_a, step_b in zip(one["grads"], two["grads"]):  # DDP's mean over processes is the global batch's
        for a, b in zip(step_a, step_b):
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    assert set(one["memories"]) == set(two["memories"])
    for name, (keys, ptr) in one["memories"].items():  # every process holds the same queue or banks
        assert ptr == two["memories"][name][1]
        assert torch.allclose(keys, two["memories"][name][0], atol=1e-6), name


@pytest.fixture(scope="module")
def baseline_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("baselines")
    data = make_image_folder(tmp / "data", classes=3, per_class=6, size=40, splits=("train", "val"))
    calibrated_teacher("resnet18", data, tmp / "teacher.pth.tar")
    return tmp, data


def _distill(tmp, data, out, method, epochs, *extra):
    return [f"--method={method}", "--t_arch=resnet18", f"--pretrain_path={tmp / 'teacher.pth.tar'}",
            f"--data_dir={data}", "--image_size=32", "--batch_size=6", "--moco_k=12", "--num_workers=0", "--seed=0",
            "--report_freq=100", "--save_freq=0", f"--end_epoch={epochs}", f"--output_dir={out}", *extra]


def _lincls(data, pretrained, out, *extra):
    return ["--arch=resnet18", f"--pretrained={pretrained}", f"--data_dir={data}", "--image_size=32",
            "--batch_size=6", "--num_workers=0", "--end_epoch=1", "--init_lr=0.1", f"--output_dir={out}", *extra]


@pytest.mark.parametrize("method", ["disco", "compress"])
def test_each_baseline_trains_on_two_processes_and_its_student_is_evaluated(baseline_data, tmp_path, method):
    tmp, data = baseline_data
    out = tmp_path / method
    result = run_script("main_distill.py", _distill(tmp, data, out, method, 2), tmp_path, nproc=2)
    assert "done:" in result.stdout
    ran = json.loads((out / "flags.json").read_text())
    final = torch.load(out / "final.pth", weights_only=True)
    assert final["bingo"]["method"] == method and final["epoch"] == 2
    assert any(k.startswith("module.encoder_k.") for k in final["state_dict"])  # the momentum copy is kept
    if method == "disco":
        assert ran["teacher_mode"] == "train" and ran["augmentation"] == "mocov2" and ran["disco_mse_weight"] == 32
        assert final["state_dict"]["module.encoder_q.fc.0.weight"].shape == (2048, 512) and "queue" in final
    else:  # CompRess's release defaults, except those given on the command line (--moco_k, --end_epoch)
        assert ran["teacher_mode"] == "eval" and ran["augmentation"] == "crop_flip" and ran["moco_t"] == 0.04
        assert ran["init_lr"] == 0.01 and ran["decay_method"] == "step" and ran["schedule"] == ["90", "120"]
        assert ran["lr_decay"] == 0.2 and ran["moco_k"] == 12 and ran["end_epoch"] == 2
        assert not any(".fc." in k for k in final["state_dict"])  # no head
        assert final["teacher_bank"].shape == (512, 12) and final["student_bank"].shape == (512, 12)
    evaluation = run_script("main_lincls.py", _lincls(data, out / "final.pth", tmp_path / f"{method}-probe",
                                                      "--with_knn"), tmp_path, nproc=2)
    assert "format: bingo" in evaluation.stdout
    results = json.loads((tmp_path / f"{method}-probe" / "results.json").read_text())
    assert results["epochs_done"] == 1 and "k10_majority" in results["knn"]
    # the official linear evaluation's rule: module.encoder_q.* without fc.* is the whole backbone, strictly
    state = {k.removeprefix("module.encoder_q."): v for k, v in final["state_dict"].items()
             if k.startswith("module.encoder_q.") and not k.startswith("module.encoder_q.fc.")}
    build_backbone("resnet18").load_state_dict(state, strict=True)


def test_a_compress_run_resumes_bit_for_bit_with_its_banks(baseline_data, tmp_path):
    tmp, data = baseline_data
    results = run_cases("main_distill", [
        _distill(tmp, data, tmp_path / "straight", "compress", 2),
        _distill(tmp, data, tmp_path / "stopped", "compress", 1),
        _distill(tmp, data, tmp_path / "stopped", "compress", 2, "--resume=auto"),
        _distill(tmp, data, tmp_path / "other", "compress", 1, "--compress_one_bank"),
        _distill(tmp, data, tmp_path / "stopped", "disco", 3, "--resume=auto"),
        _distill(tmp, data, tmp_path / "other", "compress", 2, "--resume=auto"),  # the other bank setting
    ], tmp_path)
    assert [r["status"] for r in results[:4]] == [0, 0, 0, 0], results
    straight, resumed = (torch.load(tmp_path / name / "final.pth", weights_only=True) for name in ("straight",
                                                                                                    "stopped"))
    for key in ("teacher_bank", "student_bank"):
        assert torch.equal(straight[key], resumed[key]) and straight[f"{key}_ptr"] == resumed[f"{key}_ptr"]
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    one_bank = torch.load(tmp_path / "other" / "final.pth", weights_only=True)
    assert "student_bank" not in one_bank and one_bank["state_dict"]["module.encoder_q.fc.weight"].shape == (512, 512)
    assert not any(k.startswith("module.encoder_k.") for k in one_bank["state_dict"])
    assert results[4]["status"] == 2 and "method='compress'" in results[4]["stderr"]
    assert results[5]["status"] == 2 and "was trained with --compress_one_bank=true, but this run has " \
        "--compress_one_bank=false: pass --compress_one_bank=true" in results[5]["stderr"], results[5]


def test_baseline_flags_belong_to_their_method(baseline_data, tmp_path):
    tmp, data = baseline_data
    results = run_cases("main_distill", [
        _distill(tmp, data, tmp_path / "a", "bingo", 1, "--compress_one_bank"),
        _distill(tmp, data, tmp_path / "b", "seed", 1, "--disco_mse_weight=8"),
        _distill(tmp, data, tmp_path / "c", "compress", 1, "--augmentation=mocov1", "--aug_plus"),
        _distill(tmp, data, tmp_path / "d", "compress", 1, "--moco_k=4"),
    ], tmp_path)
    expected = ["--compress_one_bank acts only in --method=compress", "--disco_mse_weight acts only in --method=disco",
                "contradict each other", "must hold one global --batch_size=6"]
    for text, result in zip(expected, results):
        assert result["status"] == 2 and text in result["stderr"], (text, result)
        assert not (tmp_path / "a" / "checkpoint.pth").exists()


RELEASES = {"seed": seed_release, "disco": disco_release, "compress": compress_release,
            "compress-1q": lambda arch, path: compress_release(arch, path, one_bank=True)}


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_the_released_students_files_load_strictly_by_their_format(tmp_path, name):
    path = tmp_path / f"{name}.pth"
    saved = RELEASES[name]("resnet18", path)
    backbone, weights = load_backbone("resnet18", path)
    assert weights.fmt == name.removesuffix("-1q")
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in saved["backbone"].items())
    assert {k: v.shape for k, v in weights.head.items()} == {k: v.shape for k, v in saved["head"].items()}
    if name in ("seed", "disco"):  # a student with its head is a teacher too
        _, head, _ = load_teacher("resnet18", path)
        assert all(torch.equal(head.state_dict()[k], v) for k, v in saved["head"].items())
    with pytest.raises(CheckpointError, match="missing"):  # strict: a ResNet-34 misses the blocks it has more of
        load_backbone("resnet34", path)


def test_the_released_students_are_evaluated_and_embed_as_teachers(baseline_data, tmp_path):
    tmp, data = baseline_data
    for name, make in RELEASES.items():
        make("resnet18", tmp_path / f"{name}.pth")
    probes = run_cases("main_lincls", [_lincls(data, tmp_path / f"{name}.pth", tmp_path / name) for name in RELEASES],
                       tmp_path)
    for name, result in zip(RELEASES, probes):
        assert result["status"] == 0 and f"format: {name.removesuffix('-1q')}" in result["stdout"], (name, result)
    knn = run_cases("run_knn", [["--arch=resnet18", f"--ckpt_name={tmp_path / f'{name}.pth'}", f"--data_dir={data}",
                                 "--image_size=32", "--clus_pos_num=2", f"--corr_name={tmp_path / f'{name}.npy'}",
                                 "--num_workers=0"] for name in RELEASES], tmp_path)
    for name, result in zip(RELEASES, knn):
        assert result["status"] == 0 and (tmp_path / f"{name}.json").is_file(), (name, result)
