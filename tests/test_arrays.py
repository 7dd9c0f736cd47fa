"""CIFAR-10, CIFAR-100 and STL-10 read natively from their releases' exact formats (files written here): order,
labels, pixels, the fingerprint, the unlabelled split kept out of evaluation, errors; and the whole chain on a
CIFAR-format release: kNN step, a BINGO student, the CIFAR transfer probe."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

from datasets.folders import DatasetError, IndexedImageFolder, labelled_splits, open_split
from datasets.neighbours import dataset_fingerprint

from helpers import moco_release, run_cases


def cifar_images(rng, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def write_cifar10(folder, per_batch: int = 4, test: int = 6, seed: int = 0) -> dict:
    """cifar-10-batches-py/ as released: five training batches and a test batch, each a protocol-2 pickle of a dict
    with bytes keys and 'data' uint8 [N, 3072] (channel planes, row-major), and batches.meta."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    written = {"train": ([], []), "val": ([], [])}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = test if name == "test_batch" else per_batch
        images, labels = cifar_images(rng, n), rng.integers(0, 10, n).tolist()
        batch = {b"batch_label": name.encode(), b"labels": labels,
                 b"data": images.transpose(0, 3, 1, 2).reshape(n, -1), b"filenames": [b"x.png"] * n}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
        split = written["val" if name == "test_batch" else "train"]
        split[0].append(images)
        split[1].extend(labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch}, handle, protocol=2)
    return {split: (np.concatenate(images), np.array(labels)) for split, (images, labels) in written.items()}


