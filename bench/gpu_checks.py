"""Correctness checks that need a GPU (the test suite runs on the CPU): run on the device machine.

    python bench/gpu_checks.py

1. The fast GPU search (fp16 candidates, exact fp32 re-ranking, certified) equals a float64 search, on random and
   on clustered features with duplicates, and equals the CPU torch backend.
2. A one-GPU distillation step in the fast configuration (bf16 + channels_last) gives a loss within bf16 rounding
   of the official fp32 configuration on the same weights and inputs.
3. ``--device_views`` on CUDA (nvJPEG decode + batched augmentation) makes the CPU pipeline's (PIL) views on the
   same draws, at 224 px, for RGB and grayscale JPEGs of several sizes decoded together in one batch.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench.distill_step import default_config
from datasets.device_views import DeviceViews, EncodedImage, PackedImages
from datasets.draws import ViewParams
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, MOCO_V2, AugmentSpec
from engine.features import exact_knn
from models.backbones import build_backbone
from models.distiller import Embedder
from models.heads import mlp_head, student_head
from models.methods import build_method


def reference(features: torch.Tensor, k: int) -> torch.Tensor:
    x = features.double().cuda()
    sims = x @ x.T
    sims.fill_diagonal_(float("-inf"))
    return sims.topk(k, dim=1).values.cpu()


def check_search() -> None:
    torch.manual_seed(0)
    cases = {"random": F.normalize(torch.randn(30000, 256), dim=1)}
    centres = F.normalize(torch.randn(300, 256), dim=1)
    clustered = F.normalize(centres[torch.randint(0, 300, (30000,))] + 0.05 * torch.randn(30000, 256), dim=1)
    clustered[100:120] = clustered[100]  # 20 identical images
    cases["clustered+duplicates"] = clustered
    for name, features in cases.items():
        idx, sims, used = exact_knn(features, 5, backend="torch", device="cuda")
        cpu_idx, _, _ = exact_knn(features, 5, backend="torch", device="cpu")
        best = reference(features, 5)
        got = (features[idx].double() * features.double()[:, None, :]).sum(-1)
        # equal to the float64 search up to float32 rounding of the features (1e-6)
        exact = torch.isclose(got, best, atol=1e-6, rtol=0).all(1).float().mean().item()
        same_as_cpu = (idx == cpu_idx).all(1).float().mean().item()
        no_self = not (idx == torch.arange(len(idx))[:, None]).any()
        print(f"search {name}: {used}, rows exact vs float64 {exact:.4f}, rows identical to CPU {same_as_cpu:.4f}, "
              f"self never listed {no_self}")
        assert exact == 1.0 and no_self


def check_amp_step() -> None:
    torch.manual_seed(0)
    losses = {}
    views = tuple(torch.randn(32, 3, 224, 224, device="cuda") for _ in range(4))
    for name, amp in (("fp32", False), ("bf16", True)):
        torch.manual_seed(1)
        backbone = build_backbone("resnet18")
        student = Embedder(backbone, student_head(512, 128))
        teacher_backbone = build_backbone("resnet50")
        teacher = Embedder(teacher_backbone, mlp_head(2048, 2048, 128))
        distiller = build_method(student, teacher, default_config(queue_size=4096, amp=amp)).cuda()
        if amp:
            distiller = distiller.to(memory_format=torch.channels_last)
        distiller.set_epoch(0, 0, 0)
        inputs = tuple(v.contiguous(memory_format=torch.channels_last) for v in views) if amp else views
        loss, _ = distiller(inputs, epoch=20)
        losses[name] = loss.item()
    rel = abs(losses["bf16"] - losses["fp32"]) / abs(losses["fp32"])
    print(f"distill step loss fp32 {losses['fp32']:.5f}, bf16+channels_last {losses['bf16']:.5f}, rel diff {rel:.2e}")
    assert rel < 2e-2


def reference_view(image: Image.Image | torch.Tensor, params: ViewParams, v: int, spec: AugmentSpec = MOCO_V2,
                   size: int = 224) -> torch.Tensor:
    """View ``v`` of ``image`` on its draws, one image and one op at a time, normalised: on a PIL image the CPU
    pipeline's ops (8 bits after each, PIL's blur), on a ``uint8 [3, H, W]`` tensor torchvision's tensor ops in
    float32 (Kornia's Gaussian blur, as the batched path)."""
    from kornia.filters import gaussian_blur2d
    from PIL import ImageFilter
    from torchvision.transforms import functional as TF

    top, left, height, width = params.crop[v].tolist()
    pil = isinstance(image, Image.Image)
    x = image if pil else image[None].float() / 255
    x = TF.resized_crop(x, top, left, height, width, [size, size], antialias=True)
    x = x if pil else x.clamp(0, 1)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]

    def jitter(x):
        if bool(params.jitter[v]):
            for op_id in params.order[v].tolist():
                x = ops[op_id](x, float(params.factors[v, op_id]))
        return x

    def gray(x):
        return TF.rgb_to_grayscale(x, num_output_channels=3) if bool(params.gray[v]) else x

    for stage in (gray, jitter) if spec.gray_before_jitter else (jitter, gray):
        x = stage(x)
    sigma = float(params.blur_sigma[v])
    if sigma > 0 and pil:
        x = x.filter(ImageFilter.GaussianBlur(radius=sigma))
    elif sigma > 0:
        kernel = 2 * math.ceil(3 * spec.blur_sigma[1]) + 1
        x = gaussian_blur2d(x, kernel, torch.tensor([[sigma, sigma]]), border_type="replicate")
    if bool(params.flip[v]):
        x = TF.hflip(x)
    return TF.normalize(TF.to_tensor(x) if pil else x[0], IMAGENET_MEAN, IMAGENET_STD)


def check_device_views(device_name: str = "cuda") -> None:
    rng = np.random.default_rng(0)
    pictures, encoded = [], []
    for i, mode in enumerate(["RGB"] * 6 + ["L"] * 2):
        small = rng.integers(0, 256, size=(15 + i, 20, 3), dtype=np.uint8)
        picture = Image.fromarray(small).resize((500 - 10 * i, 375), Image.BICUBIC).convert(mode)
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=92)
        data = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
        encoded.append(EncodedImage(data, picture.width, picture.height, f"<memory {i}>"))
        pictures.append(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    images = PackedImages.pack(encoded * 4)  # 32 images, two views each: the training path's decode and batching
    indices = torch.arange(32)
    views = DeviceViews(224, MOCO_V2, torch.device(device_name))
    device = torch.cat(views.train_views(([images], torch.zeros(32, dtype=torch.int64), indices))).cpu()
    params = views.draw(0, indices, 2, torch.cat([images.sizes, images.sizes]))
    cpu = torch.stack([reference_view(pictures[v % len(pictures)], params, v) for v in range(64)])
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    errors = ((device - cpu).abs() * std).mean(dim=(1, 2, 3))
    print(f"device views on {device_name} vs CPU pipeline: mean abs error {errors.mean():.4f}, "
          f"worst view {errors.max():.4f}")
    assert errors.max() < 0.02


if __name__ == "__main__":
    print(torch.cuda.get_device_name(), torch.__version__)
    check_search()
    check_amp_step()
    check_device_views()
    print("gpu checks passed")
