"""Entry-point wrapper: user errors print one clear line (what is wrong, which file, what to do) and exit 2; a stop
signal during training exits with ``EXIT_PREEMPTED`` after saying how to continue.

Under torchrun the same line goes into the worker's error file, so torchrun's closing summary ends with it rather
than with a pointer to its documentation.
"""
from __future__ import annotations

import atexit
import gc
import json
import os
import sys
import time
from typing import Callable

from absl import app

from datasets.folders import DatasetError
from models.backbones import RESNETS
from models.checkpoints import CheckpointError
from utils.io import OutputFolderError
from utils.logs import MetricsFileError
from utils.signals import EXIT_PREEMPTED, Preempted

__all__ = ["run", "guarded", "skip_collection_at_exit", "user_message", "check_minimums", "check_stem",
           "refuse_inert_flags", "USER_ERRORS", "EXIT_USER_ERROR"]

USER_ERRORS = (DatasetError, CheckpointError, OutputFolderError, MetricsFileError, FloatingPointError,
               FileNotFoundError, NotADirectoryError, PermissionError)
EXIT_USER_ERROR = 2


def user_message(error: BaseException) -> str:
    """The error's own line; for an error re-raised from a DataLoader worker (whose text is the worker's whole
    traceback), the original exception's message."""
    text = str(error).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.splitlines()[-1]
        origin = text.splitlines()[0].removeprefix("Caught ").rstrip(".")
        text = f"{last.split(': ', 1)[-1]} ({origin})"
    return text


def check_minimums(options: object, minimums: dict[str, int]) -> None:
    """A one-line usage error for the first option below its minimum (``--name=value: must be at least low``)."""
    for name, low in minimums.items():
        if getattr(options, name) < low:
            raise app.UsageError(f"--{name}={getattr(options, name)}: must be at least {low}")


def refuse_inert_flags(options: object, scope: dict[str, tuple[str, Callable[[object], bool]]], run: str) -> None:
    """A one-line usage error for the first flag given on the command line (``options.explicit``) where it would do
    nothing: ``scope`` maps a flag to (where it acts, the test of ``options``); ``run`` describes this run."""
    for name, (where, acts) in scope.items():
        if name in options.explicit and not acts(options):
            given = f"--no{name}" if getattr(options, name) is False else f"--{name}"  # as typed
            raise app.UsageError(f"{given} acts only in {where}; {run} would ignore it: drop it")


def check_stem(stem: str, networks: dict[str, str]) -> None:
    """A one-line usage error when ``--stem`` asks a ResNet stem of a network flag (name -> value) that is no
    ResNet."""
    for name, arch in networks.items():
        if stem != "imagenet" and arch not in RESNETS:
            raise app.UsageError(f"--stem={stem} is a ResNet stem, but --{name}={arch}: use --stem=imagenet")


def _report(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:  # torchrun shows this as the failure's "traceback" in its summary
        with open(error_file, "w") as handle:
            json.dump({"message": line, "timestamp": int(time.time())}, handle)


def guarded(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
    """``main`` with user errors turned into one line and exit status 2, a stop signal into exit status 75."""
    def call(argv: list[str]) -> None:
        try:
            main(argv)
        except (app.UsageError, *USER_ERRORS) as error:
            _report(f"error: {user_message(error)}")
            sys.exit(EXIT_USER_ERROR)
        except Preempted as stopped:
            if os.environ.get("RANK", "0") == "0":
                _report(str(stopped))
            sys.exit(EXIT_PREEMPTED)

    return call


def skip_collection_at_exit() -> None:
    """At exit, leave the objects still alive to the operating system rather than to the cyclic collector, which
    would walk every object torch, torchvision (its ``torch._dynamo``) and scikit-learn made at import: about 0.65 s of
    a process's 0.85 s exit on our CPU, paid by every stage. Files, checkpoints and process groups are closed
    explicitly before then; objects freed by reference counting still are."""
    atexit.register(gc.freeze)


def run(main: Callable[[list[str]], None]) -> None:
    skip_collection_at_exit()
    app.run(guarded(main))
