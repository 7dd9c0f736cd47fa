"""Files: atomic writes, run folders, RNG state capture and checkpoint discovery for ``--resume``."""
from __future__ import annotations

import datetime
import errno
import fcntl
import hashlib
import json
import os
import random
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = [
    "atomic_write",
    "file_sha256",
    "DiskFullError",
    "free_bytes",
    "atomic_torch_save",
    "atomic_json",
    "save_predictions",
    "load_predictions",
    "rng_state",
    "set_rng_state",
    "resolve_resume",
    "check_writable",
    "OutputFolderError",
    "RunFolderLock",
]


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in 4 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class OutputFolderError(RuntimeError):
    """An output folder that cannot be written."""


class DiskFullError(OutputFolderError):
    """A write failed because its disk (or quota) is full; the file it was replacing is intact."""


FULL_BELOW = 16 << 20  # a failed write with less than this free on its disk is taken for a full disk


def free_bytes(folder: str | os.PathLike) -> int:
    """Bytes this process may still write on ``folder``'s file system (root may use the reserved blocks too)."""
    stats = os.statvfs(folder)
    return (stats.f_bfree if os.geteuid() == 0 else stats.f_bavail) * stats.f_frsize


def _disk_full(error: BaseException, folder: Path) -> bool:
    """Whether ``error`` is a full disk: ENOSPC / EDQUOT, or a writer that hides the errno (torch.save's
    "unexpected pos") failing with almost nothing left free."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return free_bytes(folder) < FULL_BELOW
    except OSError:
        return False


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``.

    A crash leaves either the old file or the new one, never half of one. A full disk raises ``DiskFullError``
    saying so (torch's own message for it is "unexpected pos").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() respects the umask
    try:
        write(tmp)
        os.replace(tmp, path)
    except Exception as error:
        full = _disk_full(error, path.parent)
        if os.path.exists(tmp):
            os.unlink(tmp)
        if full:
            kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
            raise DiskFullError(f"the disk holding {path.parent} is full ({free_bytes(path.parent) >> 20}"
                                f" MB free) while writing {path.name}; {kept}. Free some space and run the command "
                                "again (a training run or probe: with --resume=auto, to continue from its kept "
                                "checkpoint)") from error
        raise
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_json(obj: Any, path: str | os.PathLike) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as handle:
            json.dump(obj, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")

    atomic_write(path, write)


def save_predictions(path: str | os.PathLike, labels: torch.Tensor, predictions: dict[str, torch.Tensor]) -> None:
    """Each protocol's predicted class per query beside the queries' labels, as one ``.npz`` of integer arrays
    (``load_predictions``): what a paired comparison of two networks on the same queries needs. Written by the
    evaluations (``engine.evaluation.frozen_protocol_scores``'s ``predictions``)."""
    arrays = {"labels": labels.cpu().numpy().astype(np.int64),
              **{name: p.cpu().numpy().astype(np.int64) for name, p in predictions.items()}}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a handle: np.savez would add .npz to a name
            np.savez(handle, **arrays)

    atomic_write(path, write)


def load_predictions(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``save_predictions``'s arrays (integers only: nothing is unpickled)."""
    with np.load(path, allow_pickle=False) as saved:
        return {name: saved[name] for name in saved.files}


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove a file can be written there, before any long work starts."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OutputFolderError(f"cannot write to {folder}: {error}. Choose another output folder.") from error
    return folder


class RunFolderLock:
    """Exclusive ownership of a run folder for as long as this process lives.

    An advisory ``flock`` on ``<folder>/run.lock``: a second run into the same folder is refused with the first
    one's pid, host and start time; the kernel drops the lock when its process ends, so a crashed or killed run
    never leaves the folder stuck (the file stays, unlocked).
    """

    NAME = "run.lock"

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / self.NAME
        self.handle = None

    def acquire(self) -> "RunFolderLock":
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise OutputFolderError(
                f"{self.path.parent} is in use by another run ({owner}); wait for it to finish, or choose another "
                "output folder") from None
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def rng_state() -> dict[str, Any]:
    """Every RNG this project draws from, in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": list(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def resolve_resume(resume: str, output_dir: str | os.PathLike, name: str = "checkpoint.pth") -> Path | None:
    """``--resume``: empty means start fresh, ``auto`` the latest checkpoint in ``output_dir`` (or fresh if there is
    none yet), anything else a path that must exist."""
    if not resume:
        return None
    if resume == "auto":
        candidate = Path(output_dir) / name
        return candidate if candidate.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume={resume}: no such checkpoint file")
    return path
