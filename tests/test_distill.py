import json
import shutil

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from models.backbones import build_backbone
from models.methods import build_method
from utils.logs import read_metrics

from dist_workers import distiller_step, tiny_embedder
from helpers import (
    BAG_FLAGS,
    TEACHER_FLAGS,
    calibrated_teacher,
    distill_config,
    free_port,
    make_image_folder,
    run_cases,
    run_script,
    without,
)


def test_queue_holds_the_teacher_anchor_keys_after_a_step():
    torch.manual_seed(0)
    teacher = tiny_embedder(seed=2)
    distiller = build_method(tiny_embedder(seed=1), teacher, distill_config(dim=16, queue_size=12, teacher_mode="eval"))
    views = tuple(torch.randn(4, 3, 8, 8) for _ in range(4))
    old = distiller.queue.keys.clone()
    distiller(views, epoch=0)
    with torch.no_grad():
        keys = teacher(views[1])[0]
    assert torch.allclose(distiller.queue.keys[:, :4], keys.T)
    assert torch.equal(distiller.queue.keys[:, 4:], old[:, 4:])
    assert distiller.queue.ptr == 4
    distiller(views, epoch=0)
    distiller(views, epoch=0)
    assert distiller.queue.ptr == 0  # wrapped around
    with pytest.raises(ValueError, match="multiple"):
        distiller(tuple(v[:5] for v in torch.randn(4, 5, 3, 8, 8)), epoch=0)


def test_teacher_gets_no_gradient_and_stays_frozen():
    from engine.training import check_teacher_unchanged

    distiller = build_method(tiny_embedder(seed=1), tiny_embedder(seed=2), distill_config(dim=16, queue_size=8))
    before = {k: v.clone() for k, v in distiller.teacher.named_parameters()}
    assert not any(p.requires_grad for p in distiller.teacher.parameters())
    # An optimizer over every parameter, teacher included, with weight decay: a teacher weight that received any
    # gradient would move.
    optimizer = torch.optim.SGD(distiller.parameters(), lr=1.0, weight_decay=0.1)
    loss, _ = distiller(tuple(torch.randn(4, 3, 8, 8) for _ in range(4)), epoch=20)
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert any(p.grad is not None for p in distiller.student.parameters())
    check_teacher_unchanged(distiller.teacher, before)  # the loop's own check passes ...
    with torch.no_grad():
        next(distiller.teacher.parameters()).add_(1e-6)
    with pytest.raises(RuntimeError, match="changed during training"):  # ... and fails on a changed weight
        check_teacher_unchanged(distiller.teacher, before)
    assert distiller.teacher.training  # official default: batch statistics
    distiller.train(False)
    assert distiller.teacher.training  # the teacher keeps its mode


def test_fused_teacher_forward_equals_two_forwards_in_eval_mode():
    views = tuple(torch.randn(4, 3, 8, 8) for _ in range(4))
    keys = []
    for fuse in (False, True):
        config = distill_config(dim=16, queue_size=8, teacher_mode="eval", fuse_teacher=fuse)
        distiller = build_method(tiny_embedder(seed=1), tiny_embedder(seed=2), config)
        keys.append(distiller.teacher_keys(views[1], views[3]))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*keys))


def test_moco_baseline_momentum_encoder_follows_k_equals_m_k_plus_1_minus_m_q():
    m = 0.75
    distiller = build_method(tiny_embedder(seed=1), None, distill_config(method="moco", dim=16, queue_size=8, moco_m=m))
    optimizer = torch.optim.SGD(distiller.student.parameters(), lr=1.0)
    for _ in range(2):
        keys = [p.clone() for p in distiller.teacher.parameters()]
        queries = [p.clone() for p in distiller.student.parameters()]
        assert len(keys) == len(queries)
        loss, _ = distiller(tuple(torch.randn(4, 3, 8, 8) for _ in range(2)), epoch=0)
        # the forward updated the key encoder from the query encoder as it was before this step
        for k, q, now in zip(keys, queries, distiller.teacher.parameters()):
            torch.testing.assert_close(now, m * k + (1 - m) * q, rtol=0, atol=1e-7)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not all(torch.equal(k, q) for k, q in zip(distiller.teacher.parameters(), distiller.student.parameters()))


