"""Run one entry point's ``main`` on several command lines in one process (one start-up instead of one each).

    python tests/entry_cases.py main_distill cases.json results.json

``cases.json`` is a list of argument lists; ``results.json`` gets, for each, the exit status as the real command
would give it (0, 2 for a user error, 75 for a stop signal, "traceback" for an uncaught exception) and its
stdout and stderr. Flags are parsed afresh for every case, exactly as absl parses a command line.
"""
from __future__ import annotations

import contextlib
import gc
import importlib
import io
import json
import sys
import traceback
from pathlib import Path

from absl import flags

from engine.cli import guarded


def run_case(module, args: list[str]) -> dict:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            flags.FLAGS.unparse_flags()
            flags.FLAGS([f"{module.__name__}.py", *args])
            guarded(module.main)([])
            status = 0
        except SystemExit as stop:
            status = stop.code
        except Exception:  # noqa: BLE001 - reported as the traceback a user would see
            traceback.print_exc()
            status = "traceback"
    gc.collect()  # frames of a failed case (and any run-folder lock they hold) go now
    return {"args": args, "status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main() -> None:
    name, cases, results = sys.argv[1:4]
    module = importlib.import_module(name)
    Path(results).write_text(json.dumps([run_case(module, args) for args in json.loads(Path(cases).read_text())]))


if __name__ == "__main__":
    main()
