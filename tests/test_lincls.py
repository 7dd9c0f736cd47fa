import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from engine.evaluation import Classifier, knn_predict, knn_scores, label_subset
from models.backbones import build_backbone
from utils.io import load_predictions, save_predictions

from helpers import make_image_folder, moco_release, run_cases, run_script, swav_release

BASE = ["--arch=resnet18", "--image_size=32", "--batch_size=8", "--num_workers=0"]


@pytest.fixture(scope="module")
def probe_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lincls")
    data = make_image_folder(tmp / "data", classes=3, per_class=8, size=40, splits=("train", "val"))
    # an odd validation size: sharding over 2 processes must still count each image once
    (data / "val" / "class_2" / "img_007.png").unlink()
    torch.manual_seed(0)
    torch.save(build_backbone("resnet18").state_dict(), tmp / "tv.pth")
    return tmp, data


def test_probe_learns_keeps_backbone_and_writes_results(probe_data):
    tmp, data = probe_data
    out = tmp / "probe"
    run_script("main_lincls.py", BASE + [f"--data_dir={data}", f"--pretrained={tmp / 'tv.pth'}",
                                         f"--output_dir={out}", "--init_lr=0.5", "--end_epoch=8"], tmp)
    results = json.loads((out / "results.json").read_text())
    assert results["checkpoint_format"] == "torchvision" and results["num_val"] == 23
    assert results["best"]["top1"] >= results["last"]["top1"] > 60  # chance is 33 %
    assert results["last"]["top5"] >= results["last"]["top1"]
    rows = list(csv.DictReader(open(out / "epochs.csv")))
    assert len(rows) == 8 and float(rows[0]["lr"]) == pytest.approx(0.5)
    probe = torch.load(out / "probe.pth", weights_only=True)["model"]
    reference = torch.load(tmp / "tv.pth", weights_only=True)
    for key, value in reference.items():  # the backbone stayed bit-identical, BN statistics included
        assert torch.equal(probe[f"backbone.{key}"], value), key

    scored = run_script("main_lincls.py", BASE + [f"--data_dir={data}", f"--pretrained={tmp / 'tv.pth'}",
                                                  f"--output_dir={out}", "--evaluate"], tmp, nproc=2)
    evaluated = json.loads((out / "results.json").read_text())["val"]
    assert evaluated["count"] == 23
    assert evaluated["top1"] == pytest.approx(results["last"]["top1"])
    assert "top-1" in scored.stdout


def test_classifier_init_and_frozen_backbone():
    model = Classifier(build_backbone("resnet18"), 5)
    assert torch.count_nonzero(model.fc.bias) == 0
    assert 0.005 < model.fc.weight.std().item() < 0.015
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    model.train()
    assert not model.backbone.training


def test_each_checkpoint_format_loads_and_a_wrong_one_names_its_keys(probe_data, tmp_path):
    tmp, data = probe_data
    formats = ("bingo", "moco", "swav")
    for fmt in formats:
        path = tmp_path / f"{fmt}.pth"
        if fmt == "swav":
            swav_release(path, arch="resnet18", hidden=32)
        else:
            moco_release("resnet18", path)
            if fmt == "bingo":
                obj = torch.load(path, weights_only=True)
                obj["bingo"] = {"arch": "resnet18", "method": "bingo"}
                torch.save(obj, path)
    moco_release("resnet34", tmp_path / "r34.pth")
    common = BASE + [f"--data_dir={data}", "--end_epoch=1", "--init_lr=0.1"]
    results = run_cases("main_lincls", [
        *[common + [f"--pretrained={tmp_path / f'{fmt}.pth'}", f"--output_dir={tmp_path / fmt}"] for fmt in formats],
        common + [f"--pretrained={tmp_path / 'r34.pth'}", f"--output_dir={tmp_path / 'r34'}"],
    ], tmp_path)
    for fmt, result in zip(formats, results):
        assert result["status"] == 0 and f"format: {fmt}" in result["stdout"], result
        assert json.loads((tmp_path / fmt / "results.json").read_text())["checkpoint_format"] == fmt
    wrong = results[-1]
    assert wrong["status"] == 2 and "unexpected" in wrong["stderr"] and "layer1.2.conv1.weight" in wrong["stderr"]


