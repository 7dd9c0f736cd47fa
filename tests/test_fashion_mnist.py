import json

import numpy as np
import pytest

from datasets.arrays import IDX_FILES
from datasets.folders import DatasetError, IndexedImageFolder, labelled_splits, open_split
from scripts import fashion_mnist

from helpers import write_idx_file


def _write_idx(folder, split_files, n, seed, gzipped: bool = True):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10
    image_name, label_name = split_files
    suffix = ".gz" if gzipped else ""
    write_idx_file(folder / f"{image_name}{suffix}", images, gzipped)
    write_idx_file(folder / f"{label_name}{suffix}", labels, gzipped)
    return images, labels


def test_prepare_writes_a_class_balanced_imagenet_layout(tmp_path, monkeypatch):
    source = tmp_path / "debian"
    source.mkdir()
    images, labels = _write_idx(source, IDX_FILES["train"], 60, 0)
    _write_idx(source, IDX_FILES["val"], 30, 1)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", source)
    out = fashion_mnist.prepare(tmp_path / "fm", train_per_class=3, val_per_class=2)
    train = IndexedImageFolder(out / "train")
    assert len(train) == 30 and len(train.classes) == 10 and train.classes[0] == "00_t-shirt"
    first = np.asarray(train.loader(train.samples[0][0]))
    index = int(train.samples[0][0].rsplit("/", 1)[1].split(".")[0])
    assert first.shape == (28, 28, 3) and (first[..., 0] == images[index]).all() and labels[index] == 0
    assert len(IndexedImageFolder(out / "val")) == 20
    assert json.loads((out / "prepared.json").read_text())["images"] == {"train": 30, "val": 20}
    fashion_mnist.prepare(tmp_path / "fm", train_per_class=1, val_per_class=1)  # another size replaces the folders
    assert len(IndexedImageFolder(out / "train")) == 10


def test_prepare_reads_a_given_folder_of_gz_files(tmp_path):
    source = tmp_path / "carried"
    source.mkdir()
    _write_idx(source, IDX_FILES["train"], 20, 0)
    _write_idx(source, IDX_FILES["val"], 10, 1)
    out = fashion_mnist.prepare(tmp_path / "fm", train_per_class=None, val_per_class=None, source=source)
    assert len(IndexedImageFolder(out / "train")) == 20 and len(IndexedImageFolder(out / "val")) == 10
    (source / f"{IDX_FILES['val'][0]}.gz").unlink()
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz"):
        fashion_mnist.prepare(tmp_path / "other", train_per_class=1, val_per_class=1, source=source)


def test_the_release_folder_reads_in_place_with_the_pixels_of_the_prepared_pngs(tmp_path):
    """``--data_dir`` at the folder of idx files: the release's order and labels, each image the RGB of its gray
    values, as the prepared PNG folders hold it; gzipped and plain files alike; a damaged file named."""
    source = tmp_path / "fashion-mnist"
    source.mkdir()
    images, labels = _write_idx(source, IDX_FILES["train"], 20, 0)
    _write_idx(source, IDX_FILES["val"], 10, 1, gzipped=False)
    train, val = labelled_splits(source, None, None)
    assert (len(train), len(val)) == (20, 10) and train.targets == labels.tolist()
    assert train.classes == val.classes == [str(c) for c in range(10)]
    assert "20 images of idx's train split" in train.describe()
    pngs = IndexedImageFolder(fashion_mnist.prepare(tmp_path / "fm", None, None, source=source) / "train")
    for path, target in pngs.samples:
        index = int(path.rsplit("/", 1)[1].split(".")[0])
        native, native_target, _ = train[index]
        np.testing.assert_array_equal(np.asarray(native), np.asarray(pngs.loader(path)))
        assert native_target == target
    with open(source / "t10k-images-idx3-ubyte", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte: its header says \(10, 28, 28\), 7840 bytes, but "
                                           r"it holds 7841\. Expected the release as downloaded: the MNIST format"):
        open_split(source, "val")
    _write_idx(source, IDX_FILES["val"], 10, 1, gzipped=False)
    (source / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte\(\.gz\) is missing"):
        open_split(source, "val")
