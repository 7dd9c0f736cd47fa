"""ImageNet-100 as a folder of links into an ImageNet tree: nothing is copied.

    python -m scripts.make_imagenet100 --imagenet=/data/imagenet --out=/data/imagenet100

The 100 classes are CMC's (Tian et al., 2019; the list in HobbitLong/CMC's imagenet100.txt, kept here as
``datasets/imagenet100_classes.txt``), the subset solo-learn, lightly and most small-scale papers train on. ``out``
gets ``train/<wnid>`` and ``val/<wnid>``, each a symbolic link to ImageNet's class folder, and ``imagenet100.json``
saying where they point; every entry point then reads ``--data_dir=out`` as any class-folder dataset. ImageNet's
``val/`` must already be in class folders (as ``train/`` is).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

CLASS_LIST = Path(__file__).resolve().parent.parent / "datasets" / "imagenet100_classes.txt"


def classes() -> list[str]:
    """CMC's 100 ImageNet class ids, in its file's order."""
    return CLASS_LIST.read_text().split()


def build(imagenet: Path, out: Path) -> dict:
    """``out/{train,val}/<wnid>`` linked to ``imagenet/{split}/<wnid>`` for the 100 classes; returns the record
    written to ``out/imagenet100.json``. Raises ``SystemExit`` naming the first missing folder before linking
    anything."""
    wanted = classes()
    for split in ("train", "val"):
        missing = [wnid for wnid in wanted if not (imagenet / split / wnid).is_dir()]
        if missing:
            hint = (" (ImageNet's val/ must be in class folders, as train/ is)" if split == "val" else "")
            raise SystemExit(f"error: {imagenet / split / missing[0]} is not a folder ({len(missing)} of the 100 "
                             f"ImageNet-100 classes are missing from {imagenet / split}){hint}")
    for split in ("train", "val"):
        (out / split).mkdir(parents=True, exist_ok=True)
        for wnid in wanted:
            link, target = out / split / wnid, (imagenet / split / wnid).resolve()
            if link.is_symlink() and Path(os.readlink(link)) == target:
                continue
            if link.exists() or link.is_symlink():
                raise SystemExit(f"error: {link} exists and does not link to {target}: choose another --out")
            link.symlink_to(target, target_is_directory=True)
    record = {"source": str(imagenet.resolve()), "classes": len(wanted), "class_list": CLASS_LIST.name,
              "class_list_sha256": hashlib.sha256(CLASS_LIST.read_bytes()).hexdigest(), "links": True}
    (out / "imagenet100.json").write_text(json.dumps(record, indent=1))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--imagenet", type=Path, required=True, help="ImageNet root with train/ and val/ by class")
    parser.add_argument("--out", type=Path, required=True, help="the ImageNet-100 folder to make")
    args = parser.parse_args()
    build(args.imagenet, args.out)
    print(f"wrote {args.out}: train/ and val/ link the 100 classes of {args.imagenet}; --data_dir={args.out}")


if __name__ == "__main__":
    main()
