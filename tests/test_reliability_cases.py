"""The last silent cases of the reliability matrix: flag values the evaluation and kNN entry points must refuse,
neighbour files that do not belong to the data, a torn metrics line, a full disk, a finished evaluation folder, and
the wording of what is reported. Command lines of one entry point run in one process (``helpers.run_cases``)."""
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.folders import DatasetError, IndexedImageFolder
from datasets.neighbours import read_neighbours, write_neighbours
from utils.io import DiskFullError, atomic_torch_save
from utils.logs import MetricsFileError, prune_metrics, read_metrics

from helpers import calibrated_teacher, make_image_folder, run_cases, run_script

USER_ERROR = 2
LINCLS = ["--arch=resnet18", "--image_size=32", "--batch_size=8", "--num_workers=0", "--init_lr=0.1"]


@pytest.fixture(scope="module")
def cases_rig(tmp_path_factory):
    """A labelled folder, a teacher, its neighbours and a finished 1-epoch BINGO run."""
    tmp = tmp_path_factory.mktemp("cases")
    data = make_image_folder(tmp / "data", classes=3, per_class=4, size=40, splits=("train", "val"))
    calibrated_teacher("resnet18", data, tmp / "teacher.pth.tar")
    run_script("run_knn.py", knn_args(tmp, data, tmp / "nn.npy"), tmp)
    run_script("main_distill.py", distill_args(tmp, data, tmp / "done", 1), tmp)
    return tmp, data


def knn_args(tmp, data, out, *extra):
    return ["--arch=resnet18", f"--ckpt_name={tmp / 'teacher.pth.tar'}", f"--data_dir={data}", "--image_size=32",
            "--clus_pos_num=2", f"--corr_name={out}", "--num_workers=0", *extra]


def distill_args(tmp, data, out, epochs, *extra):
    return ["--t_arch=resnet18", f"--pretrain_path={tmp / 'teacher.pth.tar'}", f"--data_dir={data}",
            f"--corr_npy={tmp / 'nn.npy'}", "--clus_pos_num=2", "--image_size=32", "--batch_size=4", "--moco_k=8",
            "--num_workers=0", "--seed=0", "--report_freq=100", "--save_freq=0", f"--end_epoch={epochs}",
            f"--output_dir={out}", *extra]


