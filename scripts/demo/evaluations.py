"""Several frozen ``main_lincls.py`` evaluations in one process: the demo's floors, one start-up for all of them.

    python -m scripts.demo.evaluations ARGS [--- ARGS ...]

Each ARGS is one ``main_lincls.py`` command line's flags (``--protocol=knn`` or ``logreg``); each evaluation writes
what that command would (its ``results.json``, the same scores), one after the other. With ``--in_memory`` the images
are held once, by the first evaluation that reads them. An evaluation whose ``results.json`` exists is skipped, so a
stopped run continues where it stopped; a user error stops the run with its one line, after the ones before it.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from absl import app, flags

import main_lincls
from engine.cli import guarded, skip_collection_at_exit
from engine.options import LinclsOptions, from_argv
from scripts.demo.stages import SEPARATOR
from utils.logs import log


def command_lines(argv: list[str]) -> list[list[str]]:
    """``argv`` cut at each ``SEPARATOR``: one flag list per evaluation."""
    lines, current = [], []
    for arg in argv:
        if arg == SEPARATOR:
            lines.append(current)
            current = []
        else:
            current.append(arg)
    lines.append(current)
    if any(not line for line in lines):
        raise app.UsageError(f"an empty evaluation between two {SEPARATOR}: give each one main_lincls.py's flags")
    return lines


def parse(args: list[str]) -> LinclsOptions:
    """One evaluation's options, parsed afresh as ``main_lincls.py`` parses its command line; refused unless frozen."""
    try:
        opts = main_lincls.resolve_defaults(from_argv(LinclsOptions, main_lincls.FLAGS, ["main_lincls.py", *args]))
    except flags.Error as error:
        raise app.UsageError(f"{' '.join(args)}: {error}") from None
    if not (opts.output_dir or opts.train_url):
        raise app.UsageError(f"{' '.join(args)}: --output_dir is required")
    main_lincls.check_options(opts)
    if opts.protocol not in ("knn", "logreg"):
        raise app.UsageError(f"--protocol={opts.protocol} trains a probe, which gains nothing from sharing a process: "
                             "run main_lincls.py for it")
    return opts


def main(argv: list[str]) -> None:
    options = [parse(args) for args in command_lines(argv[1:])]  # every command line checked before any work
    held: dict = {}  # the splits held on the device, shared by the evaluations that read the same images
    since = None  # the first evaluation's start-up is the process's
    for opts in options:
        output_dir = Path(opts.output_dir or opts.train_url)
        if (output_dir / "results.json").is_file():
            log(f"{output_dir}: evaluated already (results.json), skipped")
            continue
        log(f"== {output_dir}: --arch={opts.arch}{' --untrained' if opts.untrained else ''}"
            f"{' --recompute_bn' if opts.recompute_bn else ''}")
        main_lincls.evaluate_backbone(opts, held, since)
        since = time.perf_counter()


if __name__ == "__main__":
    skip_collection_at_exit()
    guarded(main)(sys.argv)
