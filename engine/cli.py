"""Entry-point wrapper: user errors print one clear line (what is wrong, which file, what to do) and exit 2."""
from __future__ import annotations

import sys
from typing import Callable

from absl import app

from datasets.folders import DatasetError
from engine.io import OutputFolderError
from models.checkpoints import CheckpointError

__all__ = ["run", "USER_ERRORS"]

USER_ERRORS = (DatasetError, CheckpointError, OutputFolderError, FloatingPointError, FileNotFoundError, NotADirectoryError, PermissionError)


def run(main: Callable[[list[str]], None]) -> None:
    def guarded(argv: list[str]) -> None:
        try:
            main(argv)
        except (app.UsageError, *USER_ERRORS) as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            sys.exit(2)

    app.run(guarded)