@pytest.mark.parametrize("teacher_mode", ["eval", "train"])
def test_two_process_queue_equals_one_process_global_batch(tmp_path, teacher_mode):
    torch.manual_seed(3)
    batch = [torch.randn(8, 3, 8, 8) for _ in range(4)]
    distiller_step(0, 1, 0, batch, str(tmp_path / "one.pt"), teacher_mode)  # one process: this one
    mp.spawn(distiller_step, args=(2, free_port(), batch, str(tmp_path / "two.pt"), teacher_mode), nprocs=2)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one["ptr"] == two["ptr"] == 8
    assert torch.equal(one["before"], two["before"])
    if teacher_mode == "eval":
        assert torch.allclose(one["queue"], two["queue"], atol=1e-6)
    else:
        # train-mode BN: each process normalises its own (shuffled) half, so keys differ, but both queues receive
        # the global batch of 8 new keys in the same slots and keep the rest
        assert torch.equal(one["queue"][:, 8:], two["queue"][:, 8:])
        assert not torch.equal(two["queue"][:, :8], two["before"][:, :8])


@pytest.fixture(scope="module")
def distill_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distill")
    data = make_image_folder(tmp / "data", classes=4, per_class=6, size=40)
    calibrated_teacher("resnet18", data, tmp / "teacher.pth.tar")
    run_script("run_knn.py", ["--arch=resnet18", f"--ckpt_name={tmp / 'teacher.pth.tar'}", f"--data_dir={data}",
                              "--image_size=32", "--clus_pos_num=3", f"--corr_name={tmp / 'nn.npy'}",
                              "--num_workers=0"], tmp)
    return tmp, data


def _args(tmp, data, out, epochs, extra=()):
    return ["--t_arch=resnet18", f"--pretrain_path={tmp / 'teacher.pth.tar'}", f"--data_dir={data}",
            f"--corr_npy={tmp / 'nn.npy'}", "--clus_pos_num=3", "--image_size=32", "--batch_size=4", "--moco_k=8",
            "--num_workers=0", "--seed=0", "--report_freq=2", f"--end_epoch={epochs}", f"--output_dir={out}", *extra]


def _metrics(folder):
    return read_metrics(folder / "metrics.jsonl")


