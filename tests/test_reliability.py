"""Nothing lost, nothing silent: run-folder ownership, final outputs after a late kill, preemption, broken inputs
named in one line, SEED's teacher mode. Most command lines of one entry point run in one process
(``helpers.run_cases``); what is about processes runs as real processes."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from utils.io import RunFolderLock, atomic_torch_save
from utils.logs import prune_metrics, read_metrics

from helpers import (
    BAG_FLAGS,
    REPO,
    TEACHER_FLAGS,
    calibrated_teacher,
    make_image_folder,
    run_cases,
    run_script,
    subprocess_env,
    without,
)

USER_ERROR = 2


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """A labelled folder, a teacher that separates it, its neighbours, and a finished 2-epoch BINGO run."""
    tmp = tmp_path_factory.mktemp("reliability")
    data = make_image_folder(tmp / "data", classes=4, per_class=6, size=40, splits=("train", "val"))
    calibrated_teacher("resnet18", data, tmp / "teacher.pth.tar")
    run_script("run_knn.py", ["--arch=resnet18", f"--ckpt_name={tmp / 'teacher.pth.tar'}", f"--data_dir={data}",
                              "--image_size=32", "--clus_pos_num=3", f"--corr_name={tmp / 'nn.npy'}",
                              "--num_workers=0"], tmp)
    run_script("main_distill.py", distill_args(tmp, data, tmp / "done", 2), tmp)
    return tmp, data


def distill_args(tmp, data, out, epochs, *extra):
    return ["--t_arch=resnet18", f"--pretrain_path={tmp / 'teacher.pth.tar'}", f"--data_dir={data}",
            f"--corr_npy={tmp / 'nn.npy'}", "--clus_pos_num=3", "--image_size=32", "--batch_size=4", "--moco_k=8",
            "--num_workers=0", "--seed=0", "--report_freq=3", "--save_freq=0", f"--end_epoch={epochs}",
            f"--output_dir={out}", *extra]


def truncated_copy(source, target):
    target.write_bytes(source.read_bytes()[:5000])
    return target


def with_nan(source, target, key_part):
    """A copy of a checkpoint with one NaN in the first tensor whose name contains ``key_part``; returns its name."""
    payload = torch.load(source, weights_only=True)
    name = next(k for k in payload["state_dict"] if key_part in k)
    payload["state_dict"][name].view(-1)[0] = float("nan")
    torch.save(payload, target)
    return name


def test_bad_flags_and_broken_teachers_stop_before_anything_is_written(rig, tmp_path):
    tmp, data = rig
    nan_key = with_nan(tmp / "teacher.pth.tar", tmp_path / "nan.pth.tar", "layer2.0.conv1")
    truncated = truncated_copy(tmp / "teacher.pth.tar", tmp_path / "cut.pth.tar")
    out = tmp_path / "out"
    cases = {
        "--image_size=0": distill_args(tmp, data, out, 1, "--image_size=0"),
        "--batch_size=0": distill_args(tmp, data, out, 1, "--batch_size=0"),
        "--clus_pos_num=0": distill_args(tmp, data, out, 1, "--clus_pos_num=0"),
        "--end_epoch=0": distill_args(tmp, data, out, 0),
        str(truncated): distill_args(tmp, data, out, 1, f"--pretrain_path={truncated}"),
        nan_key.removeprefix("module.encoder_q."): distill_args(tmp, data, out, 1,
                                                            f"--pretrain_path={tmp_path / 'nan.pth.tar'}"),
    }
    for (named, _), result in zip(cases.items(), run_cases("main_distill", list(cases.values()), tmp_path)):
        assert result["status"] == USER_ERROR, result
        lines = result["stderr"].strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], result["stderr"]
        assert "Traceback" not in result["stderr"]
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoint.pth").exists()


def test_a_kill_after_the_last_checkpoint_loses_nothing_and_resumes_are_checked(rig, tmp_path):
    tmp, data = rig
    done = tmp / "done"
    # A run killed between its last checkpoint.pth and final.pth.
    killed = tmp_path / "killed"
    shutil.copytree(done, killed)
    (killed / "final.pth").unlink()
    (killed / "student_backbone.pth").unlink()
    done_bytes = (done / "final.pth").read_bytes()
    other_data = tmp_path / "other"
    shutil.copytree(data, other_data)
    (other_data / "train" / "class_0" / "img_000.png").unlink()
    not_ours = tmp / "teacher.pth.tar"
    truncated = truncated_copy(done / "checkpoint.pth", tmp_path / "cut.pth")
    nan_key = with_nan(done / "checkpoint.pth", tmp_path / "nan.pth", "layer1.0.bn1.weight")
    results = run_cases("main_distill", [
        distill_args(tmp, data, killed, 2, "--resume=auto"),
        distill_args(tmp, data, killed, 1, "--resume=auto"),
        distill_args(tmp, data, done, 2),
        distill_args(tmp, data, done, 3, "--resume=auto", "--s_arch=resnet34"),
        without(distill_args(tmp, data, done, 3, "--resume=auto", "--method=seed"), *BAG_FLAGS),
        distill_args(tmp, other_data, done, 3, "--resume=auto"),
        distill_args(tmp, data, tmp_path / "a", 3, f"--resume={not_ours}"),
        distill_args(tmp, data, tmp_path / "b", 3, f"--resume={truncated}"),
        distill_args(tmp, data, tmp_path / "c", 3, f"--resume={tmp_path / 'nan.pth'}"),
    ], tmp_path)
    finished, early, fresh, arch, method, other, foreign, cut, nan = results

    assert finished["status"] == 0, finished
    assert "no epoch left to train" in finished["stdout"]
    final = torch.load(killed / "final.pth", weights_only=True)
    reference = torch.load(done / "final.pth", weights_only=True)
    assert final["epoch"] == 2
    for key, value in reference["state_dict"].items():
        assert torch.equal(value, final["state_dict"][key]), key
    backbone = torch.load(killed / "student_backbone.pth", weights_only=True)
    assert torch.equal(backbone["conv1.weight"], reference["state_dict"]["module.encoder_q.conv1.weight"])

    expected = {"early": (early, "already trained 2 epochs"), "fresh": (fresh, "already holds a run"),
                "arch": (arch, "s_arch='resnet18'"), "method": (method, "method='bingo'"),
                "other": (other, "num_images=24"), "foreign": (foreign, "not a checkpoint written by main_distill"),
                "cut": (cut, str(truncated)), "nan": (nan, nan_key)}
    for name, (result, text) in expected.items():
        assert result["status"] == USER_ERROR and text in result["stderr"], (name, result)
        assert "Traceback" not in result["stderr"], (name, result["stderr"])
    assert (done / "final.pth").read_bytes() == done_bytes  # the refused runs wrote nothing


def test_a_second_run_into_a_held_folder_is_refused_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom utils.io import RunFolderLock\n"
         f"lock = RunFolderLock({str(folder)!r}).acquire()\nprint('held', flush=True)\ntime.sleep(120)"],
        env=subprocess_env(tmp_path), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        data = make_image_folder(tmp_path / "data", classes=2, per_class=4, size=40)
        (refused,) = run_cases("main_distill", [["--method=moco", f"--data_dir={data}", f"--output_dir={folder}",
                                                 "--image_size=32", "--batch_size=4", "--moco_k=8", "--end_epoch=1",
                                                 "--num_workers=0"]], tmp_path)
        assert refused["status"] == USER_ERROR, refused
        assert f"pid {holder.pid}" in refused["stderr"] and str(folder) in refused["stderr"], refused["stderr"]
        assert not (folder / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    lock = RunFolderLock(folder).acquire()  # the kernel dropped the killed holder's lock
    lock.release()


def test_sigterm_stops_between_steps_keeps_the_checkpoint_and_says_how_to_resume(rig, tmp_path):
    tmp, data = rig
    out = tmp_path / "run"
    args = distill_args(tmp, data, out, 50, "--report_freq=1")
    process = subprocess.Popen([sys.executable, str(REPO / "main_distill.py"), *args], cwd=tmp_path,
                               env=subprocess_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoint.pth").is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr
    assert "stopped by SIGTERM" in stderr and "--resume=auto" in stderr and "Traceback" not in stderr, stderr
    saved = torch.load(out / "checkpoint.pth", weights_only=True)
    assert f"holds {saved['epoch']} finished epochs" in stderr
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not (out / "final.pth").exists()
    run_script("main_distill.py", distill_args(tmp, data, out, saved["epoch"] + 1, "--resume=auto"), tmp_path)
    epochs = [r["epoch"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "epoch"]
    assert epochs == list(range(saved["epoch"] + 1))  # the interrupted epoch's records were replaced, not doubled
    assert torch.load(out / "final.pth", weights_only=True)["epoch"] == saved["epoch"] + 1


def test_slurm_script_passes_the_stop_on_and_requeues(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/usr/bin/env bash\necho "$*" > "$LOG.srun"\n'
                                  "trap 'echo stopped >> \"$LOG.srun\"; kill $child; exit 75' TERM\n"
                                  "sleep 60 & child=$!\nwait $child\n")
    (bin_dir / "scontrol").write_text('#!/usr/bin/env bash\necho "$*" >> "$LOG.scontrol"\n'
                                      '[ "$1" = show ] && echo node1\nexit 0\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", LOG=str(tmp_path / "log"), SLURM_JOB_ID="42",
               SLURM_JOB_NODELIST="node1", SLURM_NNODES="1", SLURM_GPUS_PER_NODE="1", SLURM_SUBMIT_DIR=str(tmp_path))
    script = subprocess.Popen(["bash", str(REPO / "scripts" / "slurm" / "distill.sbatch"), "--end_epoch=3"], env=env,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not (tmp_path / "log.srun").is_file() and time.time() < deadline:
        time.sleep(0.1)
    script.send_signal(signal.SIGUSR1)
    _, stderr = script.communicate(timeout=60)
    assert script.returncode == 0, stderr
    srun = (tmp_path / "log.srun").read_text()
    assert "--resume=auto" in srun and "--end_epoch=3" in srun and srun.strip().endswith("stopped")
    assert "requeue 42" in (tmp_path / "log.scontrol").read_text()


def test_a_bad_image_in_a_loader_worker_under_torchrun_ends_with_its_file_name(tmp_path):
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4, size=40)
    bad = data / "train" / "class_1" / "img_002.png"
    bad.write_bytes(b"not an image")
    result = run_script("main_distill.py", ["--method=moco", f"--data_dir={data}", f"--output_dir={tmp_path / 'o'}",
                                            "--image_size=32", "--batch_size=4", "--moco_k=8", "--end_epoch=1",
                                            "--num_workers=1"], tmp_path, nproc=2, check=False)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip() and not set(line.strip()) <= {"="}]
    assert "cannot read image" in lines[-1] and str(bad) in lines[-1], result.stderr[-3000:]


def test_seed_runs_its_teacher_in_eval_mode_unless_told_and_the_head_width_is_a_flag(rig, tmp_path):
    tmp, data = rig
    runs = {name: tmp_path / name for name in ("default", "eval", "train", "moco512")}
    results = run_cases("main_distill", [
        without(distill_args(tmp, data, runs["default"], 1, "--method=seed"), *BAG_FLAGS),
        without(distill_args(tmp, data, runs["eval"], 1, "--method=seed", "--teacher_mode=eval"), *BAG_FLAGS),
        without(distill_args(tmp, data, runs["train"], 1, "--method=seed", "--teacher_mode=train"), *BAG_FLAGS),
        without(distill_args(tmp, data, runs["moco512"], 1, "--method=moco", "--head_hidden=512"), *BAG_FLAGS,
                *TEACHER_FLAGS),
    ], tmp_path)
    assert [r["status"] for r in results] == [0] * 4, results
    modes = {name: json.loads((run / "flags.json").read_text())["teacher_mode"] for name, run in runs.items()}
    assert modes["default"] == modes["eval"] == "eval" and modes["train"] == "train"
    first = {name: next(m["loss"] for m in read_metrics(runs[name] / "metrics.jsonl") if m["kind"] == "step")
             for name in ("default", "eval", "train")}
    assert first["default"] == first["eval"] != first["train"]
    state = torch.load(runs["moco512"] / "final.pth", weights_only=True)["state_dict"]
    assert state["module.encoder_q.fc.0.weight"].shape == (512, 512)
    assert state["module.encoder_k.fc.0.weight"].shape == (512, 512)


def test_knn_protocol_refuses_unmatched_classes_and_evaluate_scores_what_it_reports(rig, tmp_path):
    tmp, data = rig
    missing = tmp_path / "missing"
    shutil.copytree(data, missing)
    shutil.rmtree(missing / "val" / "class_3")
    done = tmp / "done"
    common = [f"--data_dir={data}", "--image_size=32", "--batch_size=8", "--num_workers=0", "--end_epoch=1"]
    probe = tmp_path / "probe"
    truncated = truncated_copy(done / "student_backbone.pth", tmp_path / "cut.pth")
    nan_key = with_nan(done / "final.pth", tmp_path / "nan.pth", "layer3.0.conv2")
    results = run_cases("main_lincls", [
        ["--protocol=knn", f"--pretrained={done / 'final.pth'}", f"--output_dir={tmp_path / 'k'}",
         *without(common, "end_epoch"), f"--data_dir={missing}"],
        [f"--pretrained={done / 'final.pth'}", f"--output_dir={probe}", *common],
        ["--evaluate", f"--pretrained={done / 'final.pth'}", f"--output_dir={probe}", *without(common, "end_epoch")],
        ["--evaluate", "--untrained", f"--output_dir={probe}", *without(common, "end_epoch")],
        [f"--pretrained={truncated}", f"--output_dir={tmp_path / 'c'}", *common],
        [f"--pretrained={tmp_path / 'nan.pth'}", f"--output_dir={tmp_path / 'n'}", *common],
    ], tmp_path)
    classes, trained, same, other, cut, nan = results
    assert classes["status"] == USER_ERROR and "different class folders" in classes["stderr"], classes
    assert not (tmp_path / "k" / "results.json").exists()
    assert trained["status"] == 0 and same["status"] == 0, (trained, same)
    report = json.loads((probe / "results.json").read_text())
    assert report["pretrained"] == str(done / "final.pth") and report["evaluated"] == str(probe / "probe.pth")
    assert other["status"] == USER_ERROR and "trained on a different backbone" in other["stderr"], other
    assert cut["status"] == USER_ERROR and str(truncated) in cut["stderr"], cut
    assert nan["status"] == USER_ERROR and nan_key.removeprefix("module.encoder_q.") in nan["stderr"], nan
    for result in results:
        assert "Traceback" not in result["stderr"], result["stderr"]


def test_run_knn_refuses_a_nan_teacher_and_writes_nothing(rig, tmp_path):
    tmp, data = rig
    nan_key = with_nan(tmp / "teacher.pth.tar", tmp_path / "nan.pth.tar", "layer4.1.bn2.running_var")
    (result,) = run_cases("run_knn", [["--arch=resnet18", f"--ckpt_name={tmp_path / 'nan.pth.tar'}",
                                       f"--data_dir={data}", "--image_size=32", "--clus_pos_num=3",
                                       f"--corr_name={tmp_path / 'nn.npy'}", "--num_workers=0"]], tmp_path)
    assert result["status"] == USER_ERROR and nan_key.removeprefix("module.encoder_q.") in result["stderr"], result
    assert str(tmp_path / "nan.pth.tar") in result["stderr"]
    assert not (tmp_path / "nn.npy").exists()


def test_non_finite_features_stop_before_the_search():
    from engine.features import NonFiniteFeatures, embed
    from utils.dist import Context

    class Images(torch.utils.data.Dataset):
        samples = [(f"class_0/img_{i}.png", 0) for i in range(6)]

        def __init__(self, bad: int | None) -> None:
            self.bad = bad

        def __len__(self) -> int:
            return len(self.samples)

        def __getitem__(self, index):
            return torch.full((3, 2, 2), float("inf") if index == self.bad else 1.0 + index), 0, index

    network = torch.nn.Flatten()
    network.feature_dim = 12
    context = Context(0, 1, 0, torch.device("cpu"))
    assert embed(network, Images(None), context, 4, 0).isfinite().all()
    with pytest.raises(NonFiniteFeatures, match="for 1 of 6 images \\(first: class_0/img_2.png\\)"):
        embed(network, Images(2), context, 4, 0)


def test_prune_metrics_drops_exactly_the_records_a_resume_redoes(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"kind": "knn", "epoch": 0}, {"kind": "step", "epoch": 0}, {"kind": "epoch", "epoch": 0},
               {"kind": "knn", "epoch": 1}, {"kind": "step", "epoch": 1}, {"kind": "epoch", "epoch": 1},
               {"kind": "knn", "epoch": 2}, {"kind": "step", "epoch": 2}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert prune_metrics(path, 1) == 4
    assert read_metrics(path) == records[:4]
    assert prune_metrics(path, 0) == 4 and read_metrics(path) == []
    assert prune_metrics(tmp_path / "none.jsonl", 3) == 0


def test_checkpoints_respect_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_torch_save({"x": torch.zeros(1)}, tmp_path / "a.pth")
    finally:
        os.umask(old)
    assert (tmp_path / "a.pth").stat().st_mode & 0o777 == 0o640


def test_hidden_entries_are_skipped_and_counted_and_16_bit_images_keep_their_range(tmp_path):
    from datasets.folders import IndexedImageFolder, load_rgb

    data = make_image_folder(tmp_path / "data", classes=2, per_class=2, size=8)
    (data / "train" / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (8, 8)).save(data / "train" / ".ipynb_checkpoints" / "x.png")
    Image.new("RGB", (8, 8)).save(data / "train" / "class_0" / ".hidden.png")
    folder = IndexedImageFolder(data / "train")
    assert folder.classes == ["class_0", "class_1"] and len(folder) == 4
    assert folder.skipped_hidden == 2 and "2 hidden files or folders skipped" in folder.describe()

    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    pixels = np.asarray(load_rgb(str(tmp_path / "deep.png")))
    assert pixels.shape == (8, 8, 3)
    np.testing.assert_allclose(pixels[..., 0], np.round(ramp / 257.0), atol=1)


def test_knn_top5_orders_classes_without_votes_by_class_index():
    from engine.evaluation import ranked_correct

    scores = torch.zeros(3, 8, dtype=torch.float64)
    scores[:, 7] = 1.0  # one voted class; the other seven tie at 0
    targets = torch.tensor([3, 4, 7])
    top1, top5 = ranked_correct(scores, targets)
    assert int(top1) == 1 and int(top5) == 2  # the top-5 is 7, 0, 1, 2, 3: class 3 in, class 4 out


def test_a_swav_training_checkpoint_is_read_as_swav(tmp_path):
    from models.checkpoints import read_weights

    from helpers import swav_release

    saved = swav_release(tmp_path / "release.pth", arch="resnet18", hidden=64)
    state = torch.load(tmp_path / "release.pth", weights_only=True)
    torch.save({"epoch": 5, "state_dict": state, "optimizer": {}}, tmp_path / "training.pth")
    weights = read_weights(tmp_path / "training.pth")
    assert weights.fmt == "swav" and weights.dropped == ["prototypes.weight"]
    assert torch.equal(weights.backbone["conv1.weight"], saved["backbone"]["conv1.weight"])
    assert torch.equal(weights.head["0.weight"], saved["head"]["0.weight"])
