"""Every ready script, as the README runs it: bash expands its command line, and the entry point takes it (its flags
parse, pass the checks a flag the run would ignore or a value that makes no sense would fail, and the run stops at
the absent ImageNet folder, the first thing it reads). The documented variants included."""
import os
import subprocess

from helpers import REPO, recorded_calls, recording_stand_in, run_cases, subprocess_env

SCRIPTS = sorted([REPO / "run_knn.sh", *(REPO / "scripts").glob("*/*.sh")])
# Variants the scripts' comments offer: "$@" takes them.
VARIANTS = {"SR18-TR50-compress.sh": [[], ["--compress_one_bank"]]}


def recorded_commands(tmp_path, script, extra: list[str]) -> list[list[str]]:
    """The command lines ``script`` gave torchrun, run by bash with ``extra`` as its arguments."""
    record = tmp_path / "calls" / f"{script.name}{len(extra)}"
    record.mkdir(parents=True)
    env = subprocess_env(tmp_path) | {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "NGPU": "1",
                                      "RECORD_DIR": str(record), "DATA_DIR": str(tmp_path / "imagenet"),
                                      "OUTPUT_DIR": str(tmp_path / "run"), "OUTPUT": str(tmp_path / "nn.npy"),
                                      "PRETRAINED": str(tmp_path / "final.pth")}
    done = subprocess.run(["bash", str(script), *extra], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (script.name, done.stderr)
    return recorded_calls(record)


def test_every_ready_script_passes_its_entry_points_flag_checks_and_stops_at_the_missing_data(tmp_path):
    # torchrun keeps the command line it is given (its own --options dropped) and lets the script go on, so a
    # script's every command is checked
    recording_stand_in(tmp_path / "bin", "torchrun", 'while [[ "$1" == --* ]]; do shift; done\nrecord "$@"\n')
    by_entry: dict[str, list[list[str]]] = {}
    for script in SCRIPTS:
        for extra in VARIANTS.get(script.name, [[]]):
            calls = recorded_commands(tmp_path, script, extra)
            assert len(calls) == 1, (script.name, calls)  # one entry point a script
            entry, *args = calls[0]
            assert entry in ("main_distill.py", "main_lincls.py", "run_knn.py"), (script.name, calls)
            assert args[len(args) - len(extra):] == extra, (script.name, args)  # "$@" reaches the entry point
            by_entry.setdefault(entry.removesuffix(".py"), []).append(args)
    assert set(by_entry) == {"main_distill", "main_lincls", "run_knn"}
    assert sum(map(len, by_entry.values())) == len(SCRIPTS) + 1 >= 17
    for entry, cases in by_entry.items():  # one process an entry point
        (tmp_path / entry).mkdir()
        for args, result in zip(cases, run_cases(entry, cases, tmp_path / entry)):
            assert result["status"] == 2 and result["stderr"].strip().endswith(
                "--data_dir must hold train/<class>/<image> (the ImageNet layout)."), (entry, args, result["stderr"])