def test_end_to_end_two_processes_learns_keeps_teacher_and_resumes_exactly(distill_data):
    tmp, data = distill_data
    straight = tmp / "straight"
    result = run_script("main_distill.py", _args(tmp, data, straight, 2, ["--save_freq=1"]), tmp, nproc=2)
    assert "img/s" in result.stdout and "eta" in result.stdout
    epochs = [m for m in _metrics(straight) if m["kind"] == "epoch"]
    assert len(epochs) == 2 and epochs[1]["loss"] < epochs[0]["loss"]
    for name in ("checkpoint.pth", "checkpoint_0001.pth", "checkpoint_0002.pth", "final.pth", "student_backbone.pth",
                 "flags.json"):
        assert (straight / name).is_file()
    net = build_backbone("resnet18")
    net.load_state_dict(torch.load(straight / "student_backbone.pth", weights_only=True))  # torchvision layout
    final = torch.load(straight / "final.pth", weights_only=True)
    assert final["epoch"] == 2 and final["queue"].shape == (128, 8)
    assert any(k.startswith("module.encoder_q.fc.0") for k in final["state_dict"])

    # the run stopped after its first epoch (its checkpoint then) and continued: the same run, bit for bit
    resumed = tmp / "resumed"
    from_epoch_1 = ["--save_freq=1", f"--resume={straight / 'checkpoint_0001.pth'}"]
    result = run_script("main_distill.py", _args(tmp, data, resumed, 2, from_epoch_1), tmp, nproc=2)
    assert "at epoch 1" in result.stdout and [m["epoch"] for m in _metrics(resumed) if m["kind"] == "epoch"] == [1]
    again = torch.load(resumed / "final.pth", weights_only=True)
    for key, value in final["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key
    assert torch.equal(final["queue"], again["queue"])


def test_baselines_and_the_paper_loss_run_in_the_same_loop(distill_data, tmp_path):
    tmp, data = distill_data
    runs = {"moco": ["--method=moco"], "seed": ["--method=seed"],
            "paper": ["--loss=paper", "--teacher_mode=eval"]}
    drop = {"moco": (*BAG_FLAGS, *TEACHER_FLAGS), "seed": BAG_FLAGS, "paper": ()}
    results = run_cases("main_distill", [without(_args(tmp, data, tmp_path / name, 1, extra), *drop[name])
                                         for name, extra in runs.items()], tmp_path)
    assert [r["status"] for r in results] == [0, 0, 0], results
    for method in ("moco", "seed"):
        payload = torch.load(tmp_path / method / "final.pth", weights_only=True)
        assert payload["bingo"]["method"] == method
        assert any(k.startswith("module.encoder_k.") for k in payload["state_dict"]) == (method == "moco")
    step = [m for m in _metrics(tmp_path / "paper") if m["kind"] == "step"][0]
    assert "loss_mix" not in step and "loss_neighbour" in step


def test_bad_neighbours_or_sizes_stop_before_the_first_step(distill_data, tmp_path):
    tmp, data = distill_data
    np.save(tmp_path / "rows.npy", np.load(tmp / "nn.npy")[:-1])
    np.save(tmp_path / "nn.npy", np.load(tmp / "nn.npy"))  # no JSON beside it
    other = make_image_folder(tmp_path / "other", classes=4, per_class=6, size=40, seed=5)
    (other / "train" / "class_0" / "img_000.png").rename(other / "train" / "class_0" / "zzz.png")
    out = tmp_path / "out"
    cases = {  # expected text: extra flags (the last value of a repeated flag wins)
        "has shape (23, 3)": [f"--corr_npy={tmp_path / 'rows.npy'}", "--nocheck_corr_json"],
        "was made for the dataset at": [f"--data_dir={other}"],
        "nn.json": [f"--corr_npy={tmp_path / 'nn.npy'}"],
        "multiple of the global --batch_size": ["--moco_k=10"],
    }
    results = run_cases("main_distill", [_args(tmp, data, out, 1, extra) for extra in cases.values()], tmp_path)
    for expect, result in zip(cases, results):
        assert result["status"] == 2 and expect in result["stderr"], (expect, result["stderr"])
    result = run_script("main_distill.py", _args(tmp, data, out, 1, ["--batch_size=5", "--moco_k=10"]), tmp_path,
                        nproc=2, check=False)
    assert result.returncode != 0 and "is not divisible by 2 processes" in result.stderr, result.stderr
    assert not (out / "metrics.jsonl").exists()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(distill_data, tmp_path):
    tmp, data = distill_data
    out = tmp_path / "run"
    run_script("main_distill.py", _args(tmp, data, out, 1), tmp_path)
    good = (out / "checkpoint.pth").read_bytes()
    result = run_script("main_distill.py", _args(tmp, data, out, 2, ["--resume=auto", "--init_lr=1e30",
                                                                     "--resume_change=init_lr"]), tmp_path,
                        check=False)
    assert result.returncode == 2 and "the loss became" in result.stderr, result.stderr
    assert (out / "checkpoint.pth").read_bytes() == good
    assert not (out / "final.pth").exists() or torch.load(out / "final.pth", weights_only=True)["epoch"] == 1


def test_knn_monitor_logs_the_asked_epochs_and_changes_nothing(tmp_path):
    data = make_image_folder(tmp_path / "data", classes=3, per_class=6, size=40, splits=("train", "val"))
    common = ["--method=moco", f"--data_dir={data}", "--image_size=32", "--batch_size=6", "--moco_k=12",
              "--num_workers=0", "--seed=0", "--end_epoch=3", "--report_freq=100", "--save_freq=0"]
    on, off = tmp_path / "on", tmp_path / "off"
    result = run_script("main_distill.py", common + [f"--output_dir={on}", "--knn_monitor_freq=2"], tmp_path, nproc=2)
    run_script("main_distill.py", common + [f"--output_dir={off}"], tmp_path, nproc=2)
    knn = [m for m in _metrics(on) if m["kind"] == "knn"]
    assert [m["epoch"] for m in knn] == [0, 2, 3]  # before training, every 2 epochs, after the last
    assert all(0 <= m["knn10_top1"] <= m["knn10_top5"] <= 100 for m in knn)
    assert "k-NN monitor after 2 epochs" in result.stdout
    assert not any(m["kind"] == "knn" for m in _metrics(off))
    # the monitor draws nothing from the run's generators: the same weights and queue with and without it
    with_monitor, without = (torch.load(d / "final.pth", weights_only=True) for d in (on, off))
    for key, value in with_monitor["state_dict"].items():
        assert torch.equal(value, without["state_dict"][key]), key
    assert torch.equal(with_monitor["queue"], without["queue"])
    # its last point is main_lincls.py's k-NN classifier on the final checkpoint
    run_script("main_lincls.py", ["--arch=resnet18", f"--pretrained={on / 'final.pth'}", f"--data_dir={data}",
                                  "--image_size=32", "--batch_size=6", "--num_workers=0", "--protocol=knn",
                                  f"--output_dir={tmp_path / 'knn'}"], tmp_path)
    final = json.loads((tmp_path / "knn" / "results.json").read_text())["knn"]["k10_majority"]
    assert knn[-1]["knn10_top1"] == pytest.approx(final["top1"])


def test_knn_monitor_needs_matching_val_classes(tmp_path):
    data = make_image_folder(tmp_path / "data", classes=3, per_class=6, size=40, splits=("train", "val"))
    shutil.rmtree(data / "val" / "class_2")
    result = run_script("main_distill.py", ["--method=moco", f"--data_dir={data}", "--image_size=32",
                                            "--batch_size=6", "--moco_k=12", "--num_workers=0", "--end_epoch=1",
                                            "--knn_monitor_freq=1", f"--output_dir={tmp_path / 'out'}"], tmp_path,
                        check=False)
    assert result.returncode == 2 and "different class folders" in result.stderr, result.stderr
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_every_method_starts_from_the_same_student_under_one_seed(distill_data):
    tmp, data = distill_data
    methods = {"bingo": (), "moco": (*BAG_FLAGS, *TEACHER_FLAGS)}  # method: the flags it refuses
    results = run_cases("main_distill", [without(_args(tmp, data, tmp / f"init-{method}", 1,
                                                       [f"--method={method}", "--init_lr=0"]), *drop)
                                         for method, drop in methods.items()], tmp)
    assert [r["status"] for r in results] == [0, 0], results
    finals = {method: torch.load(tmp / f"init-{method}" / "final.pth", weights_only=True)["state_dict"]
              for method in methods}
    # at lr 0 the weights stay as initialised (BN statistics still follow the batches, so they are left out)
    weights = [k for k in finals["bingo"] if k.startswith("module.encoder_q.") and "running" not in k
               and "num_batches" not in k]
    assert len(weights) > 60
    assert all(torch.equal(finals["bingo"][k], finals["moco"][k]) for k in weights)


@pytest.mark.parametrize("method", ["bingo", "moco"])
def test_a_checkpoint_in_the_layout_written_since_the_first_release_loads_and_is_written_back_alike(method):
    """The payload keys main_distill.py has written from the start (official ``module.encoder_q.*`` / ``encoder_k``
    names, queue and pointer beside them), built here by hand, load into today's methods and come back the same."""
    from engine.checkpoints import checkpoint_payload, load_checkpoint
    from utils.io import rng_state

    saved = tiny_embedder(seed=3)
    state = {f"module.encoder_q.{k}": v.clone() for k, v in saved.backbone.state_dict().items()}
    state.update({f"module.encoder_q.fc.{k}": v.clone() for k, v in saved.head.state_dict().items()})
    if method == "moco":
        state.update({k.replace("encoder_q", "encoder_k"): v + 1 for k, v in state.items()})
    queue = torch.nn.functional.normalize(torch.randn(16, 8), dim=0)
    optimizer_state = torch.optim.SGD(tiny_embedder().parameters(), lr=0.1, momentum=0.9).state_dict()
    payload = {"bingo": {"method": method, "seed": 0, "epoch": 3}, "epoch": 3, "state_dict": state, "queue": queue,
               "queue_ptr": 4, "optimizer": optimizer_state, "rng": rng_state()}

    distiller = build_method(tiny_embedder(seed=1), tiny_embedder(seed=2) if method == "bingo" else None,
                             distill_config(method=method, dim=16, queue_size=8))
    optimizer = torch.optim.SGD(distiller.student.parameters(), lr=0.1, momentum=0.9)
    assert load_checkpoint(payload, "by hand", distiller, optimizer) == 3
    assert torch.equal(distiller.queue.keys, queue) and distiller.queue.ptr == 4
    written = checkpoint_payload(distiller, optimizer, 3, {"method": method})
    assert set(written) >= {"bingo", "epoch", "state_dict", "queue", "queue_ptr", "optimizer", "rng"}
    assert set(written["state_dict"]) == set(state)
    for key, value in state.items():
        assert torch.equal(written["state_dict"][key], value), key
    assert torch.equal(written["queue"], queue) and written["queue_ptr"] == 4


def test_the_fused_optimizer_trains_the_same_student_and_a_resume_takes_this_runs_choice(distill_data, tmp_path):
    tmp, data = distill_data
    runs = {name: tmp_path / name for name in ("loop", "fused", "resumed")}
    results = run_cases("main_distill", [
        _args(tmp, data, runs["loop"], 2),
        _args(tmp, data, runs["fused"], 2, ["--fused_optimizer"]),
        _args(tmp, data, runs["resumed"], 1, ["--fused_optimizer"]),
        _args(tmp, data, runs["resumed"], 2, ["--resume=auto"]),
    ], tmp_path)
    assert [r["status"] for r in results] == [0, 0, 0, 0], results
    loop, fused, resumed = (torch.load(runs[n] / "final.pth", weights_only=True) for n in ("loop", "fused", "resumed"))
    for key, value in loop["state_dict"].items():
        if value.is_floating_point():
            torch.testing.assert_close(fused["state_dict"][key], value, rtol=1e-4, atol=1e-5, msg=key)
            torch.testing.assert_close(resumed["state_dict"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert fused["optimizer"]["param_groups"][0]["fused"] is True
    assert not resumed["optimizer"]["param_groups"][0]["fused"]  # the resume ran without the flag