def test_knn_protocol_and_semi_supervised(probe_data):
    tmp, data = probe_data
    out = tmp / "knn"
    run_script("main_lincls.py", BASE + [f"--data_dir={data}", f"--pretrained={tmp / 'tv.pth'}",
                                         f"--output_dir={out}", "--protocol=knn"], tmp, nproc=2)
    knn = json.loads((out / "results.json").read_text())["knn"]
    assert set(knn) == {"k10_majority", "k10_weighted_T0.07", "k24_weighted_T0.07"}
    assert knn["k10_majority"]["top1"] > 60
    semi = tmp / "semi"
    result = run_script("main_lincls.py", BASE + [f"--data_dir={data}", f"--pretrained={tmp / 'tv.pth'}",
                                                  f"--output_dir={semi}", "--protocol=semi", "--label_fraction=0.5",
                                                  "--init_lr=0.05", "--end_epoch=2"], tmp, nproc=2)
    assert "12 of 24 training images labelled" in result.stdout
    trained = json.loads((semi / "results.json").read_text())
    assert trained["protocol"] == "semi"
    # under DDP each rank updates its own BN statistics; both processes score rank 0's network, which probe.pth
    # holds, so one process scoring probe.pth finds the same accuracy
    run_script("main_lincls.py", BASE + [f"--data_dir={data}", f"--pretrained={tmp / 'tv.pth'}", f"--output_dir={semi}",
                                         "--protocol=semi", "--evaluate"], tmp)
    evaluated = json.loads((semi / "results.json").read_text())["val"]
    assert evaluated["count"] == 23
    assert evaluated["top1"] == pytest.approx(trained["last"]["top1"])
    assert evaluated["top5"] == pytest.approx(trained["last"]["top5"])


def test_knn_votes_by_hand():
    labels = torch.tensor([[0, 1, 1, 2], [2, 2, 0, 0]])
    sims = torch.tensor([[0.9, 0.5, 0.4, 0.1], [0.3, 0.2, 0.9, 0.8]])
    majority = knn_predict(labels, sims, 3, 3, None)
    assert majority.argmax(1).tolist() == [1, 2]
    # a 2-2 tie between classes 2 and 0 is broken by the nearer neighbours (class 0)
    assert knn_predict(labels, sims, 3, 4, None).argmax(1).tolist() == [1, 0]
    weighted = knn_predict(labels, sims, 3, 4, 0.07)
    assert weighted.argmax(1).tolist() == [0, 0]


