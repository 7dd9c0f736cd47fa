import json
import subprocess
import sys

import pytest

from datasets.fashion_mnist import DEBIAN_DIR
from helpers import REPO, subprocess_env

pytestmark = pytest.mark.skipif(not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(),
                                reason="Fashion-MNIST is not installed (make test installs dataset-fashion-mnist)")


def _demo(tmp_path):
    return subprocess.run([sys.executable, "-m", "scripts.demo", "--quick", f"--run_dir={tmp_path / 'run'}",
                           f"--data_dir={tmp_path / 'data'}"], cwd=tmp_path, env=subprocess_env(tmp_path),
                          capture_output=True, text=True, timeout=600)


def test_quick_demo_runs_the_whole_chain_and_resumes(tmp_path):
    first = _demo(tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run = tmp_path / "run"
    for name in ("results.md", "results.json", "loss_curves.png", "accuracy.png", "neighbours.npy"):
        assert (run / name).is_file(), name
    results = json.loads((run / "results.json").read_text())
    assert [r["model"] for r in results["rows"]] == ["teacher", "moco", "seed", "bingo"]
    assert all(0 <= r["linear_top1"] <= r["linear_top5"] <= 100 for r in results["rows"])
    assert "| ResNet-18, BINGO |" in first.stdout
    assert (tmp_path / "data" / "train").is_dir() and len(list((tmp_path / "data" / "train").iterdir())) == 10
    again = _demo(tmp_path)  # everything is done: every stage is skipped, the report is rebuilt
    assert again.returncode == 0 and again.stdout.count("done already") == 13
