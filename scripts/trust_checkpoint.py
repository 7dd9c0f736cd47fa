"""Convert a checkpoint you trust into one that loads without running code.

    python -m scripts.trust_checkpoint IN.pth OUT.pth

The project refuses checkpoints that pickle Python objects beyond tensors, containers and a few plain types
(``models.checkpoints.plain_globals``), since unpickling them can run any code. This reads IN with full unpickling --
which runs whatever the file holds: use it only on files whose source you trust -- and writes OUT with tensors,
containers (dict, list, tuple) and plain values (str, int, float, bool, None) alone: an object with a ``__dict__``
(``argparse.Namespace``, a config object) becomes a dict of its attributes, numpy scalars and arrays become Python
numbers and tensors, anything else is dropped and named. OUT is then read back the way every entry point reads it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

PLAIN = (str, int, float, bool, type(None))


def plain(value: object, where: str, dropped: list[str]) -> object:
    """``value`` as tensors, containers and plain values; what cannot be expressed so is left out (``dropped``)."""
    import numpy as np

    if torch.is_tensor(value) or isinstance(value, PLAIN):
        return value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            converted = plain(item, f"{where}[{key!r}]", dropped)
            if converted is not _DROP and isinstance(key, PLAIN):
                out[key] = converted
        return out
    if isinstance(value, (list, tuple)):
        items = [plain(item, f"{where}[{i}]", dropped) for i, item in enumerate(value)]
        return type(value)(item for item in items if item is not _DROP)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype != object:
        return torch.from_numpy(value.copy())
    if hasattr(value, "__dict__") and not callable(value):
        return plain(vars(value), where, dropped)
    dropped.append(f"{where} ({type(value).__module__}.{type(value).__qualname__})")
    return _DROP


_DROP = object()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("source", type=Path, help="the checkpoint you trust")
    parser.add_argument("target", type=Path, help="where to write the converted checkpoint")
    args = parser.parse_args()
    if not args.source.is_file():
        parser.error(f"{args.source} does not exist (or is not a file)")
    if args.target.resolve() == args.source.resolve():
        parser.error("write the converted checkpoint to another file than the one you converted")
    dropped: list[str] = []
    converted = plain(torch.load(args.source, map_location="cpu", weights_only=False), "checkpoint", dropped)
    torch.save(converted, args.target)
    from models.checkpoints import torch_load

    torch_load(args.target)  # read back as the entry points read it
    print(f"wrote {args.target}" + (f"; dropped {len(dropped)} object(s): {', '.join(dropped[:5])}" if dropped else ""))


if __name__ == "__main__":
    main()
