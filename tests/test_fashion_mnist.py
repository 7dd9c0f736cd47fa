import gzip
import json

import numpy as np
import pytest

from datasets.folders import DatasetError, IndexedImageFolder
from scripts import fashion_mnist


def _write_idx(folder, split_files, n, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10
    image_name, label_name = split_files
    with gzip.open(folder / image_name, "wb") as handle:
        handle.write(b"\0" * 16 + images.tobytes())
    with gzip.open(folder / label_name, "wb") as handle:
        handle.write(b"\0" * 8 + labels.tobytes())
    return images, labels


def test_prepare_writes_a_class_balanced_imagenet_layout(tmp_path, monkeypatch):
    source = tmp_path / "debian"
    source.mkdir()
    images, labels = _write_idx(source, fashion_mnist._FILES["train"], 60, 0)
    _write_idx(source, fashion_mnist._FILES["val"], 30, 1)
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
    _write_idx(source, fashion_mnist._FILES["train"], 20, 0)
    _write_idx(source, fashion_mnist._FILES["val"], 10, 1)
    out = fashion_mnist.prepare(tmp_path / "fm", train_per_class=None, val_per_class=None, source=source)
    assert len(IndexedImageFolder(out / "train")) == 20 and len(IndexedImageFolder(out / "val")) == 10
    (source / fashion_mnist._FILES["val"][0]).unlink()
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz"):
        fashion_mnist.prepare(tmp_path / "other", train_per_class=1, val_per_class=1, source=source)