def test_knn_predictions_are_the_classes_the_accuracies_count_and_round_trip_without_pickle(tmp_path):
    memory = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]]), dim=1)
    memory_labels = torch.tensor([0, 0, 1, 1, 2])
    queries = F.normalize(torch.tensor([[1.0, 0.05], [0.05, 1.0], [-1.0, 0.1], [0.7, 0.7]]), dim=1)
    query_labels = torch.tensor([0, 1, 2, 1])
    results, predicted = knn_scores(memory, memory_labels, queries, query_labels, 3, [(1, None), (2, 0.07)])
    assert predicted["k1_majority"].tolist() == [0, 1, 2, 0]  # the last query's nearest is class 0's [0.9, 0.1]
    assert results["k1_majority"]["top1"] == 75.0
    for name, classes in predicted.items():
        assert 100 * (classes == query_labels).double().mean().item() == pytest.approx(results[name]["top1"])
    save_predictions(tmp_path / "predictions.npz", query_labels, predicted)
    loaded = load_predictions(tmp_path / "predictions.npz")
    assert set(loaded) == {"labels", "k1_majority", "k2_weighted_T0.07"}
    assert loaded["labels"].tolist() == query_labels.tolist()
    assert loaded["k1_majority"].tolist() == predicted["k1_majority"].tolist()
    np.savez(tmp_path / "pickled.npz", labels=np.array([{"not": "an integer"}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_predictions(tmp_path / "pickled.npz")


def test_label_subsets(tmp_path):
    samples = [(f"/r/c{c}/i{i}.png", c) for c in range(3) for i in range(10)]
    chosen = label_subset(samples, "/r", fraction=0.2, seed=1)
    assert len(chosen) == 6 and sorted({samples[i][1] for i in chosen}) == [0, 1, 2]
    assert chosen == label_subset(samples, "/r", fraction=0.2, seed=1)
    listing = tmp_path / "1percent.txt"
    listing.write_text("i3.png\nc2/i4.png\n")
    with pytest.raises(ValueError, match="names 2 images, 4 of them found"):
        label_subset(samples, "/r", label_file=str(listing))
    listing.write_text("c0/i3.png\nc2/i4.png\n")
    assert label_subset(samples, "/r", label_file=str(listing)) == [3, 24]


def _pixel_knn_by_hand(data, size: int = 32) -> float:
    """10-NN majority top-1 (ties to the class with the larger summed similarity) of cosine similarity between raw
    eval-crop pixels, computed here without the project's code: the number the pixels floor must reproduce."""
    from torchvision.datasets import ImageFolder

    from datasets.transforms import eval_transform

    train, val = (ImageFolder(str(data / split), eval_transform(size)) for split in ("train", "val"))
    features = [torch.nn.functional.normalize(torch.stack([x.flatten() for x, _ in split]), dim=1)
                for split in (train, val)]
    train_labels = torch.tensor(train.targets)
    hits = 0
    for query, target in zip(features[1], val.targets):
        sims, top = (features[0] @ query).topk(10)
        classes = len(train.classes)
        votes = torch.bincount(train_labels[top], minlength=classes).double()
        votes += 1e-6 * torch.bincount(train_labels[top], weights=sims.double(), minlength=classes)
        hits += int(votes.argmax() == target)
    return 100.0 * hits / len(val)


def test_floors_are_scored_by_the_same_code(probe_data, tmp_path):
    tmp, data = probe_data
    # raw pixels: the k-NN classifier on the images themselves, and a linear probe trained on them
    pixels = tmp_path / "pixels"
    run_script("main_lincls.py", ["--arch=pixels", "--image_size=32", "--batch_size=8", "--num_workers=0",
                                  f"--data_dir={data}", f"--output_dir={pixels}", "--with_knn", "--end_epoch=3",
                                  "--init_lr=0.1"], tmp_path)
    results = json.loads((pixels / "results.json").read_text())
    assert results["checkpoint_format"] == "untrained" and results["pretrained"] is None
    assert results["knn"]["k10_majority"]["top1"] == pytest.approx(_pixel_knn_by_hand(data))
    assert results["epochs_done"] == 3 and results["last"]["top1"] > 60  # colour classes: pixels separate them

    # an untrained network scores exactly as the same weights loaded from a checkpoint file
    torch.manual_seed(5)
    torch.save(build_backbone("resnet18").state_dict(), tmp_path / "init.pth")
    scored = {}
    weights = {"untrained": ["--untrained", "--seed=5"], "file": [f"--pretrained={tmp_path / 'init.pth'}", "--seed=5"]}
    results = run_cases("main_lincls", [BASE + [f"--data_dir={data}", f"--output_dir={tmp_path / name}", *flags,
                                                "--with_knn", "--end_epoch=1", "--init_lr=0.1"]
                                        for name, flags in weights.items()], tmp_path)
    assert [r["status"] for r in results] == [0, 0], results
    for name in weights:
        scored[name] = json.loads((tmp_path / name / "results.json").read_text())
    assert scored["untrained"]["knn"] == scored["file"]["knn"]
    assert scored["untrained"]["last"] == scored["file"]["last"]
    assert scored["untrained"]["checkpoint_format"] == "untrained"


def test_floor_and_checkpoint_flags_exclude_each_other(probe_data, tmp_path):
    tmp, data = probe_data
    both, neither = run_cases("main_lincls", [
        BASE + [f"--data_dir={data}", f"--output_dir={tmp_path / 'a'}", "--untrained",
                f"--pretrained={tmp / 'tv.pth'}"],
        BASE + [f"--data_dir={data}", f"--output_dir={tmp_path / 'b'}"],
    ], tmp_path)
    assert both["status"] == 2 and "exclude each other" in both["stderr"]
    assert neither["status"] == 2 and "--pretrained is required" in neither["stderr"]


def test_recomputed_bn_statistics_are_the_data_averages_on_two_processes(probe_data, tmp_path):
    tmp, data = probe_data
    out = tmp_path / "precise"
    result = run_script("main_lincls.py", BASE + [f"--data_dir={data}", f"--output_dir={out}", "--untrained",
                                                  "--seed=3", "--recompute_bn", "--end_epoch=1", "--init_lr=0.1"],
                        tmp_path, nproc=2)
    assert "running statistics of 20 layers re-estimated on 24 training images" in result.stdout
    assert json.loads((out / "results.json").read_text())["recomputed_bn"] is True
    from datasets.folders import IndexedImageFolder
    from datasets.transforms import eval_transform

    torch.manual_seed(3)
    net = build_backbone("resnet18")  # the same initial weights
    crops = torch.stack([x for x, _, _ in IndexedImageFolder(data / "train", eval_transform(32))])
    with torch.no_grad():
        first = net.conv1(crops)
    probe = torch.load(out / "probe.pth", weights_only=True)["model"]
    assert torch.allclose(probe["backbone.bn1.running_mean"], first.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not torch.allclose(probe["backbone.layer4.1.bn2.running_var"], torch.ones(512))


def test_the_logistic_regression_protocol_scores_a_floor_and_a_network_with_intervals(probe_data, tmp_path):
    tmp, data = probe_data
    floor, network = run_cases("main_lincls", [
        ["--arch=pixels", "--image_size=32", "--batch_size=8", "--num_workers=0", f"--data_dir={data}",
         f"--output_dir={tmp_path / 'pixels'}", "--protocol=logreg", "--with_knn"],
        BASE + [f"--data_dir={data}", f"--pretrained={tmp / 'tv.pth'}", f"--output_dir={tmp_path / 'net'}",
                "--protocol=logreg"],
    ], tmp_path)
    assert floor["status"] == 0 and network["status"] == 0, (floor, network)
    pixels = json.loads((tmp_path / "pixels" / "results.json").read_text())
    assert pixels["protocol"] == "logreg" and pixels["checkpoint_format"] == "untrained"
    assert pixels["logreg"]["top1"] == 100.0 and pixels["logreg"]["count"] == 23  # colour classes: separable
    assert pixels["logreg"]["top1_ci95"][0] < 100.0 == pixels["logreg"]["top1_ci95"][1]
    assert pixels["knn"]["k10_majority"]["top1"] == pytest.approx(_pixel_knn_by_hand(data))  # the same features
    scored = json.loads((tmp_path / "net" / "results.json").read_text())
    assert "knn" not in scored and 0 <= scored["logreg"]["top1"] <= scored["logreg"]["top5"] <= 100
    assert list(scored["logreg"]["holdout_top1"])[:3] == ["0.0001", "0.001", "0.01"]  # the path from strong to weak


def test_the_frozen_subset_probe_trains_only_the_linear_layer_on_the_label_subset(probe_data, tmp_path):
    """DisCo's semi-supervised protocol (--protocol=semi_linear): the same label subset as fine-tuning, every
    backbone tensor (BN statistics included) unchanged, results.json naming the protocol."""
    tmp, data = probe_data
    out = tmp_path / "semi_linear"
    common = BASE + [f"--data_dir={data}", f"--pretrained={tmp / 'tv.pth'}", f"--output_dir={out}",
                     "--label_fraction=0.5", "--init_lr=0.5", "--end_epoch=3"]
    trained, as_semi = run_cases("main_lincls", [common + ["--protocol=semi_linear"],
                                                  common + ["--protocol=semi", "--resume=auto", "--end_epoch=4"]],
                                 tmp_path)
    assert trained["status"] == 0, trained
    assert "12 of 24 training images labelled" in trained["stdout"]
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"] == "semi_linear" and results["epochs_done"] == 3
    probe = torch.load(out / "probe.pth", weights_only=True)["model"]
    for key, value in torch.load(tmp / "tv.pth", weights_only=True).items():
        assert torch.equal(probe[f"backbone.{key}"], value), key
    assert probe["fc.weight"].abs().sum() > 0
    assert as_semi["status"] == 2 and "was trained with --protocol=semi_linear" in as_semi["stderr"], as_semi


def test_the_cifar_transfer_protocol_takes_its_release_settings_and_keeps_the_backbone(probe_data, tmp_path):
    """--protocol=transfer: DisCo's cifar_main_lincls.py settings unless given (here the epochs and size are, to stay
    small), bicubic upsampling, a frozen backbone, results.json naming the protocol."""
    from datasets.transforms import transfer_eval_transform, transfer_train_transform

    bicubic = torchvision.transforms.InterpolationMode.BICUBIC
    train, evaluation = transfer_train_transform(224).transforms, transfer_eval_transform(224).transforms
    assert isinstance(train[0], torchvision.transforms.RandomResizedCrop) and train[0].interpolation == bicubic
    assert train[0].size == (224, 224) and isinstance(train[1], torchvision.transforms.RandomHorizontalFlip)
    assert isinstance(evaluation[0], torchvision.transforms.Resize) and evaluation[0].interpolation == bicubic
    assert evaluation[0].size == 224 and isinstance(evaluation[1], torchvision.transforms.CenterCrop)
    tmp, data = probe_data
    out = tmp_path / "transfer"
    (result,) = run_cases("main_lincls", [["--arch=resnet18", "--protocol=transfer", f"--data_dir={data}",
                                           f"--pretrained={tmp / 'tv.pth'}", f"--output_dir={out}", "--num_workers=0",
                                           "--image_size=32", "--end_epoch=2"]], tmp_path)
    assert result["status"] == 0, result
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"] == "transfer" and results["epochs_done"] == 2
    used = results["flags"]
    assert (used["init_lr"], used["decay_method"], used["schedule"], used["wd"], used["momentum"],
            used["batch_size"], used["image_size"]) == (3.0, "step", [], 0.0, 0.9, 256, 32)
    assert [row["lr"] for row in csv.DictReader(open(out / "epochs.csv"))] == ["3.0", "3.0"]
    probe = torch.load(out / "probe.pth", weights_only=True)["model"]
    for key, value in torch.load(tmp / "tv.pth", weights_only=True).items():
        assert torch.equal(probe[f"backbone.{key}"], value), key