def one_line_error(result, named: str) -> None:
    assert result["status"] == USER_ERROR, result
    lines = result["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], result["stderr"]


def test_bad_sizes_stop_the_knn_step_and_the_evaluation_before_the_network_loads(cases_rig, tmp_path):
    tmp, data = cases_rig
    knn = run_cases("run_knn", [knn_args(tmp, data, tmp_path / "x.npy", flag)
                                for flag in ("--image_size=0", "--batch_size=0", "--num_workers=-1")], tmp_path)
    for flag, result in zip(("--image_size=0", "--batch_size=0", "--num_workers=-1"), knn):
        one_line_error(result, flag)
        assert "teacher" not in result["stdout"]
    assert not (tmp_path / "imgs_corr").exists() and not (tmp_path / "x.npy").exists()

    evaluations = {"--image_size=0": ["--image_size=0"], "--batch_size=0": ["--batch_size=0"],
                   "--end_epoch=0": ["--end_epoch=0"], "--label_fraction": ["--protocol=semi"],
                   "--label_fraction=1.5": ["--protocol=semi", "--label_fraction=1.5"]}
    results = run_cases("main_lincls", [LINCLS + [f"--data_dir={data}", f"--pretrained={tmp / 'done' / 'final.pth'}",
                                                  f"--output_dir={tmp_path / 'e'}", *flags]
                                        for flags in evaluations.values()], tmp_path)
    for named, result in zip(evaluations, results):
        one_line_error(result, named)
        assert "backbone from" not in result["stdout"]
    assert not (tmp_path / "e").exists()


def test_a_missing_data_folder_makes_no_output_folder_and_the_monitor_names_its_own_flag(cases_rig, tmp_path):
    tmp, data = cases_rig
    missing = tmp_path / "nowhere"
    (distill, monitor) = run_cases("main_distill", [
        distill_args(tmp, missing, tmp_path / "d", 1),
        distill_args(tmp, data, tmp_path / "m", 1, "--knn_monitor_freq=1", f"--knn_monitor_data={missing}"),
    ], tmp_path)
    one_line_error(distill, "--data_dir must hold train/")
    one_line_error(monitor, "--knn_monitor_data must hold train/")
    (lincls,) = run_cases("main_lincls", [LINCLS + [f"--data_dir={missing}", "--untrained",
                                                    f"--output_dir={tmp_path / 'l'}"]], tmp_path)
    one_line_error(lincls, str(missing / "train"))
    (knn,) = run_cases("run_knn", [knn_args(tmp, missing, tmp_path / "k" / "x.npy")], tmp_path)
    one_line_error(knn, str(missing / "train"))
    for folder in ("d", "m", "l", "k"):
        assert not (tmp_path / folder).exists(), folder


def test_a_neighbour_file_must_belong_to_these_images_and_to_its_json(cases_rig, tmp_path):
    tmp, data = cases_rig
    # the same file names and labels, other pixels in one image
    other = tmp_path / "other"
    shutil.copytree(data, other)
    image = other / "train" / "class_1" / "img_002.png"
    Image.fromarray(255 - np.asarray(Image.open(image))).save(image)
    # a run_knn.py killed between its two files: the new .npy beside the old .json
    stale = tmp_path / "stale.npy"
    shutil.copy(tmp / "nn.npy", stale)
    shutil.copy(tmp / "nn.json", stale.with_suffix(".json"))
    np.save(stale, np.load(tmp / "nn.npy")[:, ::-1].copy())  # the same bags, another order
    results = run_cases("main_distill", [
        distill_args(tmp, other, tmp_path / "a", 1),
        distill_args(tmp, data, tmp_path / "b", 1, f"--corr_npy={stale}"),
        distill_args(tmp, other, tmp_path / "c", 1, "--nocheck_corr_json"),
    ], tmp_path)
    one_line_error(results[0], "whose images differ")
    one_line_error(results[1], "describes another .npy")
    assert results[2]["status"] == 0, results[2]  # the user's override for re-encoded copies


def test_the_writer_removes_the_old_json_first_so_a_kill_leaves_no_false_pair(tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "data", classes=2, per_class=3, size=8)
    dataset = IndexedImageFolder(data / "train")
    path = tmp_path / "nn.npy"
    rows = np.array([[1], [0], [1], [4], [5], [3]])
    write_neighbours(path, rows, {"k": 1, "file_list_sha256": "x"})
    assert json.loads(path.with_suffix(".json").read_text())["npy_sha256"]

    import datasets.neighbours as contract

    def killed(*_):
        raise KeyboardInterrupt  # the process dies after the .npy and before its .json
    monkeypatch.setattr(contract, "atomic_json", killed)
    with pytest.raises(KeyboardInterrupt):
        write_neighbours(path, rows[::-1], {"k": 1})
    assert path.is_file() and not path.with_suffix(".json").exists()
    with pytest.raises(DatasetError, match="is missing"):
        read_neighbours(path, dataset, 1, check_meta=True, report=lambda _: None)
    assert read_neighbours(path, dataset, 1, check_meta=False).tolist() == rows[::-1].tolist()


def test_a_torn_last_metrics_line_is_dropped_on_resume_and_a_torn_middle_one_is_named(cases_rig, tmp_path):
    tmp, data = cases_rig
    run = tmp_path / "run"
    shutil.copytree(tmp / "done", run)
    for name in ("final.pth", "student_backbone.pth", "run.lock"):
        (run / name).unlink(missing_ok=True)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "step", "epo')  # killed mid-write
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    lines = (broken / "metrics.jsonl").read_text().splitlines()
    (broken / "metrics.jsonl").write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    resumed, refused = run_cases("main_distill", [distill_args(tmp, data, run, 2, "--resume=auto"),
                                                  distill_args(tmp, data, broken, 2, "--resume=auto")], tmp_path)
    assert resumed["status"] == 0, resumed
    records = read_metrics(run / "metrics.jsonl")
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [0, 1]
    assert all(line.startswith("{") and line.endswith("}") for line in (run / "metrics.jsonl").read_text().splitlines())
    one_line_error(refused, "line 2 is not JSON")


def test_prune_metrics_drops_a_torn_tail_even_when_nothing_is_redone(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "epoch", "epoch": 0}\n{"kind": "ep')
    assert prune_metrics(path, 1) == 0
    assert path.read_text() == '{"kind": "epoch", "epoch": 0}\n'
    path.write_text('{"kind": "epoch", "epoch": 0}\n{"kind\n{"kind": "epoch", "epoch": 1}\n')
    with pytest.raises(MetricsFileError, match="line 2 is not JSON"):
        prune_metrics(path, 1)


def test_a_failed_write_on_a_full_disk_says_so_and_keeps_the_previous_file(tmp_path, monkeypatch):
    import utils.io as io

    target = tmp_path / "checkpoint.pth"
    atomic_torch_save({"epoch": 1}, target)

    def torch_save_on_a_full_disk(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(io, "free_bytes", lambda folder: 4096)
    with pytest.raises(DiskFullError, match=r"is full \(0 MB free\) while writing checkpoint.pth; the previous "
                                            r"checkpoint.pth is intact.* with --resume=auto"):
        io.atomic_write(target, torch_save_on_a_full_disk)
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]
    monkeypatch.setattr(io, "free_bytes", lambda folder: 1 << 40)  # plenty free: the writer's own error stands
    with pytest.raises(RuntimeError, match="unexpected pos"):
        io.atomic_write(target, torch_save_on_a_full_disk)


def test_a_run_on_a_really_full_disk_ends_with_one_line(cases_rig, tmp_path):
    """A 1 MB tmpfs holds no ResNet-18 checkpoint (skipped where this process may not mount one)."""
    tmp, data = cases_rig
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (result,) = run_cases("main_distill", [distill_args(tmp, data, disk / "run", 1)], tmp_path)
        one_line_error(result, f"the disk holding {disk / 'run'} is full")
        assert not [p for p in (disk / "run").iterdir() if p.name.endswith(".tmp")]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_finished_evaluation_is_not_replaced_and_a_semi_probe_is_not_resumed_as_linear(cases_rig, tmp_path):
    tmp, data = cases_rig
    common = LINCLS + [f"--data_dir={data}", f"--pretrained={tmp / 'done' / 'final.pth'}", "--end_epoch=1"]
    first, again, continued, semi, as_linear = run_cases("main_lincls", [
        common + [f"--output_dir={tmp_path / 'p'}"],
        common + [f"--output_dir={tmp_path / 'p'}"],
        common + [f"--output_dir={tmp_path / 'p'}", "--resume=auto", "--end_epoch=2"],
        common + [f"--output_dir={tmp_path / 's'}", "--protocol=semi", "--label_fraction=0.5"],
        common + [f"--output_dir={tmp_path / 's'}", "--resume=auto", "--end_epoch=2"],
    ], tmp_path)
    assert first["status"] == 0 and continued["status"] == 0 and semi["status"] == 0, (first, continued, semi)
    one_line_error(again, "already holds an evaluation (probe.pth, results.json)")
    assert json.loads((tmp_path / "p" / "results.json").read_text())["epochs_done"] == 2
    one_line_error(as_linear, "was trained with --protocol=semi, not --protocol=linear")


def test_a_resumed_probe_trains_bit_for_bit_as_an_uninterrupted_one(cases_rig, tmp_path):
    tmp, data = cases_rig
    common = LINCLS + [f"--data_dir={data}", f"--pretrained={tmp / 'done' / 'final.pth'}", "--protocol=semi",
                       "--label_fraction=1", "--save_freq=0"]
    results = run_cases("main_lincls", [
        common + [f"--output_dir={tmp_path / 'straight'}", "--end_epoch=3"],
        common + [f"--output_dir={tmp_path / 'stopped'}", "--end_epoch=1"],
        common + [f"--output_dir={tmp_path / 'stopped'}", "--end_epoch=3", "--resume=auto"],
    ], tmp_path)
    assert [r["status"] for r in results] == [0, 0, 0], results
    straight, resumed = (torch.load(tmp_path / name / "probe.pth", weights_only=True) for name in ("straight",
                                                                                                    "stopped"))
    assert straight["epoch"] == resumed["epoch"] == 3
    for key, value in straight["model"].items():  # the whole network trains with --protocol=semi
        assert torch.equal(value, resumed["model"][key]), key
    assert straight["history"] == resumed["history"]


def test_a_nan_head_weight_is_named_with_its_head_prefix(cases_rig, tmp_path):
    tmp, data = cases_rig
    payload = torch.load(tmp / "teacher.pth.tar", weights_only=True)
    payload["state_dict"]["module.encoder_q.fc.2.weight"].view(-1)[0] = float("nan")
    torch.save(payload, tmp_path / "nan.pth.tar")
    (result,) = run_cases("main_distill", [distill_args(tmp, data, tmp_path / "o", 1,
                                                        f"--pretrain_path={tmp_path / 'nan.pth.tar'}")], tmp_path)
    one_line_error(result, "fc.2.weight holds 1 NaN")


def test_16_bit_images_keep_their_range_on_the_device_views_path_too(tmp_path):
    from datasets.device_views import read_encoded
    from datasets.folders import load_rgb

    ramp = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    encoded = read_encoded(str(tmp_path / "deep.png"))
    expected = np.asarray(load_rgb(str(tmp_path / "deep.png")))
    assert encoded.data.dtype == torch.uint8 and encoded.data.shape == (3, 8, 8)
    np.testing.assert_array_equal(encoded.data.permute(1, 2, 0).numpy(), expected)
    assert 0 < expected.max() < 255  # scaled, not clipped to white


def test_a_resumed_run_keeps_its_objective_unless_a_change_is_named_and_then_records_it(cases_rig, tmp_path):
    tmp, data = cases_rig
    (made,) = run_cases("run_knn", [[f"--data_dir={data}", "--clus_pos_num=2", f"--corr_name={tmp_path / 'random'}",
                                     "--bagging=random"]], tmp_path)
    assert made["status"] == 0, made
    runs = {name: tmp_path / name for name in ("refused", "changed")}
    for run in runs.values():
        shutil.copytree(tmp / "done", run)
    before = (runs["refused"] / "checkpoint.pth").read_bytes()
    refused = {
        "--loss=paper": "was trained with --loss=official, but this run has --loss=paper",
        "--lam=0.3,0.7": "pass --lam=0.5,0.5 to resume it, --resume_change=lam to change it",
        "--nomix_term": "was trained with --mix_term=true",
        "--teacher_mode=eval": "was trained with --teacher_mode=train",
        "--init_lr=0.5": "was trained with --init_lr=0.03",
        f"--corr_npy={tmp_path / 'random.npy'}": "another neighbour file (knn bags, sha256",
        "--resume_change=method": "--resume_change=method: not a setting a resume can change",
    }
    results = run_cases("main_distill", [
        *(distill_args(tmp, data, runs["refused"], 2, "--resume=auto", flag) for flag in refused),
        distill_args(tmp, data, runs["changed"], 2, "--resume=auto", "--lam=0.3,0.7",
                     f"--corr_npy={tmp_path / 'random.npy'}", "--resume_change=lam,neighbours")], tmp_path)
    for (flag, text), result in zip(refused.items(), results):
        one_line_error(result, text)
    assert (runs["refused"] / "checkpoint.pth").read_bytes() == before  # the refused resumes wrote nothing
    changed = results[-1]
    assert changed["status"] == 0, changed
    assert "resumed with lam changed from epoch 1: ['0.5', '0.5'] -> ['0.3', '0.7']" in changed["stdout"]
    assert "resumed with neighbours changed from epoch 1" in changed["stdout"]
    recorded = json.loads((runs["changed"] / "flags.json").read_text())["resume_changes"]
    # --end_epoch may change without being named, and is recorded all the same
    assert [(c["epoch"], c["setting"]) for c in recorded] == [(1, "lam"), (1, "end_epoch"), (1, "neighbours")]
    assert recorded[2]["to"]["bagging"] == "random" and recorded[2]["from"]["bagging"] == "knn"
    final = torch.load(runs["changed"] / "final.pth", weights_only=True)
    assert final["bingo"]["changes"] == recorded and final["bingo"]["flags"]["lam"] == ["0.3", "0.7"]


def test_flags_that_would_do_nothing_and_values_that_make_no_sense_are_refused_before_anything_loads(
        cases_rig, tmp_path):
    tmp, data = cases_rig
    teacher = tmp / "teacher.pth.tar"
    base = [f"--data_dir={data}", "--image_size=32", "--batch_size=4", "--moco_k=8", "--num_workers=0",
            "--end_epoch=1", f"--output_dir={tmp_path / 'out'}"]
    bingo = [f"--pretrain_path={teacher}", "--t_arch=resnet18", f"--corr_npy={tmp / 'nn.npy'}", "--clus_pos_num=2"]
    cases = {
        "--loss acts only in --method=bingo": ["--method=disco", "--loss=paper"],
        "--teacher_mode acts only in a run with a teacher": ["--method=moco", "--teacher_mode=eval"],
        "--pretrain_path acts only in a run with a teacher": ["--method=moco", f"--pretrain_path={teacher}"],
        "--fuse_teacher acts only in --method=bingo --loss=official": ["--method=compress", "--fuse_teacher",
                                                                      "--teacher_mode=eval"],
        "--head_hidden acts only in an MLP head": ["--method=compress", "--head_hidden=512"],
        "--lam acts only in --method=bingo --loss=official with the cross-bag keys": ["--method=seed", "--lam=1,0"],
        "--seed_teacher_t acts only in --method=seed": [*bingo, "--seed_teacher_t=0.01"],
        "--moco_m acts only in a run with a momentum copy": [*bingo, "--moco_m=0.99"],
        "--bag_warmup_epochs acts only in --method=bingo --loss=official with the cross-bag keys":
            [*bingo, "--nocross_keys", "--bag_warmup_epochs=3"],
        "--resume_change acts only in a resumed run": [*bingo, "--resume_change=lam"],
        "--compile_mode acts only in --compile": [*bingo, "--compile_mode=reduce-overhead"],
        "--compile_views acts only in --device_views": [*bingo, "--compile_views"],
        "--disco_mse_weight=-1.0: must be a finite number at least 0": ["--method=disco", "--disco_mse_weight=-1"],
        "--disco_mse_weight=nan: must be a finite number": ["--method=disco", "--disco_mse_weight=nan"],
        "--lam=2,-1: give two weights of 0 or more": [*bingo, "--lam=2,-1"],
        "--bag_warmup_epochs=-5: epochs 0..N are the warm-up": [*bingo, "--bag_warmup_epochs=-5"],
        "--seed=-1: give a seed of 0 or more": [*bingo, "--seed=-1"],
    }
    results = run_cases("main_distill", [base + extra for extra in cases.values()], tmp_path)
    for text, result in zip(cases, results):
        one_line_error(result, text)
        assert "teacher" not in result["stdout"]
    assert not (tmp_path / "out").exists()


def test_a_finished_evaluation_is_never_replaced_and_the_evaluation_refuses_what_it_would_ignore(cases_rig,
                                                                                                 tmp_path):
    tmp, data = cases_rig
    one_class = make_image_folder(tmp_path / "one", classes=1, per_class=4, size=40, splits=("train", "val"))
    frozen = ["--arch=resnet18", "--image_size=32", "--batch_size=8", "--num_workers=0", f"--data_dir={data}",
              f"--pretrained={tmp / 'done' / 'final.pth'}"]
    linear, logreg = tmp_path / "linear", tmp_path / "logreg"
    results = run_cases("main_lincls", [
        LINCLS + frozen[4:] + ["--end_epoch=1", f"--output_dir={linear}"],
        frozen + ["--protocol=logreg", f"--output_dir={logreg}"],
        frozen + ["--protocol=logreg", "--resume=auto", f"--output_dir={linear}"],
        LINCLS + frozen[4:] + ["--end_epoch=1", "--resume=auto", f"--output_dir={logreg}"],
        frozen + ["--protocol=knn", "--init_lr=0.1", f"--output_dir={tmp_path / 'k'}"],
        frozen + ["--protocol=logreg", "--seed=-1", f"--output_dir={tmp_path / 's'}"],
        [*frozen[:4], f"--data_dir={one_class}", "--untrained", "--protocol=logreg", f"--output_dir={tmp_path / 'o'}"],
    ], tmp_path)
    assert results[0]["status"] == 0 and results[1]["status"] == 0, results[:2]
    kept = {folder: (folder / "results.json").read_bytes() for folder in (linear, logreg)}
    one_line_error(results[2], "--resume acts only in a trained probe")
    one_line_error(results[3], f"{logreg} already holds a finished evaluation (results.json) and no probe")
    one_line_error(results[4], "--init_lr acts only in a trained probe")
    one_line_error(results[5], "--seed=-1: must be at least 0")
    one_line_error(results[6], "has 1 class folder (class_0): a classifier needs two classes or more")
    assert {folder: (folder / "results.json").read_bytes() for folder in (linear, logreg)} == kept


def test_a_neighbour_json_that_is_not_an_object_is_named(cases_rig, tmp_path):
    tmp, data = cases_rig
    shutil.copy(tmp / "nn.npy", tmp_path / "nn.npy")
    (tmp_path / "nn.json").write_text("[1, 2]")
    dataset = IndexedImageFolder(data / "train")
    with pytest.raises(DatasetError, match=r"nn.json holds a JSON list, not the object run_knn.py writes"):
        read_neighbours(tmp_path / "nn.npy", dataset, 2, check_meta=True)


def test_the_demo_refuses_flags_that_contradict_or_would_not_act_before_any_work(tmp_path):
    import sys

    from helpers import REPO, subprocess_env

    for args, text in ((["--quick", "--config", "cpu"], "--quick is a configuration of its own"),
                       (["--quick", "--fmnist_dir", str(tmp_path / "none")], "is not a folder"),
                       (["--quick", "--eval_dir", str(tmp_path / "eval")], "training images (--data_dir): drop"),
                       (["--quick", "--report_only", "--skip_floors", "--device=cpu"],
                        "--report_only runs nothing, so --skip_floors, --device would not act: drop them")):
        done = subprocess.run([sys.executable, "-m", "scripts.demo", *args, "--run_dir", str(tmp_path / "run")],
                              cwd=REPO, env=subprocess_env(tmp_path), capture_output=True, text=True)
        assert done.returncode == 2 and text in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert not (tmp_path / "run").exists()
