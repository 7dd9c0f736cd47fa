import numpy as np
import pytest
import torch
from torchvision.datasets import ImageFolder

from datasets.folders import BagDataset, DatasetError, IndexedImageFolder, file_list_sha256, open_split
from datasets.transforms import (
    eval_transform,
    linear_train_transform,
    moco_v1_augmentation,
    moco_v2_augmentation,
    resize_size,
)

from helpers import make_image_folder


def test_order_equals_torchvision_imagefolder(tmp_path):
    root = make_image_folder(tmp_path, classes=4, per_class=5) / "train"
    # a class folder name that sorts differently from creation order
    (root / "a_first").mkdir()
    (root / "class_0" / "img_000.png").rename(root / "a_first" / "z.png")
    ours = IndexedImageFolder(root)
    reference = ImageFolder(str(root))
    assert ours.samples == reference.samples and ours.classes == reference.classes
    image, target, index = ours[3]
    assert index == 3 and target == reference.samples[3][1]


def test_file_list_hash_tracks_order_and_content(tmp_path):
    root = make_image_folder(tmp_path, classes=2, per_class=3) / "train"
    first = file_list_sha256(IndexedImageFolder(root))
    assert first == file_list_sha256(IndexedImageFolder(root))
    (root / "class_1" / "img_000.png").rename(root / "class_1" / "img_999.png")
    assert file_list_sha256(IndexedImageFolder(root)) != first


def test_transforms_give_the_stated_sizes(tmp_path):
    from PIL import Image
    image = Image.new("RGB", (50, 37), (10, 200, 30))
    for size in (32, 224):
        assert eval_transform(size)(image).shape == (3, size, size)
        assert moco_v2_augmentation(size)(image).shape == (3, size, size)
        assert moco_v1_augmentation(size)(image).shape == (3, size, size)
        assert linear_train_transform(size)(image).shape == (3, size, size)
    assert resize_size(224) == 256 and resize_size(32) == 37


def test_missing_empty_and_unreadable_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="train"):
        open_split(tmp_path, "train")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        IndexedImageFolder(tmp_path / "empty" / "train")
    root = make_image_folder(tmp_path / "bad", classes=1, per_class=2) / "train"
    broken = root / "class_0" / "img_001.png"
    broken.write_bytes(b"not a png")
    dataset = IndexedImageFolder(root)
    with pytest.raises(DatasetError, match="img_001.png"):
        dataset[1]


def test_bag_dataset_draws_from_the_row_and_is_reproducible(tmp_path):
    root = make_image_folder(tmp_path, classes=2, per_class=4, size=16) / "train"
    n = 8
    neighbours = np.array([[(i + 1) % n, (i + 2) % n, (i + 3) % n] for i in range(n)])
    dataset = BagDataset(root, eval_transform(16), neighbours, clus_pos_num=2, seed=3)
    a_q, a_k, p_q, p_k, index = dataset[5]
    assert index == 5
    allowed = [eval_transform(16)(dataset.loader(dataset.samples[j][0])) for j in neighbours[5, :2]]
    assert any(torch.equal(p_q, x) for x in allowed)  # eval transform: the neighbour is one of the first 2 columns
    again = BagDataset(root, moco_v2_augmentation(16), neighbours, clus_pos_num=2, seed=3)
    first, second = again[2], again[2]
    assert all(torch.equal(x, y) for x, y in zip(first[:4], second[:4]))
    assert not torch.equal(first[0], first[1])  # independent views
    again.set_epoch(1)
    assert not torch.equal(again[2][0], first[0])
    pair = BagDataset(root, moco_v2_augmentation(16), None, seed=3, views="pair")
    assert len(pair[0]) == 3


def test_neighbours_are_drawn_uniformly(tmp_path):
    root = make_image_folder(tmp_path, classes=1, per_class=4, size=8) / "train"
    neighbours = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])
    dataset = BagDataset(root, eval_transform(8), neighbours, clus_pos_num=3, seed=0)
    images = {j: eval_transform(8)(dataset.loader(dataset.samples[j][0])) for j in range(4)}
    counts = {1: 0, 2: 0, 3: 0}
    for epoch in range(150):
        dataset.set_epoch(epoch)
        drawn = dataset[0][2]
        counts[next(j for j in (1, 2, 3) if torch.equal(images[j], drawn))] += 1
    assert min(counts.values()) > 30, counts
