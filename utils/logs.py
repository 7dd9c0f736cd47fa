"""Progress lines with speed and ETA on rank 0, JSON-lines metrics, and TensorBoard scalars when installed."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from utils.io import atomic_write

__all__ = ["Progress", "MetricsLog", "format_seconds", "log", "read_metrics", "prune_metrics"]


def log(message: str, enabled: bool = True) -> None:
    if enabled:
        print(message, flush=True)


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Counts items over a known total and formats ``label  done/total  items/s  ETA``."""

    def __init__(self, total: int, label: str = "", unit: str = "img") -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self.done = 0
        self.start = time.perf_counter()

    def update(self, items: int) -> None:
        self.done += items

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float:
        return (self.total - self.done) / self.rate if self.rate > 0 else float("inf")

    def line(self, extra: str = "") -> str:
        return (
            f"{self.label} {self.done}/{self.total} {self.rate:.1f} {self.unit}/s "
            f"eta {format_seconds(self.eta)}{'  ' + extra if extra else ''}"
        )


class MetricsLog:
    """One JSON object a line in ``<folder>/metrics.jsonl``; TensorBoard scalars too when it is importable."""

    def __init__(self, folder: str | os.PathLike, enabled: bool = True, name: str = "metrics.jsonl") -> None:
        self.enabled = enabled
        self.path = Path(folder) / name
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(folder) / "tensorboard"))
            except ImportError:
                self.writer = None

    def write(self, record: dict[str, Any], step: int | None = None) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record, default=float) + "\n")
        if self.writer is not None and step is not None:
            kind = record.get("kind", "step")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def prune_metrics(path: str | os.PathLike, start_epoch: int) -> int:
    """Before a run (re)starts at ``start_epoch``, drop the records of the work it will redo: steps and epochs from
    ``start_epoch`` on, and k-NN scores after ``start_epoch`` epochs (at 0, the first one too). A run stopped between
    logging an epoch and checkpointing it would otherwise log that epoch twice. Returns how many were dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    records = read_metrics(path)

    def redone(record: dict[str, Any]) -> bool:
        epoch = record.get("epoch", -1)
        if record.get("kind") == "knn":
            return epoch > start_epoch or start_epoch == 0
        return epoch >= start_epoch

    kept = [r for r in records if not redone(r)]
    if len(kept) < len(records):
        text = "".join(json.dumps(r, default=float) + "\n" for r in kept)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return len(records) - len(kept)
