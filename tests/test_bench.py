"""Smoke tests: the benchmark scripts run on the CPU at tiny sizes and print their tables (no timing asserted)."""
import json
import subprocess
import sys

import pytest

from scripts.fashion_mnist import DEBIAN_DIR

from helpers import REPO, subprocess_env

CASES = {
    "embed.py": ["--arch", "resnet18", "--images", "16", "--batch", "8", "--size", "32", "--workers", "0",
                 "--device", "cpu"],
    "knn.py": ["--sizes", "300", "--dims", "16", "--device", "cpu"],
    "distill_step.py": ["--pairs", "resnet18:resnet50", "--batches", "2", "--size", "32", "--queue", "8",
                        "--steps", "1", "--rounds", "1", "--warmup", "1", "--device", "cpu",
                        "--configs", "official,fast,fast+fused,fast+eval-teacher-fused"],  # compiling takes minutes
    "loop_rates.py": ["--images", "24", "--size", "32", "--batch", "4", "--workers", "0", "--epochs", "2",
                      "--steps", "1", "--flags=", "--device", "cpu"],
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
