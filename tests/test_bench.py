"""Smoke tests: the benchmark scripts run on the CPU at tiny sizes and print their tables (no timing asserted)."""
import json
import subprocess
import sys

import pytest

from scripts.fashion_mnist import DEBIAN_DIR

from helpers import REPO, recorded_calls, recording_stand_in, subprocess_env

CASES = {
    "embed.py": ["--arch", "resnet18", "--images", "16", "--batch", "8", "--size", "32", "--workers", "0",
                 "--device", "cpu"],
    "knn.py": ["--sizes", "300", "--dims", "16", "--device", "cpu"],
    "distill_step.py": ["--pairs", "resnet18:resnet50", "--batches", "2", "--size", "32", "--queue", "8",
                        "--steps", "1", "--rounds", "1", "--warmup", "1", "--device", "cpu",
                        "--configs", "official,fast,fast+fused,fast+eval-teacher-fused"],  # compiling takes minutes
    "loop_rates.py": ["--images", "24", "--size", "32", "--batch", "4", "--workers", "0", "--epochs", "2",
                      "--steps", "1", "--flags=", "--device", "cpu", "--teacher", "resnet18"],
    "data_pipeline.py": ["--workers", "0,1", "--images", "16", "--batch", "4", "--batches", "2", "--size", "32",
                         "--profile_steps", "2", "--queue", "8", "--device", "cpu", "--pair", "resnet18:resnet18"],
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_bench_script_runs_on_the_cpu(tmp_path, script):
    (tmp_path / "tmp").mkdir()
    result = subprocess.run([sys.executable, "-m", f"bench.{script.removesuffix('.py')}", *CASES[script],
                             "--json", str(tmp_path / "rows.json")], cwd=tmp_path,
                            env={**subprocess_env(tmp_path), "TMPDIR": str(tmp_path / "tmp")},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith(script.removesuffix(".py"))]
    assert "|---|" in result.stdout and (tmp_path / "rows.json").is_file()
    if script == "data_pipeline.py":  # both input paths measured, and the training profile ran on each
        rows = json.loads((tmp_path / "rows.json").read_text())
        assert {r["path"] for r in rows["pipeline"]} == {"cpu", "device", "device-workers"}
        assert [r["path"] for r in rows["profile"]] == ["resident batch", "cpu", "device"]
        assert all(r["anchors_per_s"] > 0 for r in rows["pipeline"] + rows["profile"])
    if script == "loop_rates.py":  # main_distill.py itself on both input paths, against the same step's compute
        rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
        assert [r["inputs"] for r in rows] == ["files", "device"]
        assert all(r["data_fed"] > 0 and r["compute_only"] > 0 for r in rows)


@pytest.mark.skipif(not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST is not installed")
def test_demo_rates_measures_a_stage_fed_and_compute_only(tmp_path):
    (tmp_path / "tmp").mkdir()
    result = subprocess.run([sys.executable, "-m", "bench.demo_rates", "--config", "quick", "--stages", "seed",
                             "--inputs", "memory", "--epochs", "1", "--steps", "1", "--data_dir", str(tmp_path / "d"),
                             "--json", str(tmp_path / "rows.json")], cwd=REPO,
                            env={**subprocess_env(tmp_path), "TMPDIR": str(tmp_path / "tmp")},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list((tmp_path / "tmp").glob("demo_rates.*"))  # its runs are removed once measured
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    # a distilled stage: the teacher trains first (unmeasured) and gives the student its keys
    assert [(r["stage"], r["inputs"]) for r in rows] == [("seed", "memory")]
    assert rows[0]["data_fed"] > 0 and rows[0]["compute_only"] > 0 and "| seed | memory |" in result.stdout
    # the views step dispatches as many operators at four times the batch
    assert list(rows[0]["view_operators"]) == ["32", "128"] and len(set(rows[0]["view_operators"].values())) == 1


def test_eval_input_measures_both_paths_on_both_sources(tmp_path):
    from helpers import make_idx_release, make_image_folder

    pngs = make_image_folder(tmp_path / "pngs", classes=2, per_class=5, size=28)
    release = make_idx_release(tmp_path / "release", train=12, val=4)
    result = subprocess.run([sys.executable, "-m", "bench.eval_input", "--png", str(pngs), "--release", str(release),
                             "--images", "8", "--workers", "0,1", "--batch", "4", "--rounds", "1",
                             "--json", str(tmp_path / "rows.json")], cwd=REPO, env=subprocess_env(tmp_path),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [(r["source"], r["path"], r["images"]) for r in rows] == [
        ("png", "loaded", 8), ("png", "loaded", 8), ("png", "held", 10),
        ("release", "loaded", 8), ("release", "loaded", 8), ("release", "held", 12)]
    assert all(r["images_per_s"] > 0 for r in rows) and "| release | held |" in result.stdout


def test_a_wrong_item_in_a_benchmarks_list_flag_stops_its_parse_with_the_flag_named(capsys):
    import argparse

    from bench.flags import counts, names, pairs

    parser = argparse.ArgumentParser()
    parser.add_argument("--inputs", default="memory", type=names(("memory", "files")))
    parser.add_argument("--workers", default="0", type=counts(0))
    parser.add_argument("--pairs", default="resnet18:resnet50", type=pairs)
    parsed = parser.parse_args(["--inputs", "files,memory", "--workers", "0,4"])
    assert (parsed.inputs, parsed.workers, parsed.pairs) == (["files", "memory"], [0, 4], [("resnet18", "resnet50")])
    for argv, said in [(["--inputs", "memory,file"], "argument --inputs: file not among ['memory', 'files']"),
                       (["--inputs", "memory, files"], "argument --inputs:  files not among"),
                       (["--workers", "1,-1"], "argument --workers: '1,-1': each at least 0"),
                       (["--workers", "1,,2"], "argument --workers: '1,,2' has an empty item"),
                       (["--pairs", "resnet18"], "argument --pairs: 'resnet18': give student:teacher"),
                       (["--pairs", "resnet18:resnet5"], "argument --pairs: 'resnet18:resnet5': give student:teacher")]:
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(argv)
        assert stop.value.code == 2 and said in capsys.readouterr().err, argv


class Parsed(Exception):
    """What a program's parser made of its command line, raised in place of the program's work."""


def parse_only(monkeypatch, module: str, args: list[str]):
    """``python -m module *args`` up to its parser: the namespace parsed; argparse's exit 2 where it refuses."""
    import argparse
    import importlib

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(parse(self, args, namespace))

    parse = argparse.ArgumentParser.parse_args
    main = importlib.import_module(module + (".__main__" if module == "scripts.demo" else "")).main
    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        patch.setattr(sys, "argv", [module, *args])
        with pytest.raises(Parsed) as stop:
            main()
    return stop.value.args[0]


def test_the_programs_take_no_abbreviated_flag(monkeypatch, capsys):
    """argparse takes a flag's prefix for the flag by default: `--seed 3` was the demo's `--seeds 3`, three student
    runs a method rather than a seed. Every argparse program here refuses it, as absl's entry points do."""
    assert parse_only(monkeypatch, "scripts.demo", ["--seeds", "3"]).seeds == 3
    for module, args in (("scripts.demo", ["--seed", "3"]), ("bench.demo_rates", ["--input", "memory"]),
                         ("bench.distill_step", ["--pair", "resnet18:resnet50"])):
        with pytest.raises(SystemExit) as stop:
            parse_only(monkeypatch, module, args)
        assert stop.value.code == 2 and f"unrecognized arguments: {args[0]}" in capsys.readouterr().err, module
    sources = [p for pattern in ("*.py", "*/*.py", "scripts/**/*.py") for p in REPO.glob(pattern)
               if p.parts[len(REPO.parts)] not in (".venv", "tests")]
    programs = {p for p in sources if "ArgumentParser(" in p.read_text()}
    assert len(programs) >= 12 and all("allow_abbrev=False" in p.read_text() for p in programs), programs


def test_every_command_of_the_gpu_suite_takes_its_programs_flags(tmp_path, monkeypatch):
    """bench/gpu_suite.sh, every part, as a lent GPU session would run it: each program it starts parses its command
    line (a flag misspelt there would otherwise cost a session's 15 device minutes to find)."""
    import os
    from collections import Counter

    # python3 keeps each `python3 -m <module> <args>` it is given and fails, so that the suite's report-only
    # fallbacks run too; nvidia-smi answers nothing
    recording_stand_in(tmp_path / "bin", "python3", '[ "$1" = -m ] && record "${@:2}"\nexit 1\n')
    recording_stand_in(tmp_path / "bin", "nvidia-smi", "")
    (tmp_path / "calls").mkdir()
    (tmp_path / "fmnist").mkdir()
    parts = "checks knn embed pipeline distill loop rates teacher demo bags"
    env = {**subprocess_env(tmp_path), "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "OUT": str(tmp_path / "out"),
           "RECORD_DIR": str(tmp_path / "calls"), "FMNIST_DIR": str(tmp_path / "fmnist")}
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_suite.sh"), parts], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    calls = recorded_calls(tmp_path / "calls")
    # demo and bags: the run, its report-only fallback, the rates from the run; teacher: the run and its fallback
    assert Counter(module for module, *_ in calls) == {
        "bench.gpu_checks": 1, "bench.knn": 1, "bench.embed": 1, "bench.data_pipeline": 1, "bench.distill_step": 1,
        "bench.loop_rates": 1, "bench.demo_rates": 3, "scripts.demo": 6}, done.stderr

    parsed = {}
    for module, *args in calls:
        if module == "bench.gpu_checks":  # it takes no flags: it runs its checks
            assert args == []
            continue
        parsed[(module, *args)] = parse_only(monkeypatch, module, args)
    teacher = next(v for k, v in parsed.items() if k[0] == "scripts.demo" and "--stop_after" in k)
    assert (teacher.config, teacher.teacher_epochs, teacher.skip_floors, teacher.device) == ("gpu", 50, True, "cuda")
    assert str(teacher.fmnist_dir) == str(tmp_path / "fmnist")
    distill = next(v for k, v in parsed.items() if k[0] == "bench.distill_step")
    assert (distill.pairs, distill.batches) == ([("resnet18", "resnet50")], [128])
