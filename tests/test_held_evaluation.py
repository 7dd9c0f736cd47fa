"""Evaluation from images held on the device (``--in_memory`` on all three entry points): the crops a batch at a
time equal the file path's device crops and embed like the CPU transform; BatchNorm re-estimation on them; the k-NN
monitor's last point equals main_lincls.py's k-NN on the held images; run_knn.py's neighbours equal the device-view
path's; the flag refused where it would not act."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from datasets.arrays import open_array_split
from datasets.device_views import (
    DeviceViews,
    EncodedImageFolder,
    HeldBagDataset,
    HeldImages,
    collate_encoded,
    held_splits,
)
from datasets.folders import IndexedImageFolder
from datasets.transforms import eval_transform
from engine.evaluation import recompute_bn_statistics
from engine.features import embed
from models.backbones import build_backbone
from utils import dist as edist
from utils.io import load_predictions

from helpers import make_idx_release, make_image_folder, run_cases, run_script


def test_held_crops_equal_the_file_paths_device_crops_and_embed_like_the_cpu_transform(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=3, per_class=5, size=28) / "train"
    held = HeldImages(root, "cpu", 32)
    assert held.pixels.shape == (15, 3, 28, 28) and held.targets == IndexedImageFolder(root).targets
    files = EncodedImageFolder(root)
    batch = collate_encoded([files[i] for i in range(len(files))])
    expected = DeviceViews(32, None, "cpu").eval_crops(batch)
    indices = torch.arange(len(held))
    assert torch.allclose(held.crops([torch.tensor(held.targets), indices]), expected, atol=1e-5)
    held.views.pixel_budget = 3 * 28 * 28  # three images a chunk
    assert torch.allclose(held.crops([indices]), expected, atol=1e-5)

    ctx = edist.init("cpu")
    torch.manual_seed(0)
    network = build_backbone("resnet18").eval()
    cpu = embed(network, IndexedImageFolder(root, eval_transform(32)), ctx, 4, num_workers=0)
    device = embed(network, held, ctx, 4, num_workers=2)  # held: no loader processes, whatever is asked
    assert (cpu * device).sum(1).min() > 0.995
    assert (cpu @ device.T).argmax(1).tolist() == list(range(len(cpu)))


def test_a_split_held_already_is_shared_and_another_is_held_anew(tmp_path):
    data = make_image_folder(tmp_path / "data", classes=3, per_class=5, size=28, splits=("train", "val"))
    training = HeldBagDataset(data / "train", None, "cpu")
    memory, queries = held_splits(data, "cpu", 32, share=training)
    assert memory.pixels is training.pixels  # the same images: one tensor, held once
    assert queries.pixels is not training.pixels
    assert torch.equal(queries.pixels, HeldImages(data / "val", "cpu", 32).pixels)
    other = held_splits(data, "cpu", 32, share=HeldBagDataset(data / "val", None, "cpu"))[0]  # other images
    assert other.pixels.data_ptr() != training.pixels.data_ptr() and torch.equal(other.pixels, training.pixels)
    assert torch.equal(memory.crops([torch.arange(len(memory))]), other.crops([torch.arange(len(other))]))


def test_an_array_release_is_held_as_stored_and_batchnorm_is_reestimated_on_it(tmp_path, capsys):
    release = make_idx_release(tmp_path / "fmnist")
    held = HeldImages(open_array_split(release, "train"), "cpu", 32)
    stored = open_array_split(release, "train").images  # [N, H, W, 3]
    assert torch.equal(held.pixels, torch.from_numpy(stored).permute(0, 3, 1, 2))
    loaded = IndexedImageFolder(open_array_split(release, "train"), eval_transform(32))
    ctx = edist.init("cpu")
    statistics = []
    for dataset in (held, loaded):
        torch.manual_seed(0)
        network = build_backbone("resnet18")
        assert recompute_bn_statistics(network, dataset, ctx, 8, num_workers=0, report_every=0) == 20
        statistics.append([m.running_mean.clone() for m in network.modules() if isinstance(m, nn.BatchNorm2d)])
        progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("BatchNorm statistics")]
        assert len(progress) == -(-len(dataset) // 8), progress  # a line a batch with report_every=0
        assert progress[-1].startswith(f"BatchNorm statistics {len(dataset)}/{len(dataset)} ")
    for a, b in zip(*statistics):  # the float crop against PIL's 8-bit one
        assert torch.allclose(a, b, rtol=0.02, atol=0.02)


def test_in_memory_monitor_final_evaluation_lincls_and_knn_step_on_a_fashion_mnist_format_release(tmp_path):
    release = make_idx_release(tmp_path / "fmnist")
    out = tmp_path / "run"
    train = ["--method=moco", f"--data_dir={release}", "--image_size=32", "--batch_size=6", "--moco_k=12",
             "--num_workers=0", "--seed=0", "--end_epoch=2", "--save_freq=0", "--device_views", "--in_memory"]
    trained, refused = run_cases("main_distill", [
        [*train, "--knn_monitor_freq=1", "--final_evaluation", f"--output_dir={out}"],
        [*train, "--final_evaluation", f"--output_dir={tmp_path / 'no-monitor'}"]], tmp_path)
    assert trained["status"] == 0, trained
    # the monitor's memory is the training split: its images held once, by the training set
    assert trained["stdout"].count("images held already, not held again") == 1, trained["stdout"][-2000:]
    assert refused["status"] != 0 and "--final_evaluation" in refused["stderr"]
    assert "--knn_monitor_freq above 0" in refused["stderr"] and not (tmp_path / "no-monitor").exists()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    knn = [m for m in metrics if m["kind"] == "knn"]
    assert [m["epoch"] for m in knn] == [0, 1, 2]

    lincls = ["--arch=resnet18", f"--pretrained={out / 'final.pth'}", f"--data_dir={release}", "--image_size=32",
              "--batch_size=8", "--num_workers=0"]
    knn_run, logreg_run, linear_run = run_cases("main_lincls", [
        [*lincls, "--protocol=knn", "--in_memory", f"--output_dir={tmp_path / 'knn'}"],
        [*lincls, "--protocol=logreg", "--with_knn", "--in_memory", f"--output_dir={tmp_path / 'logreg'}"],
        [*lincls, "--protocol=linear", "--in_memory", f"--output_dir={tmp_path / 'linear'}"]], tmp_path)
    assert knn_run["status"] == 0 and logreg_run["status"] == 0, (knn_run, logreg_run)
    # the monitor's last point is main_lincls.py's k-NN on the same held images
    results = json.loads((tmp_path / "knn" / "results.json").read_text())
    assert knn[-1]["knn10_top1"] == pytest.approx(results["knn"]["k10_majority"]["top1"])
    assert results["num_train"] == 30 and results["num_val"] == 15 and results["flags"]["in_memory"]
    results = json.loads((tmp_path / "logreg" / "results.json").read_text())
    assert set(results["seconds"]) == {"start-up", "data", "embed", "logreg", "knn"}
    assert results["knn"]["k10_majority"]["top1"] == pytest.approx(knn[-1]["knn10_top1"])
    assert linear_run["status"] != 0 and "--in_memory" in linear_run["stderr"]
    assert "--protocol=knn or logreg" in linear_run["stderr"] and not (tmp_path / "linear").exists()

    # --final_evaluation: the same scores from the training process, from the monitor's last embedding
    final = json.loads((out / "evaluation" / "results.json").read_text())
    assert final["made_by"] == "main_distill.py --final_evaluation" and set(final["seconds"]) == {"logreg", "knn"}
    assert (final["num_train"], final["num_val"]) == (results["num_train"], results["num_val"])
    assert final["checkpoint_sha256"] == results["checkpoint_sha256"]
    assert set(final["knn"]) == set(results["knn"])
    for name, scores in results["knn"].items():
        assert final["knn"][name]["top1"] == pytest.approx(scores["top1"]), name
    assert final["logreg"]["C"] == results["logreg"]["C"]
    assert final["logreg"]["top1"] == pytest.approx(results["logreg"]["top1"])
    assert final["logreg"]["holdout_top1"] == pytest.approx(results["logreg"]["holdout_top1"])
    # each protocol's prediction per query, beside the labels: the accuracies of results.json, the same from both
    predicted, predicted_final = (load_predictions(folder / "predictions.npz")
                                  for folder in (tmp_path / "logreg", out / "evaluation"))
    assert set(predicted) == {"labels", "logreg", *(f"knn_{name}" for name in results["knn"])} == set(predicted_final)
    assert len(predicted["labels"]) == 15 and (predicted["labels"] == predicted_final["labels"]).all()
    for name, protocol in (("logreg", results["logreg"]),
                           *((f"knn_{name}", scores) for name, scores in results["knn"].items())):
        assert 100 * (predicted[name] == predicted["labels"]).mean() == pytest.approx(protocol["top1"]), name
        assert (predicted[name] == predicted_final[name]).all(), name
    # a finished run started again (two processes now) trains nothing: the monitor embeds once more for it
    (out / "evaluation" / "results.json").unlink()
    run_script("main_distill.py", [*train, "--knn_monitor_freq=1", "--final_evaluation", "--resume=auto",
                                   f"--output_dir={out}"], tmp_path, nproc=2)
    again = json.loads((out / "evaluation" / "results.json").read_text())
    assert again["knn"]["k10_majority"]["top1"] == pytest.approx(final["knn"]["k10_majority"]["top1"])
    assert again["logreg"]["top1"] == pytest.approx(final["logreg"]["top1"])

    # the kNN step: the same neighbours from the held images as from the device-view path's crops
    step = ["--arch=resnet18", f"--ckpt_name={out / 'final.pth'}", f"--data_dir={release}", "--image_size=32",
            "--clus_pos_num=3", "--num_workers=0", "--batch_size=8"]
    held, views, both = run_cases("run_knn", [
        [*step, "--in_memory", f"--corr_name={tmp_path / 'held.npy'}"],
        [*step, "--device_views", f"--corr_name={tmp_path / 'views.npy'}"],
        [*step, "--in_memory", "--device_views", f"--corr_name={tmp_path / 'x.npy'}"]], tmp_path)
    assert held["status"] == 0 and views["status"] == 0, (held, views)
    np.testing.assert_array_equal(np.load(tmp_path / "held.npy"), np.load(tmp_path / "views.npy"))
    assert both["status"] != 0 and "give one" in both["stderr"]


def test_the_floors_in_one_process_score_as_each_alone_hold_the_images_once_and_resume(tmp_path):
    """``scripts.demo.evaluations``: main_lincls.py evaluations one after another in one process (the demo's floors)
    give each one's scores alone (no flag, seed or BatchNorm statistics carried from one to the next), hold the
    images once, check every command line before any work, and skip what finished."""
    import subprocess
    import sys

    from helpers import REPO, subprocess_env

    release = make_idx_release(tmp_path / "fmnist")
    common = [f"--data_dir={release}", "--image_size=32", "--batch_size=8", "--num_workers=0", "--protocol=logreg",
              "--with_knn", "--in_memory", "--device=cpu"]
    # the plain network after the one whose BatchNorm statistics were re-estimated: nothing may carry over
    floors = {"pixels": ["--arch=pixels"], "bn": ["--arch=resnet18", "--untrained", "--recompute_bn"],
              "plain": ["--arch=resnet18", "--untrained"]}

    def shared(*extra: list[str]) -> subprocess.CompletedProcess:
        lines = [[*flags, *common, f"--output_dir={tmp_path / 'shared' / name}"] for name, flags in floors.items()]
        argv = [arg for i, line in enumerate([*lines, *extra]) for arg in ["---"] * bool(i) + line]
        return subprocess.run([sys.executable, "-m", "scripts.demo.evaluations", *argv], cwd=REPO,
                              env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=600)

    first = shared()
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.count("held 30 images") == 1 and first.stdout.count("held 15 images") == 1
    alone = run_cases("main_lincls", [[*flags, *common, f"--output_dir={tmp_path / 'alone' / name}"]
                                      for name, flags in floors.items()], tmp_path)
    assert all(case["status"] == 0 for case in alone), alone
    def results(where: str, name: str) -> dict:
        return json.loads((tmp_path / where / name / "results.json").read_text())

    for name in floors:
        one, other = results("shared", name), results("alone", name)
        assert one["recomputed_bn"] == other["recomputed_bn"] == (name == "bn")
        assert one["logreg"]["C"] == other["logreg"]["C"], name
        assert one["logreg"]["top1"] == pytest.approx(other["logreg"]["top1"]), name
        assert ({k: s["top1"] for k, s in one["knn"].items()}
                == pytest.approx({k: s["top1"] for k, s in other["knn"].items()})), name
        assert set(one["seconds"]) == {"start-up", "data", "embed", "logreg", "knn"}
    # the first evaluation's start-up is the process's (imports included), a later one's its network's building
    assert results("shared", "plain")["seconds"]["start-up"] < results("shared", "pixels")["seconds"]["start-up"]

    (tmp_path / "shared" / "plain" / "results.json").unlink()
    refused = shared(["--arch=resnet18", "--untrained", f"--data_dir={release}", "--protocol=linear",
                      f"--output_dir={tmp_path / 'linear'}"])
    assert refused.returncode == 2 and "--protocol=linear trains a probe" in refused.stderr
    assert not (tmp_path / "shared" / "plain" / "results.json").exists()  # refused before any work
    again = shared()
    assert again.returncode == 0 and again.stdout.count("evaluated already") == 2
    assert (tmp_path / "shared" / "plain" / "results.json").is_file()