def write_stl10(folder, counts=(5, 4, 7), seed: int = 1) -> dict:
    """stl10_binary/ as released: uint8 images stored column-major ([N, 3, 96, 96] with the last two axes swapped),
    labels 1..10, class_names.txt."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    written = {}
    for stem, n in zip(("train", "test", "unlabeled"), counts):
        images = rng.integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)
        images.transpose(0, 3, 2, 1).tofile(folder / f"{stem}_X.bin")
        labels = rng.integers(1, 11, n).astype(np.uint8)
        if stem != "unlabeled":
            labels.tofile(folder / f"{stem}_y.bin")
        written[stem] = (images, labels.astype(np.int64) - 1)
    (folder / "class_names.txt").write_text("\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse",
                                                       "monkey", "ship", "truck"]) + "\n")
    return written


def test_cifar10_reads_in_the_release_order_with_its_labels_pixels_and_a_stable_fingerprint(tmp_path):
    written = write_cifar10(tmp_path / "cifar-10-batches-py")
    train, val = labelled_splits(tmp_path / "cifar-10-batches-py", None, None)
    assert len(train) == 20 and len(val) == 6 and train.classes[:2] == ["airplane", "automobile"]
    assert train.targets == written["train"][1].tolist() and val.targets == written["val"][1].tolist()
    image, target, index = train[13]
    np.testing.assert_array_equal(np.asarray(image), written["train"][0][13])
    assert (target, index) == (written["train"][1][13], 13)
    again = IndexedImageFolder(open_split(tmp_path / "cifar-10-batches-py", "train"))
    assert dataset_fingerprint(again) == dataset_fingerprint(train)
    assert "20 images of cifar10's train split" in train.describe()


def test_cifar100_uses_the_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for name, n in (("train", 8), ("test", 3)):
        images, fine = cifar_images(rng, n), rng.integers(0, 100, n).tolist()
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": images.transpose(0, 3, 1, 2).reshape(n, -1), b"fine_labels": fine,
                         b"coarse_labels": [0] * n, b"filenames": [b"y"] * n}, handle, protocol=2)
        if name == "train":
            expected = fine, images
    with open(folder / "meta", "wb") as handle:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                     b"coarse_label_names": [b"s"] * 20}, handle, protocol=2)
    train, val = labelled_splits(folder, None, None)
    assert len(train.classes) == 100 and train.targets == expected[0] and len(val) == 3
    np.testing.assert_array_equal(np.asarray(train[5][0]), expected[1][5])


def test_stl10_reads_its_column_major_images_and_keeps_the_unlabelled_split_out_of_evaluation(tmp_path):
    written = write_stl10(tmp_path / "stl10_binary")
    train, val = labelled_splits(tmp_path / "stl10_binary", None, None)
    assert (len(train), len(val)) == (5, 4) and train.classes[7] == "monkey"
    np.testing.assert_array_equal(np.asarray(train[3][0]), written["train"][0][3])
    assert train.targets == written["train"][1].tolist()
    unlabeled = IndexedImageFolder(open_split(tmp_path / "stl10_binary" / "unlabeled", "train"))
    assert len(unlabeled) == 7 and not unlabeled.labelled and "no labels" in unlabeled.describe()
    np.testing.assert_array_equal(np.asarray(unlabeled[6][0]), written["unlabeled"][0][6])
    both = IndexedImageFolder(open_split(tmp_path / "stl10_binary" / "train+unlabeled", "train"))
    assert len(both) == 12
    np.testing.assert_array_equal(np.asarray(both[5][0]), written["unlabeled"][0][0])
    with pytest.raises(DatasetError, match="unlabelled images have no labels and are for pre-training only"):
        labelled_splits(tmp_path / "stl10_binary" / "unlabeled", None, None)


def test_a_broken_release_is_named_with_its_file_and_layout_and_a_crafted_pickle_runs_nothing(tmp_path):
    write_cifar10(tmp_path / "c10")
    os.remove(tmp_path / "c10" / "data_batch_3")
    with pytest.raises(DatasetError, match=r"data_batch_3 is missing\. Expected the release as downloaded: "
                                           r"cifar-10-batches-py/"):
        open_split(tmp_path / "c10", "train")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    write_cifar10(tmp_path / "evil")
    with open(tmp_path / "evil" / "test_batch", "wb") as handle:
        pickle.dump({b"data": Payload(), b"labels": []}, handle, protocol=2)
    with pytest.raises(DatasetError, match="holds a pickled posix.system"):
        open_split(tmp_path / "evil", "val")
    assert not marker.exists()
    write_stl10(tmp_path / "stl")
    with open(tmp_path / "stl" / "test_X.bin", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(DatasetError, match="not a whole number of 3x96x96 images"):
        open_split(tmp_path / "stl", "val")


def test_the_whole_chain_runs_on_a_cifar_release(tmp_path):
    release = tmp_path / "cifar-10-batches-py"
    write_cifar10(release, per_batch=4)
    moco_release("resnet18", tmp_path / "teacher.pth.tar")
    teacher = tmp_path / "teacher.pth.tar"
    knn, = run_cases("run_knn", [[f"--data_dir={release}", "--arch=resnet18", f"--ckpt_name={teacher}",
                                  "--image_size=32", "--clus_pos_num=2", f"--corr_name={tmp_path / 'nn.npy'}",
                                  "--num_workers=0"]], tmp_path)
    assert knn["status"] == 0, knn
    meta = json.loads((tmp_path / "nn.json").read_text())
    assert meta["num_images"] == 20 and np.load(tmp_path / "nn.npy").shape == (20, 2)
    student = [f"--data_dir={release}", "--t_arch=resnet18", f"--pretrain_path={teacher}",
               f"--corr_npy={tmp_path / 'nn.npy'}", "--clus_pos_num=2", "--image_size=32", "--batch_size=4",
               "--moco_k=8", "--num_workers=0", "--end_epoch=1"]
    distill, held = run_cases("main_distill", [
        student + [f"--output_dir={tmp_path / 'student'}"],
        student + [f"--output_dir={tmp_path / 'held'}", "--device_views", "--in_memory"]], tmp_path)
    assert distill["status"] == 0 and held["status"] == 0, (distill, held)
    assert "held 20 images of 32x32 from" in held["stdout"]  # the release copied as stored, no per-image step
    probe, = run_cases("main_lincls", [[
        "--arch=resnet18", "--protocol=transfer", f"--data_dir={release}",
        f"--pretrained={tmp_path / 'student' / 'final.pth'}", f"--output_dir={tmp_path / 'transfer'}",
        "--image_size=32", "--end_epoch=1", "--batch_size=8", "--num_workers=0"]], tmp_path)
    assert probe["status"] == 0, probe
    results = json.loads((tmp_path / "transfer" / "results.json").read_text())
    assert results["protocol"] == "transfer" and results["num_val"] == 6
    assert torch.load(tmp_path / "student" / "final.pth", weights_only=True)["bingo"]["num_images"] == 20


def test_imagenet100_links_cmcs_classes_without_copying_and_names_a_missing_one(tmp_path):
    from scripts.make_imagenet100 import build, classes

    wanted = classes()
    assert len(wanted) == 100 == len(set(wanted)) and wanted[0] == "n02869837"
    imagenet = tmp_path / "imagenet"
    others = [f"n{9000000 + i:08d}" for i in range(900)]  # a fake 1,000-class tree
    for split in ("train", "val"):
        for wnid in wanted + others:
            (imagenet / split / wnid).mkdir(parents=True)
        (imagenet / split / wanted[3] / "a.JPEG").write_bytes(b"jpeg")
    build(imagenet, tmp_path / "in100")
    for split in ("train", "val"):
        made = sorted(p.name for p in (tmp_path / "in100" / split).iterdir())
        assert made == sorted(wanted) and all((tmp_path / "in100" / split / w).is_symlink() for w in made)
    assert (tmp_path / "in100" / "val" / wanted[3] / "a.JPEG").read_bytes() == b"jpeg"
    assert json.loads((tmp_path / "in100" / "imagenet100.json").read_text())["classes"] == 100
    build(imagenet, tmp_path / "in100")  # again: the same links, nothing refused
    (imagenet / "val" / wanted[50]).rmdir()
    with pytest.raises(SystemExit, match=f"{wanted[50]} is not a folder .*class folders"):
        build(imagenet, tmp_path / "other")
    assert not (tmp_path / "other").exists()
