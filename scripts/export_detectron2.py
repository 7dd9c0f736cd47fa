"""Export a distilled student (or any checkpoint the project reads) for detectron2.

    python -m scripts.export_detectron2 --arch=resnet18 runs/SR18-TR50W2/final.pth runs/SR18-TR50W2/detectron2.pkl

Reads the checkpoint as every entry point does (format detected, every backbone weight loaded strictly), renames the
ResNet's tensors to detectron2's names under the Mask R-CNN FPN backbone (``models.detectron2``) and writes detectron2's
model-zoo pickle: ``{"model": {name: numpy array}, "__author__", "matching_heuristics": False}`` (exact names: nothing
is matched by guesswork). Configs for the paper's detection tables: ``detection/``.
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path

from models.checkpoints import CheckpointError, load_backbone
from models.detectron2 import DETECTRON2_DEPTHS, FPN_PREFIX, to_detectron2
from utils.io import atomic_write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--arch", required=True, choices=sorted(DETECTRON2_DEPTHS))
    parser.add_argument("--prefix", default=FPN_PREFIX, help="where the detectron2 model holds its ResNet")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("output", type=Path, help="the .pkl to write")
    args = parser.parse_args()
    if args.output.suffix != ".pkl":
        parser.error(f"{args.output}: detectron2 reads its model-zoo format from a .pkl file; name it so")
    try:
        backbone, weights = load_backbone(args.arch, args.checkpoint)
    except CheckpointError as error:
        if "small stem" in str(error):  # detectron2 has one ResNet stem
            raise SystemExit(f"error: {args.checkpoint} holds a network with the small-image stem; detectron2's "
                             "ResNet has the ImageNet stem only (7x7 stride-2 convolution and max-pool)") from None
        raise SystemExit(f"error: {error}") from None
    model = {name: tensor.detach().cpu().numpy() for name, tensor in to_detectron2(backbone.state_dict(),
                                                                                    args.prefix).items()}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            pickle.dump({"model": model, "__author__": f"bingo ({weights.fmt} checkpoint {args.checkpoint.name})",
                         "matching_heuristics": False}, handle)

    atomic_write(args.output, write)
    depth = DETECTRON2_DEPTHS[args.arch]
    print(f"wrote {args.output}: {len(model)} tensors of a {args.arch} ({weights.fmt} checkpoint) under "
          f"{args.prefix}*; in detectron2: MODEL.WEIGHTS={args.output} MODEL.RESNETS.DEPTH={depth}")


if __name__ == "__main__":
    main()
