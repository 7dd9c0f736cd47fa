"""--device_views: parameters drawn in the workers, decoding and augmentation on the device (here the CPU).

The device path must make the CPU pipeline's views: same seed, same views up to rounding (PIL rounds to 8 bits
after each step; the device path stays in float32).
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from datasets.device_views import (
    DeviceViews,
    EncodedBagDataset,
    EncodedImageFolder,
    PackedImages,
    collate_encoded,
    read_encoded,
    sample_view,
)
from datasets.folders import BagDataset, DatasetError, IndexedImageFolder
from datasets.transforms import CROP_FLIP, IMAGENET_STD, MOCO_V1, MOCO_V2, augmentation, eval_transform
from engine.features import embed
from models.backbones import build_backbone
from utils import dist as edist

from helpers import calibrated_teacher, run_script

STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def smooth_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photograph-like image: random colours at low resolution, upsampled smoothly."""
    small = rng.integers(0, 256, size=(max(height // 20, 2), max(width // 20, 2), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BICUBIC)


def make_photo_folder(root: Path, per_class: int = 4, classes: int = 3) -> Path:
    """JPEGs of several sizes, plus the formats the device cannot decode: grayscale JPEG works, CMYK JPEG and PNG
    are decoded in the worker."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / "train" / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            smooth_image(rng, 60 + 20 * i, 50 + 10 * c).save(folder / f"img_{i}.jpg", quality=92)
    odd = root / "train" / "class_0"
    smooth_image(rng, 70, 60).convert("L").save(odd / "gray.jpg", quality=92)
    smooth_image(rng, 70, 60).convert("CMYK").save(odd / "cmyk.jpg", quality=92)
    smooth_image(rng, 64, 48).save(odd / "lossless.png")
    return root


def view_error(device: torch.Tensor, cpu: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per view, in [0, 1] pixel units (normalisation undone)."""
    return ((device - cpu).abs() * STD).mean(dim=(1, 2, 3))


@pytest.mark.parametrize("spec", [MOCO_V2, MOCO_V1, CROP_FLIP], ids=["moco_v2", "moco_v1", "crop_flip"])
def test_device_views_equal_the_cpu_pipeline_view_for_view(tmp_path, spec):
    smooth_image(np.random.default_rng(1), 200, 150).save(tmp_path / "photo.jpg", quality=92)
    encoded = read_encoded(str(tmp_path / "photo.jpg"))
    assert encoded.data.dim() == 1  # stays encoded for the device
    picture = Image.open(tmp_path / "photo.jpg").convert("RGB")
    cpu, params = [], []
    for seed in range(48):
        torch.manual_seed(seed)
        cpu.append(augmentation(spec, 32)(picture))
        torch.manual_seed(seed)
        params.append(sample_view(encoded.width, encoded.height, spec))
    params = default_collate(params)
    views = DeviceViews(32, spec, "cpu")
    device = views.augment(views.decode(PackedImages.pack([encoded])) * 48, params)
    cpu = torch.stack(cpu)

    # every random branch ran both ways, a certain one always, an absent one never
    drawn = {"jitter": params.jitter, "gray": params.gray, "flip": params.flip, "blur": params.blur_sigma > 0}
    for name, p in {"jitter": spec.jitter_p, "gray": spec.gray_p, "flip": 0.5, "blur": spec.blur_p}.items():
        count = int(drawn[name].sum())
        assert count == 48 if p >= 1 else count == 0 if p == 0 else 0 < count < 48, (name, count)
    errors = view_error(device, cpu)
    assert errors.max() < 0.02, errors
    assert errors.mean() < 0.008
    # a wrong view is far off: the comparison can tell views apart
    assert view_error(device, cpu.roll(1, 0)).min() > 0.05


def test_sampled_parameters_follow_the_moco_v2_distribution():
    torch.manual_seed(0)
    draws = default_collate([sample_view(500, 375, MOCO_V2) for _ in range(3000)])
    n = 3000
    for flag, p in ((draws.jitter, 0.8), (draws.gray, 0.2), (draws.blur_sigma > 0, 0.5), (draws.flip, 0.5)):
        assert abs(flag.float().mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5
    top, left, height, width = draws.crop.T
    assert ((top >= 0) & (left >= 0) & (top + height <= 375) & (left + width <= 500)).all()
    area = (height * width).float() / (500 * 375)
    assert area.min() >= 0.19 and area.max() <= 1.0
    jittered = draws.factors[draws.jitter]
    assert ((jittered[:, :3] >= 0.6) & (jittered[:, :3] <= 1.4)).all()
    assert (jittered[:, 3].abs() <= 0.1).all()
    assert torch.equal(draws.order.sort(dim=1).values, torch.arange(4).expand(n, 4))
    sigma = draws.blur_sigma[draws.blur_sigma > 0]
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0


@pytest.mark.parametrize("views", ["bag", "pair"])
def test_bag_batches_on_the_device_equal_the_cpu_bag_batches(tmp_path, views):
    root = make_photo_folder(tmp_path)
    n = 15
    neighbours = np.stack([(np.arange(n) + s) % n for s in (1, 2)], axis=1) if views == "bag" else None
    cpu_set = BagDataset(root / "train", augmentation(MOCO_V2, 32), neighbours, clus_pos_num=2, seed=5, views=views)
    device_set = EncodedBagDataset(root / "train", MOCO_V2, neighbours, clus_pos_num=2, seed=5, views=views)
    kinds = {Path(path).name: read_encoded(path).data.dim() for path, _ in device_set.samples}
    assert kinds["cmyk.jpg"] == 3 and kinds["lossless.png"] == 3 and kinds["gray.jpg"] == 1
    for epoch in (0, 1):
        cpu_set.set_epoch(epoch)
        device_set.set_epoch(epoch)
        cpu_batch = default_collate([cpu_set[i] for i in range(n)])
        device_batch = collate_encoded([device_set[i] for i in range(n)])
        made = DeviceViews(32, MOCO_V2, "cpu").train_views(device_batch)
        assert torch.equal(device_batch[-1], cpu_batch[-1])
        assert len(made) == len(cpu_batch) - 1 == (4 if views == "bag" else 2)
        for device, cpu in zip(made, cpu_batch[:-1]):
            assert device.shape == cpu.shape == (n, 3, 32, 32)
            assert view_error(device, cpu).max() < 0.03


def test_a_jpeg_that_cannot_be_decoded_is_named(tmp_path):
    root = make_photo_folder(tmp_path)
    broken = root / "train" / "class_1" / "img_2.jpg"
    data = broken.read_bytes()
    broken.write_bytes(data[:data.index(b"\xff\xda") + 20])  # the header survives, the image data does not
    assert read_encoded(str(broken)).data.dim() == 1  # the worker cannot tell: it reads the header only
    dataset = EncodedImageFolder(root / "train")
    batch = collate_encoded([dataset[i] for i in range(len(dataset))])
    with pytest.raises(DatasetError, match="class_1/img_2.jpg"):
        DeviceViews(32, MOCO_V2, "cpu").eval_crops(batch)


def test_device_eval_crops_embed_like_the_cpu_transform(tmp_path):
    root = make_photo_folder(tmp_path)
    ctx = edist.init("cpu")
    torch.manual_seed(0)
    network = build_backbone("resnet18").eval()
    cpu = embed(network, IndexedImageFolder(root / "train", eval_transform(32)), ctx, 4, num_workers=0)
    views = DeviceViews(32, MOCO_V2, "cpu")
    device = embed(network, EncodedImageFolder(root / "train"), ctx, 4, num_workers=0,
                   collate_fn=collate_encoded, prepare=views.eval_crops)
    cosine = (cpu * device).sum(1)
    assert cosine.min() > 0.995
    assert (cpu @ device.T).argmax(1).tolist() == list(range(len(cpu)))


def test_run_knn_and_distill_run_with_device_views(tmp_path):
    root = make_photo_folder(tmp_path / "data", per_class=5)
    calibrated_teacher("resnet18", root, tmp_path / "teacher.pth.tar")
    run_script("run_knn.py", ["--arch=resnet18", f"--ckpt_name={tmp_path / 'teacher.pth.tar'}", f"--data_dir={root}",
                              "--image_size=32", "--clus_pos_num=3", f"--corr_name={tmp_path / 'nn.npy'}",
                              "--num_workers=1", "--batch_size=8", "--device_views", "--channels_last"],
               tmp_path)
    neighbours = np.load(tmp_path / "nn.npy")
    assert neighbours.shape == (18, 3) and not (neighbours == np.arange(18)[:, None]).any()
    out = tmp_path / "run"
    run_script("main_distill.py", ["--t_arch=resnet18", f"--pretrain_path={tmp_path / 'teacher.pth.tar'}",
                                   f"--data_dir={root}", f"--corr_npy={tmp_path / 'nn.npy'}", "--clus_pos_num=3",
                                   "--image_size=32", "--batch_size=6", "--moco_k=12", "--num_workers=1", "--seed=0",
                                   "--end_epoch=2", f"--output_dir={out}", "--device_views",
                                   "--amp", "--channels_last"], tmp_path)  # the demo's GPU flags
    final = torch.load(out / "final.pth", weights_only=True)
    assert final["epoch"] == 2 and final["bingo"]["flags"]["device_views"]
    assert (out / "student_backbone.pth").is_file()


def test_images_held_in_memory_give_the_same_batches_as_files(tmp_path):
    root = make_photo_folder(tmp_path)
    n = 15
    neighbours = np.stack([(np.arange(n) + s) % n for s in (1, 2)], axis=1)
    views = DeviceViews(32, MOCO_V2, "cpu")

    def batches(dataset):
        out = []
        for epoch in (0, 1):
            dataset.set_epoch(epoch)
            out.append(views.train_views(collate_encoded([dataset[i] for i in range(n)])))
        return out

    from_files = batches(EncodedBagDataset(root / "train", MOCO_V2, neighbours, clus_pos_num=2, seed=3))
    in_memory = EncodedBagDataset(root / "train", MOCO_V2, neighbours, clus_pos_num=2, seed=3, in_memory=True)
    for path in (root / "train").rglob("*.*"):  # nothing is read from disk once the images are held
        path.unlink()
    for held, read in zip(batches(in_memory), from_files):
        assert len(held) == len(read) == 4
        for a, b in zip(held, read):  # JPEGs: PIL's decoder here, torchvision's there
            assert a.shape == b.shape == (n, 3, 32, 32) and view_error(a, b).max() < 0.03
