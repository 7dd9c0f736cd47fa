"""--device_views and --in_memory: views drawn per batch from (seed, epoch, image) and made on the device (here the
CPU) in a fixed number of operations.

On the same draws the batched views must equal torchvision's per-image ops up to float32 rounding, and the CPU
pipeline's PIL ops up to PIL's 8-bit rounding; the draws must follow torchvision's distributions and depend on
seed, epoch and image alone.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.profiler import profile
from torch.utils.data import DistributedSampler
from torchvision import transforms as T

from bench.gpu_checks import reference_view
from datasets.device_views import (
    DeviceViews,
    EncodedBagDataset,
    EncodedImageFolder,
    HeldBagDataset,
    IndexBatches,
    collate_encoded,
    read_encoded,
    resize_weights,
)
from datasets.draws import draw_views, neighbour_columns, uniforms
from datasets.folders import BagDataset, DatasetError, IndexedImageFolder
from datasets.transforms import CROP_FLIP, IMAGENET_STD, MOCO_V1, MOCO_V2, augmentation, eval_transform
from engine.features import embed
from engine.training import make_train_loader
from models.backbones import build_backbone
from utils import dist as edist
from utils.logs import read_metrics

from helpers import calibrated_teacher, make_image_folder, run_script

STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def smooth_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photograph-like image: random colours at low resolution, upsampled smoothly."""
    small = rng.integers(0, 256, size=(max(height // 20, 2), max(width // 20, 2), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BICUBIC)


def make_photo_folder(root: Path, per_class: int = 4, classes: int = 3, ext: str = "jpg") -> Path:
    """Images of several sizes; with JPEGs also the formats the device cannot decode (grayscale JPEG works, CMYK JPEG
    and PNG are decoded in the worker)."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / "train" / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            smooth_image(rng, 60 + 20 * i, 50 + 10 * c).save(folder / f"img_{i}.{ext}", quality=92)
    if ext == "jpg":
        odd = root / "train" / "class_0"
        smooth_image(rng, 70, 60).convert("L").save(odd / "gray.jpg", quality=92)
        smooth_image(rng, 70, 60).convert("CMYK").save(odd / "cmyk.jpg", quality=92)
        smooth_image(rng, 64, 48).save(odd / "lossless.png")
    return root


def view_error(device: torch.Tensor, cpu: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per view, in [0, 1] pixel units (normalisation undone)."""
    return ((device - cpu).abs() * STD).mean(dim=(1, 2, 3))


@pytest.mark.parametrize("shape", [(28, 28, 32), (60, 80, 32), (375, 500, 64), (32, 32, 32)])
def test_resize_weights_are_torchs_antialiased_bilinear_resize_of_the_crop(shape):
    height, width, size = shape
    torch.manual_seed(0)
    image = torch.rand(2, 3, height, width) * 255
    boxes = [(3, 5, height - 7, width - 9), (0, 0, height, width)]
    as_tensor = lambda *values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    rows = resize_weights(as_tensor(*(b[0] for b in boxes)), as_tensor(*(b[2] for b in boxes)),
                          as_tensor(size, size), as_tensor(0, 0), size, height)
    cols = resize_weights(as_tensor(*(b[1] for b in boxes)), as_tensor(*(b[3] for b in boxes)),
                          as_tensor(size, size), as_tensor(0, 0), size, width)
    batched = rows[:, None] @ image @ cols[:, None].transpose(-1, -2)
    for v, (top, left, h, w) in enumerate(boxes):
        alone = F.interpolate(image[v:v + 1, :, top:top + h, left:left + w], size=(size, size), mode="bilinear",
                              antialias=True, align_corners=False)
        assert (batched[v] - alone[0]).abs().max() < 2e-3  # on the 0-255 scale: float32 rounding


@pytest.mark.parametrize("spec", [MOCO_V2, MOCO_V1, CROP_FLIP], ids=["moco_v2", "moco_v1", "crop_flip"])
def test_batched_views_equal_the_per_image_ops_on_the_same_draws(tmp_path, spec):
    smooth_image(np.random.default_rng(1), 200, 150).save(tmp_path / "photo.png")
    picture = Image.open(tmp_path / "photo.png").convert("RGB")
    image = torch.from_numpy(np.array(picture)).permute(2, 0, 1).contiguous()
    n = 48
    params = draw_views(spec, 7, 0, np.arange(n), 0, np.full(n, 150), np.full(n, 200))
    views = DeviceViews(32, spec, "cpu")
    batched = views.augment(image.expand(n, -1, -1, -1), params)

    # every random branch ran both ways, a certain one always, an absent one never
    drawn = {"jitter": params.jitter, "gray": params.gray, "flip": params.flip, "blur": params.blur_sigma > 0}
    for name, p in {"jitter": spec.jitter_p, "gray": spec.gray_p, "flip": 0.5, "blur": spec.blur_p}.items():
        count = int(drawn[name].sum())
        assert count == n if p >= 1 else count == 0 if p == 0 else 0 < count < n, (name, count)
    alone = torch.stack([reference_view(image, params, v, spec, 32) for v in range(n)])
    assert view_error(batched, alone).max() < 1e-4  # float32 rounding
    cpu = torch.stack([reference_view(picture, params, v, spec, 32) for v in range(n)])
    errors = view_error(batched, cpu)  # PIL rounds to 8 bits after every step and approximates the blur
    assert errors.max() < 0.02, errors
    assert errors.mean() < 0.008
    assert view_error(batched, cpu.roll(1, 0)).min() > 0.05  # a wrong view is far off: the test can tell views apart


def test_view_draws_follow_torchvisions_distributions():
    n = 3000
    draws = draw_views(MOCO_V2, 0, 0, np.arange(n), 0, np.full(n, 375), np.full(n, 500))
    for flag, p in ((draws.jitter, 0.8), (draws.gray, 0.2), (draws.blur_sigma > 0, 0.5), (draws.flip, 0.5)):
        assert abs(flag.float().mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5
    top, left, height, width = draws.crop.T
    assert ((top >= 0) & (left >= 0) & (top + height <= 375) & (left + width <= 500)).all()
    area = (height * width).float() / (500 * 375)
    assert area.min() >= 0.19 and area.max() <= 1.0
    aspect = (width / height).float()
    assert aspect.min() >= 0.74 and aspect.max() <= 1.34
    # torchvision's own draws of the same crops: the same distribution of areas
    torch.manual_seed(0)
    crops = [T.RandomResizedCrop.get_params(torch.empty(0, 375, 500), [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]
    theirs = torch.tensor([h * w for _, _, h, w in crops]).float() / (500 * 375)
    assert abs(area.mean() - theirs.mean()) < 4 * theirs.std() / n ** 0.5
    jittered = draws.factors[draws.jitter]
    assert ((jittered[:, :3] >= 0.6) & (jittered[:, :3] <= 1.4)).all()
    assert (jittered[:, 3].abs() <= 0.1).all()
    assert torch.equal(draws.order.sort(dim=1).values, torch.arange(4).expand(n, 4))
    assert len({tuple(o) for o in draws.order.tolist()}) == 24  # every order of the four ops occurs
    sigma = draws.blur_sigma[draws.blur_sigma > 0]
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0
    # narrow images take RandomResizedCrop's central fallback when no try fits
    thin = draw_views(MOCO_V2, 0, 0, np.arange(200), 0, np.full(200, 400), np.full(200, 20))
    assert (thin.crop[:, 3] <= 20).all() and (thin.crop[:, 2] <= 400).all()


def test_draws_depend_on_seed_epoch_and_image_alone():
    u = uniforms(3, 1, np.arange(100), 0, 5)
    again = uniforms(3, 1, np.array([42, 7]), 0, 5)  # another batch holding two of the same images
    assert np.array_equal(again, u[[42, 7]])
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.05
    for other in (uniforms(4, 1, np.arange(100), 0, 5), uniforms(3, 2, np.arange(100), 0, 5),
                  uniforms(3, 1, np.arange(100), 1, 5)):
        assert not np.isclose(other, u).any()
    columns = neighbour_columns(0, 0, np.arange(4000), 5)
    assert set(columns.tolist()) == set(range(5)) and abs(np.bincount(columns).min() - 800) < 120


def test_the_views_step_dispatches_as_many_operators_for_any_batch(tmp_path):
    """The operator count of one step's views (torch.profiler) does not grow with the batch."""
    root = make_image_folder(tmp_path / "data", classes=2, per_class=40, size=28)
    neighbours = np.stack([(np.arange(80) + s) % 80 for s in (1, 2)], axis=1)
    dataset = HeldBagDataset(root / "train", neighbours, torch.device("cpu"), clus_pos_num=2)
    views = DeviceViews(32, MOCO_V2, "cpu")
    counts = {}
    for batch in (4, 64):
        views.held_views(dataset, (0, torch.arange(batch)))  # warm-up
        with profile() as prof:
            made = views.held_views(dataset, (1, torch.arange(batch)))
        assert len(made) == 4 and made[0].shape == (batch, 3, 32, 32)
        counts[batch] = len(prof.events())
    assert counts[4] == counts[64], counts


def test_in_memory_views_equal_the_file_paths_views_on_the_same_seed(tmp_path):
    root = make_photo_folder(tmp_path, ext="png")  # lossless: both paths see the same pixels
    n = 12
    neighbours = np.stack([(np.arange(n) + s) % n for s in (1, 2, 3)], axis=1)
    files = EncodedBagDataset(root / "train", neighbours, clus_pos_num=3, seed=5)
    views = DeviceViews(32, MOCO_V2, "cpu", seed=5)
    for epoch in (0, 1):
        keys = [(epoch, i) for i in (3, 0, 7, 11)]
        from_files = views.train_views(collate_encoded([files[key] for key in keys]))
        assert len(from_files) == 4 and from_files[0].shape == (4, 3, 32, 32)
        # the bag's other member is one of the anchor's first three neighbours, as the draw says
        columns = neighbour_columns(5, epoch, np.array([3, 0, 7, 11]), 3)
        assert [files[key][0][1].path for key in keys] == [
            files.samples[neighbours[i, c]][0] for i, c in zip((3, 0, 7, 11), columns)]
    # images of one size held on the device
    same = tmp_path / "same"
    make_image_folder(same, classes=3, per_class=4, size=28)
    held = HeldBagDataset(same / "train", neighbours, torch.device("cpu"), clus_pos_num=3, seed=5)
    files = EncodedBagDataset(same / "train", neighbours, clus_pos_num=3, seed=5)
    views = DeviceViews(32, MOCO_V2, "cpu", seed=5)
    for epoch in (0, 1):
        indices = torch.tensor([3, 0, 7, 11])
        in_memory = views.held_views(held, (epoch, indices))
        from_files = views.train_views(collate_encoded([files[(epoch, int(i))] for i in indices]))
        for a, b in zip(in_memory, from_files):
            assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(in_memory[0], in_memory[1])  # two independent views of each anchor
    first = views.held_views(held, (0, indices))
    assert not torch.allclose(first[0], in_memory[0])  # a new epoch, new views


def test_in_memory_needs_images_of_one_size(tmp_path):
    root = make_photo_folder(tmp_path, ext="png")
    for workers in (0, 2):
        with pytest.raises(DatasetError, match="--in_memory holds images of one size.*img_1.png"):
            HeldBagDataset(root / "train", None, torch.device("cpu"), workers=workers)


def test_images_decoded_in_loader_processes_are_held_in_dataset_order(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=3, per_class=200, size=28)  # 600 images: three batches
    alone = HeldBagDataset(root / "train", None, torch.device("cpu"))
    assert alone.pixels.shape == (600, 3, 28, 28)
    for i in (0, 255, 256, 599):
        expected = torch.from_numpy(np.array(Image.open(alone.samples[i][0]).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(alone.pixels[i], expected)
    assert torch.equal(HeldBagDataset(root / "train", None, torch.device("cpu"), workers=2).pixels, alone.pixels)


def test_index_batches_follow_distributed_samplers_order(tmp_path):
    for world, n, batch in ((1, 20, 4), (3, 23, 2)):
        for rank in range(world):
            batches = IndexBatches(n, world, rank, batch, seed=9)
            sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=9, drop_last=True)
            for epoch in (0, 1):
                batches.sampler.set_epoch(epoch)
                sampler.set_epoch(epoch)
                expected = list(sampler)
                got = list(batches)
                assert len(got) == len(batches) == len(expected) // batch
                assert all(e == epoch for e, _ in got)
                assert torch.cat([b for _, b in got]).tolist() == expected[:len(got) * batch]


def test_persistent_loader_workers_draw_new_views_every_epoch(tmp_path):
    """A loader worker's copy of the dataset never sees set_epoch: the sampler's keys carry the epoch."""
    root = make_image_folder(tmp_path / "data", classes=2, per_class=4, size=40)
    dataset = BagDataset(root / "train", augmentation(MOCO_V2, 32), None, seed=0)
    loader = make_train_loader(dataset, edist.init("cpu"), 8, num_workers=1, seed=0)
    views = {}
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        for query, _, index in loader:
            views[epoch] = dict(zip(index.tolist(), query))
    alone = {}
    for epoch in (0, 1):  # the same items made in this process
        dataset.set_epoch(epoch)
        alone[epoch] = dataset[0][0]
    assert not torch.equal(views[0][0], views[1][0])
    assert torch.equal(views[1][0], alone[1]) and torch.equal(views[0][0], alone[0])


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
    for budget in (1 << 26, 5000):  # one chunk, or a few views at a time
        views = DeviceViews(32, MOCO_V2, "cpu", pixel_budget=budget)
        device = embed(network, EncodedImageFolder(root / "train"), ctx, 4, num_workers=0,
                       collate_fn=collate_encoded, prepare=views.eval_crops)
        cosine = (cpu * device).sum(1)
        assert cosine.min() > 0.995
        assert (cpu @ device.T).argmax(1).tolist() == list(range(len(cpu)))


def test_file_views_are_the_same_in_chunks(tmp_path):
    root = make_photo_folder(tmp_path)
    n = 15
    neighbours = np.stack([(np.arange(n) + s) % n for s in (1, 2)], axis=1)
    dataset = EncodedBagDataset(root / "train", neighbours, clus_pos_num=2, seed=3)
    batch = collate_encoded([dataset[(0, i)] for i in range(n)])
    whole = DeviceViews(32, MOCO_V2, "cpu", seed=3).train_views(batch)
    chunked = DeviceViews(32, MOCO_V2, "cpu", seed=3, pixel_budget=20000).train_views(batch)
    for a, b in zip(whole, chunked):
        assert a.shape == (n, 3, 32, 32) and torch.allclose(a, b, atol=1e-5)


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


def test_in_memory_distillation_resumes_exactly(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=3, per_class=6, size=28)
    calibrated_teacher("resnet18", root, tmp_path / "teacher.pth.tar")
    run_script("run_knn.py", ["--arch=resnet18", f"--ckpt_name={tmp_path / 'teacher.pth.tar'}", f"--data_dir={root}",
                              "--image_size=32", "--clus_pos_num=3", f"--corr_name={tmp_path / 'nn.npy'}",
                              "--num_workers=0"], tmp_path)

    def args(out, epochs, *extra):
        return ["--t_arch=resnet18", f"--pretrain_path={tmp_path / 'teacher.pth.tar'}", f"--data_dir={root}",
                f"--corr_npy={tmp_path / 'nn.npy'}", "--clus_pos_num=3", "--image_size=32", "--batch_size=4",
                "--moco_k=8", "--num_workers=0", "--seed=0", "--bag_warmup_epochs=0", f"--end_epoch={epochs}",
                f"--output_dir={out}", "--device_views", "--in_memory", *extra]

    run_script("main_distill.py", args(tmp_path / "straight", 2, "--save_freq=1"), tmp_path, nproc=2)
    # stopped after its first epoch (its checkpoint then) and continued: the same run, bit for bit
    result = run_script("main_distill.py", args(tmp_path / "resumed", 2, "--save_freq=1",
                                                f"--resume={tmp_path / 'straight' / 'checkpoint_0001.pth'}"),
                        tmp_path, nproc=2)
    trained = [m["epoch"] for m in read_metrics(tmp_path / "resumed" / "metrics.jsonl") if m["kind"] == "epoch"]
    assert "at epoch 1" in result.stdout and trained == [1]  # it trained the second epoch only
    straight = torch.load(tmp_path / "straight" / "final.pth", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "final.pth", weights_only=True)
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert torch.equal(straight["queue"], resumed["queue"])
