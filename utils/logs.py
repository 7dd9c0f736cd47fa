"""Progress lines with speed and ETA on rank 0, JSON-lines metrics, and TensorBoard scalars when installed."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from utils.io import atomic_write

__all__ = ["Progress", "MetricsLog", "MetricsFileError", "format_seconds", "log", "read_metrics", "prune_metrics",
           "process_seconds"]

_IMPORTED = time.time()


def _process_start() -> float:
    """When this process started (Unix time): from ``/proc`` on Linux, else when this module was imported."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORTED


_STARTED = _process_start()


def process_seconds() -> float:
    """Seconds since this process started (interpreter start-up and imports included)."""
    return time.time() - _STARTED


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
        self.start = self._reported = time.perf_counter()

    def update(self, items: int) -> None:
        self.done += items

    def report(self, every: float, enabled: bool = True) -> None:
        """Log ``line()`` when ``every`` seconds have passed since the start or the last report."""
        now = time.perf_counter()
        if now - self._reported >= every:
            log(self.line(), enabled)
            self._reported = now

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


class MetricsFileError(ValueError):
    """A metrics file with a line that is not JSON before its last one (a torn last line is a kill mid-write)."""


def _parse_metrics(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The records of ``path`` and whether its last line was torn (a kill mid-write: not JSON, dropped)."""
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                return records, True
            raise MetricsFileError(f"{path} line {number} is not JSON ({line[:40]!r}...): remove that line, or the "
                                   "file, and run again") from None
    return records, False


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a torn last line (a run killed while writing it) is left out."""
    return _parse_metrics(Path(path))[0]


def prune_metrics(path: str | os.PathLike, start_epoch: int) -> int:
    """Before a run (re)starts at ``start_epoch``, drop the records of the work it will redo: steps and epochs from
    ``start_epoch`` on, and k-NN scores after ``start_epoch`` epochs (at 0, the first one too). A run stopped between
    logging an epoch and checkpointing it would otherwise log that epoch twice. A torn last line (a kill while it was
    written) goes too, so the next record starts on a line of its own. Returns how many records were dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    records, torn = _parse_metrics(path)

    def redone(record: dict[str, Any]) -> bool:
        epoch = record.get("epoch", -1)
        if record.get("kind") == "knn":
            return epoch > start_epoch or start_epoch == 0
        return epoch >= start_epoch

    kept = [r for r in records if not redone(r)]
    if torn or len(kept) < len(records):
        text = "".join(json.dumps(r, default=float) + "\n" for r in kept)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return len(records) - len(kept)
