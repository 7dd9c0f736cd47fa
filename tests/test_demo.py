import json
import subprocess
import sys

import pytest

from scripts.fashion_mnist import DEBIAN_DIR

from helpers import subprocess_env

pytestmark = pytest.mark.skipif(not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(),
                                reason="Fashion-MNIST is not installed (make test installs dataset-fashion-mnist)")


def _demo_command(tmp_path) -> list[str]:
    return [sys.executable, "-m", "scripts.demo", "--quick", f"--run_dir={tmp_path / 'run'}",
            f"--data_dir={tmp_path / 'data'}"]


def _demo(tmp_path):
    return subprocess.run(_demo_command(tmp_path), cwd=tmp_path, env=subprocess_env(tmp_path), capture_output=True,
                          text=True, timeout=600)


def test_quick_demo_runs_the_whole_chain_with_floors_and_resumes(tmp_path):
    first = _demo(tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run = tmp_path / "run"
    for name in ("results.md", "results.json", "learning_curves.png", "accuracy.png", "loss_curves.png",
                 "neighbours.npy"):
        assert (run / name).is_file(), name
    results = json.loads((run / "results.json").read_text())
    rows = {r["model"]: r for r in results["rows"]}
    # the quick configuration's teacher is a ResNet-18 too, so its floors are the students'
    assert list(rows) == ["pixels", "untrained-resnet18", "untrained-resnet18-data-bn", "teacher", "moco", "seed",
                          "disco", "compress", "bingo"]
    assert [r["kind"] for r in rows.values()] == ["floor"] * 3 + ["teacher"] + ["student"] * 5
    for row in rows.values():
        assert 0 <= row["knn10_top1"] <= 100 and 0 <= row["linear_top1"] <= row["linear_top5"] <= 100
        for key in ("knn10_top1", "linear_top1"):  # every accuracy with its interval, on the evaluation's queries
            low, high = row["runs"][0][f"{key}_ci95"] if "runs" in row else row[f"{key}_ci95"]
            assert low <= row[key] <= high
    assert rows["teacher"]["num_queries"] == 100 and rows["teacher"]["num_memory"] == 200  # the quick sizes
    # each trained row is compared with its own network untrained, and the table says so
    assert rows["teacher"]["untrained"]["knn10_top1"] == rows["untrained-resnet18"]["knn10_top1"]
    assert rows["bingo"]["untrained"]["linear_top1"] == rows["untrained-resnet18"]["linear_top1"]
    assert rows["seed"]["untrained_data_bn"]["knn10_top1"] == rows["untrained-resnet18-data-bn"]["knn10_top1"]
    # every student starts from the same network (seed 0), and so does the teacher here (a ResNet-18 too): their
    # monitors' first points, on the training split's own validation images, are one score
    start = rows["teacher"]["knn_curve"][0][1]
    assert all(r["knn_curve"][0][1] == pytest.approx(start)
               for method in ("moco", "seed", "disco", "compress", "bingo") for r in rows[method]["runs"])
    assert "| Raw pixels (32×32, no network) | floor |" in first.stdout
    assert "the same network untrained" in first.stdout
    assert 0 <= results["bag_purity"]["knn"] <= 100 and "Bag purity (bag members in their image's class" in first.stdout
    assert "[" in first.stdout.split("| Raw pixels")[1].split("\n")[0]  # a floor's cell shows its interval
    # BINGO against each baseline, paired on the same test images: every evaluation wrote its predictions
    assert [(d["a"], d["b"], d["score"]) for d in results["differences"]] == [
        ("bingo", other, score) for other in ("moco", "seed", "disco", "compress")
        for score in ("knn10_top1", "linear_top1")]
    assert all(d["paired_half_width"] is not None and d["seed_se"] is None for d in results["differences"])
    assert first.stdout.count("paired interval ±") == 8
    # the k-NN monitor ran in every training stage: before training and after its epoch
    assert [e for e, _ in rows["teacher"]["knn_curve"]] == [0, 1]
    assert all([e for e, _ in run_["knn_curve"]] == [0, 1] for run_ in rows["bingo"]["runs"])
    # where each training stage's time went: start-up, its epochs' steps, its monitor points, the rest
    stages = {r["stage"]: r for r in results["time_breakdown"]}
    assert set(stages) == set(results["stage_seconds"])
    for name in ("teacher", "students/bingo/seed0"):
        part = stages[name]
        assert part["epochs"] == 1 and part["monitor_points"] == 2
        assert part["start-up_s"] > 0 and part["train_s"] > 0 and part["monitor_s"] > 0
        assert part["start-up_s"] + part["train_s"] + part["monitor_s"] < part["total_s"]
    part = stages["floors: evaluation"]  # the floors in one process: their parts summed
    assert part["start-up_s"] > 0 and part["embed_s"] > 0 and part["logreg_s"] > 0 and part["knn_s"] > 0
    assert part["rest_s"] > 0
    # each trained network was scored by its own training process (the gpu configurations' way), from its monitor's
    # last embedding of the floors' images, so no evaluation process ran for it
    assert not any(name.endswith(": evaluation") for name in stages if name != "floors: evaluation")
    assert first.stdout.count("done already") == 6
    for folder in ("teacher", "students/bingo/seed0"):
        made = json.loads((run / folder / "evaluation" / "results.json").read_text())
        assert made["made_by"] == "main_distill.py --final_evaluation", folder
        assert made["flags"]["data_dir"] == str((tmp_path / "data").resolve())
    assert rows["bingo"]["runs"][0]["knn10_top1"] == pytest.approx(rows["bingo"]["runs"][0]["knn_curve"][-1][1])
    assert "## Where the time went" in (run / "results.md").read_text()
    assert (tmp_path / "data" / "train").is_dir() and len(list((tmp_path / "data" / "train").iterdir())) == 10
    assert len(list((tmp_path / "data" / "val").rglob("*.png"))) == 100
    again = _demo(tmp_path)  # everything is done: every stage is skipped, the report is rebuilt
    assert again.returncode == 0 and again.stdout.count("done already") == 14  # the floors are one stage
    ran = json.loads((run / "results.json").read_text())
    report_command = [*_demo_command(tmp_path)[:-1], "--report_only"]  # the report reads the run folder, no data
    (run / "students" / "moco" / "seed2").mkdir()  # as a run with --seeds=3 into this folder would leave it
    rewritten = subprocess.run(report_command, cwd=tmp_path, env=subprocess_env(tmp_path), capture_output=True,
                               text=True, timeout=600)
    assert rewritten.returncode == 0, rewritten.stderr[-3000:]
    assert "also holds student runs of seed 2, which this report leaves out" in rewritten.stdout
    assert "give --seeds=3 to include them" in rewritten.stdout
    kept = json.loads((run / "results.json").read_text())  # the scores again, the run's own record kept
    assert kept["wall_seconds"] == ran["wall_seconds"] is not None and kept["command"] == ran["command"]
    assert "--report_only" not in kept["command"] and kept["rows"] == ran["rows"]


def test_a_stopped_demo_stops_its_running_stage_which_ends_cleanly(tmp_path):
    """SIGTERM to the demo (what `timeout` sends) reaches the stage it is running: the stage's own stop handling runs
    (main_distill.py keeps its checkpoint) and no process is left behind."""
    import os
    import signal
    import time
    from pathlib import Path

    stage = tmp_path / "stage.py"
    stage.write_text(
        "import os, signal, sys, time, pathlib\n"
        "out = pathlib.Path(sys.argv[1])\n"
        "signal.signal(signal.SIGTERM, lambda *_: (out.joinpath('stopped').write_text('clean'), sys.exit(75)))\n"
        "out.joinpath('pid').write_text(str(os.getpid()))\n"
        "while True:\n    time.sleep(0.05)\n")
    demo = subprocess.Popen(
        [sys.executable, "-c",
         "import signal, sys; from pathlib import Path; from scripts.demo.stages import Runner; "
         "signal.signal(signal.SIGTERM, lambda *_: sys.exit('stopped')); "
         f"Runner(Path({str(tmp_path)!r}), 'cpu').stage('x', Path({str(tmp_path)!r}) / 'done', {str(stage)!r}, "
         f"[{str(tmp_path)!r}])"], cwd=Path(__file__).resolve().parent.parent, env=subprocess_env(tmp_path))
    deadline = time.time() + 60
    while not (tmp_path / "pid").exists():
        assert time.time() < deadline and demo.poll() is None, "the stage did not start"
        time.sleep(0.05)
    demo.send_signal(signal.SIGTERM)
    assert demo.wait(timeout=60) != 0
    assert (tmp_path / "stopped").read_text() == "clean"
    child = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_the_teacher_alone_for_longer_reports_its_curve_and_names_what_it_did_not_run(tmp_path):
    done = subprocess.run([sys.executable, "-m", "scripts.demo", "--quick", "--teacher_epochs=2", "--skip_floors",
                           "--stop_after=teacher", f"--run_dir={tmp_path / 'run'}", f"--data_dir={tmp_path / 'data'}"],
                          cwd=tmp_path, env=subprocess_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    (teacher,) = results["rows"]
    assert teacher["model"] == "teacher" and teacher["epochs"] == 2 and len(teacher["loss_curve"]) == 2
    assert not results["complete"] and "floors/pixels" in results["missing"]
    assert not (tmp_path / "run" / "floors").exists() and not (tmp_path / "run" / "students").exists()
    assert "stages not run or not finished" in (tmp_path / "run" / "results.md").read_text()
