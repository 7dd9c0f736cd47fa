"""`python -m scripts.demo [--quick | --config NAME] [--seeds N]`: run a configuration and write its report."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

from scripts.demo import __doc__ as DESCRIPTION
from scripts.demo.configs import CONFIGS, data_folder, eval_folder, run_folder_name


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.demo", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--quick", action="store_true", help="the smoke configuration the tests run")
    parser.add_argument("--config", choices=sorted(CONFIGS), help="default: gpu when CUDA is available, else cpu")
    parser.add_argument("--seeds", type=int, help="student runs per method (default: the configuration's)")
    parser.add_argument("--teacher_epochs", type=int, help="the teacher's epochs (default: the configuration's)")
    parser.add_argument("--skip_floors", action="store_true",
                        help="train without scoring the floors first (the report then compares with none)")
    parser.add_argument("--stop_after", choices=["teacher"],
                        help="stop once the teacher is trained and scored (its k-NN curve is the question)")
    parser.add_argument("--run_dir", type=Path, help="default: runs/demo-<config>[-teacher<epochs>], for any --seeds: "
                        "a run with more seeds keeps the folder's finished stages and trains the missing seeds")
    parser.add_argument("--data_dir", type=Path, help="training images (default: demo_data/fmnist-<split>; the gpu "
                        "configurations read the release in place: --fmnist_dir)")
    parser.add_argument("--eval_dir", type=Path, help="evaluation images (default: demo_data/fmnist-<split>; not for "
                        "the configurations that score every network on its training images: quick, gpu, gpu-bags)")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--report_only", action="store_true",
                        help="write the report from what the run folder holds (a stopped run: what finished); "
                        "results.json keeps the wall time, command and machine of the run that wrote it while no "
                        "stage has run since")
    parser.add_argument("--fmnist_dir", type=Path,
                        help="folder with the four Fashion-MNIST .gz files (default: Debian's package folder); the "
                        "gpu configurations train and score on it in place")
    args = parser.parse_args()
    if args.quick and args.config:
        parser.error(f"--quick is a configuration of its own: drop --quick or --config={args.config}")
    run_only = [f"--{name}" for name in ("skip_floors", "stop_after", "data_dir", "eval_dir", "fmnist_dir")
                if getattr(args, name) not in (None, False)] + (["--device"] if args.device != "auto" else [])
    if args.report_only and run_only:
        parser.error(f"--report_only runs nothing, so {', '.join(run_only)} would not act: drop "
                     f"{'it' if len(run_only) == 1 else 'them'} (the run folder follows --config, "
                     "--teacher_epochs and --run_dir; the report, --seeds)")
    if args.fmnist_dir is not None and not args.fmnist_dir.is_dir():
        parser.error(f"--fmnist_dir={args.fmnist_dir} is not a folder: give the folder holding the four "
                     "Fashion-MNIST .gz files (train-images-idx3-ubyte.gz and the three others)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped (SIGTERM); run the same command again to resume"))
    import torch  # after the flags' own checks: a mistyped command answers in a second

    name = "quick" if args.quick else args.config or ("gpu" if torch.cuda.is_available() else "cpu")
    cfg = CONFIGS[name]
    if args.seeds is not None:
        if args.seeds < 1:
            parser.error("--seeds must be at least 1")
        cfg = replace(cfg, seeds=args.seeds)
    if args.teacher_epochs is not None:
        if args.teacher_epochs < 1:
            parser.error("--teacher_epochs must be at least 1")
        cfg = replace(cfg, teacher=replace(cfg.teacher, epochs=args.teacher_epochs))
    if cfg.in_place and (args.data_dir or args.eval_dir):
        parser.error(f"--config={name} reads Fashion-MNIST's release in place (every stage, the evaluation too): give "
                     "its folder with --fmnist_dir, not --data_dir or --eval_dir")
    if cfg.evaluate_in_training and args.eval_dir:
        parser.error(f"--config={name} scores every network on its training images (--data_dir): drop --eval_dir")
    from datasets.folders import DatasetError
    from scripts.demo.report import report
    from scripts.demo.results import collect, keep_run_record, seeds_beyond
    from scripts.demo.stages import REPO, load_average, run_stages

    run_dir = (args.run_dir or REPO / "runs" / run_folder_name(cfg)).resolve()
    beyond = seeds_beyond(run_dir, cfg.seeds)
    if beyond:
        covered = "seed 0" if cfg.seeds == 1 else f"seeds 0-{cfg.seeds - 1}"
        print(f"note: {run_dir} also holds student runs of seed{'s' * (len(beyond) > 1)} "
              f"{', '.join(map(str, beyond))}, which this report leaves out (it covers {covered}): give "
              f"--seeds={beyond[-1] + 1} to include them", flush=True)
    started, load_before = time.perf_counter(), load_average()
    if not args.report_only:
        try:
            run_stages(cfg, run_dir, (args.data_dir or REPO / "demo_data" / data_folder(cfg)).resolve(),
                       (args.eval_dir or REPO / "demo_data" / eval_folder(cfg)).resolve(), args.device,
                       args.fmnist_dir, floors_first=not args.skip_floors, stop_after=args.stop_after)
        except DatasetError as error:  # the data could not be prepared: one line, no traceback
            raise SystemExit(f"error: {error}") from None
    seconds = None if args.report_only else time.perf_counter() - started
    results = collect(cfg, run_dir, seconds, load_before)
    previous = run_dir / "results.json"
    if args.report_only and previous.is_file():  # the scores again; how the run itself ran, as it was written
        results = keep_run_record(results, json.loads(previous.read_text()))
    report(results, run_dir)


if __name__ == "__main__":
    main()
