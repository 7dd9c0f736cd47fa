"""The demo's report: aggregation over seeds, marks for rows that do not beat their untrained network."""
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from scripts.demo import CONFIGS, aggregate, cell, differences, floors, mean_curve, summary, train_args, training_record
from scripts.demo.configs import run_folder_name
from scripts.demo.results import (
    comparisons,
    keep_run_record,
    mean_outcomes,
    outcomes,
    paired_half_width,
    seed_paired_half_width,
    seeds_beyond,
    seeds_bound,
)
from scripts.demo.stages import share
from utils.io import save_predictions


def test_aggregate_gives_mean_and_sample_std_over_seeds():
    runs = [{"knn10_top1": 70.0, "linear_top1": 60.0, "linear_top5": 95.0, "train_seconds": 10.0,
             "images_per_s": 100.0},
            {"knn10_top1": 72.0, "linear_top1": 64.0, "linear_top5": 97.0, "train_seconds": 12.0,
             "images_per_s": 110.0},
            {"knn10_top1": 74.0, "linear_top1": 62.0, "linear_top5": 96.0, "train_seconds": 11.0,
             "images_per_s": 90.0}]
    out = aggregate(runs)
    assert out["knn10_top1"] == pytest.approx(72.0) and out["knn10_top1_std"] == pytest.approx(2.0)
    assert out["linear_top1"] == pytest.approx(62.0) and out["linear_top1_std"] == pytest.approx(2.0)
    assert out["linear_top5_std"] == pytest.approx(1.0)
    single = aggregate(runs[:1])
    assert single["knn10_top1"] == 70.0 and single["knn10_top1_std"] == 0.0


def test_cells_show_intervals_std_for_several_seeds_and_mark_rows_below_their_floor():
    row = {"seeds": 3, "knn10_top1": 72.04, "knn10_top1_std": 1.96, "knn10_top1_half": 0.88,
           "above_untrained": {"knn10_top1": False}, "above_untrained_data_bn": {"knn10_top1": True}}
    assert cell(row, "knn10_top1") == "72.0 ± 2.0 [±0.9] †"
    row["above_untrained_data_bn"]["knn10_top1"] = False
    assert cell(row, "knn10_top1") == "72.0 ± 2.0 [±0.9] † ‡"
    row = {"seeds": 1, "knn10_top1": 80.0, "knn10_top1_ci95": [79.21, 80.77], "above_untrained": {"knn10_top1": True}}
    assert cell(row, "knn10_top1") == "80.0 [79.2, 80.8]"
    assert cell({"seeds": 1, "knn10_top1": 73.4}, "knn10_top1") == "73.4"  # no interval recorded, a floor: no mark


def test_the_seeds_bound_is_welchs():
    se, df, t = seeds_bound(0.3, 3, 0.1, 3)
    assert se == pytest.approx((0.09 / 3 + 0.01 / 3) ** 0.5)
    assert df == pytest.approx((0.1 / 3) ** 2 / ((0.09 / 3) ** 2 / 2 + (0.01 / 3) ** 2 / 2))  # 2.44
    assert 2.9 < t < 4.3  # between Student's quantiles for 3 and 2 degrees of freedom (3.18, 4.30)
    assert seeds_bound(0.0, 2, 0.0, 2) == (0.0, 2, pytest.approx(4.303, abs=1e-3))
    assert seeds_bound(1.0, 1000, 1.0, 1000)[2] == pytest.approx(1.96, abs=0.01)


def test_differences_say_whether_a_gap_exceeds_the_seeds_and_the_intervals():
    rows = [{"model": "a", "seeds": 3, "knn10_top1": 75.0, "knn10_top1_std": 0.5, "knn10_top1_half": 0.8,
             "linear_top1": 80.0, "linear_top1_std": 3.0, "linear_top1_half": 0.8},
            {"model": "b", "seeds": 3, "knn10_top1": 72.0, "knn10_top1_std": 0.5, "knn10_top1_half": 0.9,
             "linear_top1": 79.0, "linear_top1_std": 3.0, "linear_top1_half": 0.8}]
    knn, linear = differences(rows, [("a", "b")])
    assert knn["difference"] == pytest.approx(3.0) and knn["seed_se"] == pytest.approx((0.5 ** 2 * 2 / 3) ** 0.5)
    assert knn["seed_t"] == pytest.approx(2.776, abs=1e-3)  # Student's 95 % quantile, Welch's 4 degrees of freedom
    assert knn["half_widths"] == pytest.approx(1.7) and knn["beyond_noise"]
    assert linear["difference"] == pytest.approx(1.0) and not linear["beyond_seeds"] and not linear["beyond_noise"]


def test_paired_differences_count_only_the_images_the_two_rows_disagree_on():
    """Two rows right on the same 5,000 of 10,000 images, and one of them on 150 more: +1.5 points, beyond the
    paired interval (±0.24, from those 150 images) though within the two binomial half-widths (±1.0 each). The same
    +1.5 made of 3,150 images gained and 3,000 lost is within its paired interval."""
    n = 10_000
    b = np.zeros(n)
    b[:5000] = 1.0
    a = b.copy()
    a[5000:5150] = 1.0
    c = b.copy()
    c[:3000], c[5000:8150] = 0.0, 1.0
    assert paired_half_width(a, b) == pytest.approx(1.96 * 100 * np.std(a - b, ddof=1) / n ** 0.5)
    assert paired_half_width(a, b) == pytest.approx(0.24, abs=0.01)
    assert paired_half_width(c, b) == pytest.approx(1.54, abs=0.01)

    def row(model: str, right: np.ndarray) -> dict:
        return {"model": model, "seeds": 2, "knn10_top1": 100 * right.mean(), "knn10_top1_std": 0.05,
                "knn10_top1_half": 1.0, "linear_top1": 100 * right.mean(), "linear_top1_std": 0.05,
                "linear_top1_half": 1.0}

    rows = [row("a", a), row("b", b), row("c", c)]
    correct = {m: {"knn10_top1": x, "linear_top1": x} for m, x in (("a", a), ("b", b), ("c", c))}
    unpaired, _ = differences(rows, [("a", "b")])
    (paired, _), (spread, _) = differences(rows, [("a", "b")], correct), differences(rows, [("c", "b")], correct)
    assert unpaired["paired_half_width"] is None and not unpaired["beyond_intervals"] and not unpaired["beyond_noise"]
    assert paired["difference"] == pytest.approx(1.5) and paired["beyond_intervals"] and paired["beyond_noise"]
    assert spread["difference"] == pytest.approx(1.5) and not spread["beyond_intervals"]
    assert differences(rows, [("a", "b")], {"a": correct["a"], "b": None})[0]["paired_half_width"] is None
    lines = summary({"rows": [{**r, "kind": "student", "method": "bingo" if r["model"] == "a" else "seed",
                               "label": r["model"]} for r in rows[:2]],
                     "differences": [paired]})
    assert lines[-1] == ("a against b, 10-NN: +1.5 points, beyond the noise; seed s.e. 0.1, paired interval ±0.2 "
                         "on the same test images, separate half-widths 2.0")


def test_the_report_compares_each_kind_of_bag_with_the_next_purer_and_the_papers_bags_with_the_baselines():
    def student(model: str, method: str, purity: float | None = None) -> dict:
        return {"kind": "student", "model": model, "method": method, "bag_purity": purity}

    rows = [{"kind": "floor", "model": "pixels"}, student("moco", "moco"), student("seed", "seed"),
            student("bingo-label", "bingo", 100.0), student("bingo", "bingo", 74.9),
            student("bingo-random", "bingo", 10.1), student("bingo-kmeans", "bingo", 50.1)]
    assert comparisons(rows) == [("bingo-kmeans", "bingo-random"), ("bingo", "bingo-kmeans"),
                                 ("bingo-label", "bingo"), ("bingo", "seed"), ("bingo", "moco"),
                                 ("bingo-label", "seed"), ("bingo-label", "moco")]
    # one kind of bag: BINGO against every baseline there is
    assert comparisons([*rows[:3], student("bingo", "bingo", 74.9), student("disco", "disco")]) == [
        ("bingo", "moco"), ("bingo", "seed"), ("bingo", "disco")]
    assert comparisons(rows[:3]) == []
    # the teacher's bags with members redrawn (the same purity): each against the next in order and against them
    redrawn = [student("bingo", "bingo", 74.9), {**student("bingo-knn-redraw-same", "bingo", 74.9),
                                                 "bagging": "knn-redraw-same"},
               {**student("bingo-knn-redraw-other", "bingo", 74.9), "bagging": "knn-redraw-other"}]
    assert comparisons(redrawn) == [("bingo-knn-redraw-same", "bingo"), ("bingo-knn-redraw-other",
                                                                          "bingo-knn-redraw-same"),
                                    ("bingo-knn-redraw-other", "bingo")]


def test_demo_outcomes_read_the_evaluations_predictions(tmp_path):
    folder = tmp_path / "students" / "bingo" / "seed0" / "evaluation"
    labels = torch.tensor([0, 1, 2, 2])
    save_predictions(folder / "predictions.npz", labels, {"logreg": torch.tensor([0, 1, 1, 2]),
                                                          "knn_k10_majority": torch.tensor([0, 0, 2, 2])})
    found = outcomes(tmp_path, "students/bingo/seed0")
    assert found["linear_top1"].tolist() == [True, True, False, True]
    assert found["knn10_top1"].tolist() == [True, False, True, True]
    assert outcomes(tmp_path, "students/bingo/seed1") is None  # an evaluation written before predictions.npz
    assert mean_outcomes([found, found])["knn10_top1"].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert mean_outcomes([found, None]) is None


def test_summary_names_rows_below_their_untrained_network_and_compares_bingo():
    floor = {"kind": "floor", "model": "untrained-resnet18", "label": "ResNet-18, untrained"}

    def student(model, knn, linear):
        row = {"kind": "student", "model": model, "method": model, "label": model, "seeds": 3, "knn10_top1": knn,
               "linear_top1": linear, "knn10_top1_std": 0.5, "linear_top1_std": 3.0, "knn10_top1_half": 0.9,
               "linear_top1_half": 0.9}
        for name, floor_knn, floor_linear in (("untrained", 70.0, 50.0), ("untrained_data_bn", 60.0, 52.0)):
            row[name] = {"knn10_top1": floor_knn, "linear_top1": floor_linear}
            row[f"above_{name}"] = {"knn10_top1": knn > floor_knn, "linear_top1": linear > floor_linear}
        return row

    rows = [floor, student("moco", 69.0, 55.0), student("seed", 71.0, 51.0), student("bingo", 73.0, 58.5)]
    lines = summary({"rows": rows})
    assert lines[0] == ("moco: NOT above (†) the same network untrained (10-NN -1.0, linear +5.0); above the same "
                        "network untrained with BN statistics of the data (10-NN +9.0, linear +3.0)")
    assert lines[1].endswith("NOT above (‡) the same network untrained with BN statistics of the data "
                             "(10-NN +11.0, linear -1.0)")
    assert lines[2].startswith("bingo: above the same network untrained (10-NN +3.0, linear +8.5); above")
    assert lines[3].startswith("bingo against moco, 10-NN: +4.0 points, beyond the noise; seed s.e. 0.4")
    assert lines[4].startswith("bingo against moco, linear: +3.5 points, within the noise (2.8 × seed s.e. 6.8)")
    assert lines[5].startswith("bingo against seed, 10-NN: +2.0 points, beyond the noise")
    assert len(lines) == 7


def test_mean_curve_keeps_the_points_every_seed_has():
    xs, mean, std = mean_curve([[[0, 60.0], [1, 64.0], [2, 70.0]], [[0, 62.0], [2, 74.0]]])
    assert xs == [0, 2] and mean == [61.0, 72.0]
    assert std[0] == pytest.approx(math.sqrt(2.0))


def test_training_record_keeps_the_last_record_of_an_epoch_logged_twice(tmp_path):
    # What a kill between an epoch's records and its checkpoint leaves after the resume: epoch 1 logged twice.
    lines = [{"kind": "knn", "epoch": 0, "knn10_top1": 70.0},
             {"kind": "epoch", "epoch": 1, "loss": 6.0, "images_per_s": 50.0},
             {"kind": "knn", "epoch": 1, "knn10_top1": 71.0},
             {"kind": "epoch", "epoch": 1, "loss": 5.9, "images_per_s": 60.0},
             {"kind": "knn", "epoch": 1, "knn10_top1": 72.0},
             {"kind": "epoch", "epoch": 2, "loss": 5.5, "images_per_s": 70.0},
             {"kind": "knn", "epoch": 2, "knn10_top1": 73.0}]
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    record = training_record(tmp_path, "stage", {"stage": 12.5})
    assert record["knn_curve"] == [[0, 70.0], [1, 72.0], [2, 73.0]]
    assert record["loss_curve"] == [5.9, 5.5]
    assert record["images_per_s"] == 65.0 and record["train_seconds"] == 12.5
    assert training_record(tmp_path, "stage", {})["train_seconds"] is None  # not timed here: no time, not 0


def test_floors_cover_the_teacher_and_the_student_network_each_with_data_bn():
    cpu = floors(CONFIGS["cpu"])  # a ResNet-34 teacher, ResNet-18 students
    assert list(cpu) == ["floors/pixels", "floors/untrained-resnet34", "floors/untrained-resnet34-data-bn",
                         "floors/untrained-resnet18", "floors/untrained-resnet18-data-bn"]
    assert cpu["floors/untrained-resnet34-data-bn"][:2] == ("resnet34", ["--untrained", "--seed=0", "--recompute_bn"])
    assert cpu["floors/pixels"][:2] == ("pixels", [])
    assert len(floors(CONFIGS["quick"])) == 3  # one architecture: its two floors once


def test_the_gpu_bags_configuration_shares_the_gpu_configurations_floors_and_teacher(tmp_path):
    gpu, bags = CONFIGS["gpu"], CONFIGS["gpu-bags"]
    assert bags.shares == "gpu" and gpu.shares is None
    for field in ("teacher", "student", "image_size", "stem", "train_per_class", "val_per_class",
                  "eval_train_per_class", "eval_val_per_class", "input_flags"):
        assert getattr(bags, field) == getattr(gpu, field), field
    assert floors(bags) == floors(gpu) and bags.seeds >= 2
    assert "--stem=small" in train_args(gpu, gpu.teacher, tmp_path, tmp_path / "t", "moco", 0)
    run, other = tmp_path / "demo-gpu-bags", tmp_path / "demo-gpu"
    run.mkdir()
    share(run, other)
    share(run, other)  # again: the links stay
    (run / "teacher" / "final.pth").write_text("x")
    assert (other / "teacher" / "final.pth").read_text() == "x" and (run / "floors").resolve() == other / "floors"
    (tmp_path / "third").mkdir()
    (tmp_path / "third" / "teacher").mkdir()
    with pytest.raises(SystemExit, match="is not the link"):
        share(tmp_path / "third", other)


def test_the_purity_configuration_makes_label_bags_of_75_percent_beside_bags_10ks_and_shares_its_teacher(
        tmp_path, monkeypatch):
    from scripts.demo import stages
    from scripts.demo.configs import BAG_FLAGS, BAG_LABELS

    purity, bags_10k = CONFIGS["bags-10k-purity"], CONFIGS["bags-10k"]
    assert purity.shares == "bags-10k" and floors(purity) == floors(bags_10k) and purity.seeds >= 2
    for field in ("teacher", "student", "train_per_class", "eval_train_per_class", "input_flags", "image_size"):
        assert getattr(purity, field) == getattr(bags_10k, field), field
    assert all(b in BAG_FLAGS and b in BAG_LABELS for cfg in CONFIGS.values() for b in cfg.bags)
    commands = []
    monkeypatch.setattr(stages, "training_data", lambda cfg, data_dir, source: data_dir)
    monkeypatch.setattr(stages, "prepare", lambda folder, *args, **kwargs: folder)
    monkeypatch.setattr(stages.Runner, "stage", lambda self, name, done, script, args: commands.append((script, args)))
    monkeypatch.setattr(stages.Runner, "evaluations", lambda self, name, evaluations: None)
    run = tmp_path / "demo-bags-10k-purity"
    stages.run_stages(purity, run, tmp_path / "pngs", tmp_path / "eval", "cpu")
    assert (run / "teacher").resolve() == tmp_path / "demo-bags-10k" / "teacher"  # trained once, by either
    knn_steps = {next(a for a in args if a.startswith("--corr_name=")).rsplit("/", 1)[1]: args
                 for script, args in commands if script == "run_knn.py"}
    files = ["neighbours.npy", "neighbours-label-75.npy", "neighbours-label.npy", "neighbours-knn-redraw-same.npy",
             "neighbours-knn-redraw-other.npy"]
    assert list(knn_steps) == files
    mixed = knn_steps["neighbours-label-75.npy"]
    assert "--bagging=label" in mixed and "--label_bag_purity=0.75" in mixed
    assert not any(a.startswith("--ckpt_name=") for a in mixed) and "--label_bag_purity=0.75" not in \
        knn_steps["neighbours-label.npy"]
    for which in ("same", "other"):  # the teacher's bags, redrawn: the teacher's flags and the redraw
        redrawn = knn_steps[f"neighbours-knn-redraw-{which}.npy"]
        assert f"--redraw_members={which}_class" in redrawn and "--bagging=knn" in redrawn
        assert any(a.startswith("--ckpt_name=") for a in redrawn)
    students = [next(a for a in args if a.startswith("--corr_npy=")).rsplit("/", 1)[1]
                for script, args in commands if script == "main_distill.py" and "--method=bingo" in args]
    assert students == files * purity.seeds


def _evaluated(run_dir, folder, knn, linear):
    out = run_dir / folder / "evaluation"
    out.mkdir(parents=True)
    interval = [knn - 1, knn + 1]
    (out / "results.json").write_text(json.dumps({
        "knn": {"k10_majority": {"top1": knn, "top1_ci95": interval}}, "num_val": 100, "num_train": 200,
        "logreg": {"top1": linear, "top1_ci95": interval, "top5": 99.0, "top5_ci95": [98.0, 100.0], "C": 1.0}}))
    (run_dir / folder / "metrics.jsonl").write_text(json.dumps({"kind": "epoch", "epoch": 0, "loss": 8.0,
                                                                "images_per_s": 1000.0}) + "\n")


def test_a_stopped_run_reports_what_finished_and_names_what_did_not(tmp_path):
    from scripts.demo.report import partial_line, table
    from scripts.demo.results import collect

    cfg = replace(CONFIGS["gpu-bags"], methods=("seed", "bingo"), bags=("random", "knn"), shares=None)  # 2 seeds
    for folder in floors(cfg):
        _evaluated(tmp_path, folder, 70.0, 75.0)
    _evaluated(tmp_path, "teacher", 72.0, 76.0)
    _evaluated(tmp_path, "students/seed/seed0", 71.0, 74.0)
    (tmp_path / "neighbours-random.json").write_text(json.dumps({"bag_purity": 10.0}))
    results = collect(cfg, tmp_path, None, [0.0, 0.0, 0.0])
    assert not results["complete"]
    assert results["missing"] == ["students/seed/seed1", "students/bingo-random/seed0",
                                  "students/bingo-random/seed1", "students/bingo/seed0", "students/bingo/seed1"]
    rows = {r["model"]: r for r in results["rows"]}
    assert set(rows) == {*(f.split("/")[-1] for f in floors(cfg)), "teacher", "seed"}  # unfinished students: no row
    assert rows["seed"]["seeds"] == 1 and rows["seed"]["planned_seeds"] == 2
    assert rows["seed"]["above_untrained"] == {"knn10_top1": True, "linear_top1": False}
    assert results["bag_purity"] == {"random": 10.0}  # the k-NN bags' step did not run
    assert "| 1 of 2 |" in table(results)
    assert partial_line(results).startswith("**Partial run**: 5 stages not run or not finished (students/seed/seed1,")
    for folder in results["missing"]:
        _evaluated(tmp_path, folder, 71.0, 74.0)
    (tmp_path / "neighbours.json").write_text(json.dumps({"bag_purity": 70.0}))
    done = collect(cfg, tmp_path, None, [0.0, 0.0, 0.0])
    assert done["complete"] and partial_line(done) == "" and "of 2" not in table(done)


def test_each_stage_gets_the_recipe_flags_that_act_in_it_and_passes_main_distills_checks(tmp_path):
    """A recipe is shared by several methods; main_distill.py's own FLAG_SCOPE says which of its flags act where."""
    import main_distill
    from engine.distillation import check_options, resolve_method_defaults
    from engine.options import DistillOptions, from_argv

    for cfg in (c for c in CONFIGS.values() if c.name != "quick"):  # quick: no recipe flags
        teacher = ("--t_arch=resnet34", f"--pretrain_path={tmp_path / 't.pth'}")
        for method, stage, extra in (("moco", cfg.teacher, ()), ("moco", cfg.student, ()),
                                     ("seed", cfg.student, teacher), ("disco", cfg.student, teacher),
                                     ("compress", cfg.student, teacher),
                                     ("bingo", cfg.student, (*teacher, f"--corr_npy={tmp_path / 'n.npy'}"))):
            args = train_args(cfg, stage, tmp_path, tmp_path / "out", method, 0, extra)
            opts = resolve_method_defaults(from_argv(DistillOptions, main_distill.FLAGS, ["main_distill.py", *args]))
            check_options(opts, world_size=1)  # nothing refused
            given = {a.split("=")[0] for a in args}
            assert ("--moco_m" in given) == (method in ("moco", "disco", "compress")), (cfg.name, method)
            assert ("--bag_warmup_epochs" in given) == (method == "bingo"), (cfg.name, method)
            assert not extra or args[-len(extra):] == list(extra)  # the stage's own flags come last


def test_the_gpu_configuration_reads_the_release_in_place_and_every_stage_holds_its_images(tmp_path, monkeypatch):
    from datasets.folders import DatasetError
    from scripts.demo import stages

    from helpers import make_idx_release

    release = make_idx_release(tmp_path / "fmnist")
    commands = []
    monkeypatch.setattr(stages.Runner, "stage", lambda self, name, done, script, args: commands.append((script, args)))
    monkeypatch.setattr(stages.Runner, "evaluations", lambda self, name, evaluations: commands.extend(
        ("main_lincls.py (floors)", args) for args in evaluations.values()))
    data, eval_data = stages.run_stages(CONFIGS["gpu"], tmp_path / "run", tmp_path / "pngs", tmp_path / "eval-pngs",
                                        "cuda", source=release)
    assert data == eval_data == release.resolve()
    assert not (tmp_path / "pngs").exists() and not (tmp_path / "eval-pngs").exists()  # nothing written or decoded
    scripts = [script for script, _ in commands]
    assert scripts.count("main_lincls.py (floors)") == 5  # in one process
    assert scripts.count("main_lincls.py") == 1 + 5 and scripts.count("main_distill.py") == 1 + 5
    assert scripts.count("run_knn.py") == 1
    for script, args in commands:
        reads = [a for a in args if a.startswith("--data_dir=")]
        assert reads == [f"--data_dir={release.resolve()}"], (script, args)
        teacherless_bags = script == "run_knn.py" and "--bagging=random" in args
        assert ("--in_memory" in args) != teacherless_bags, (script, args)  # random bags embed nothing
        if script == "main_distill.py":  # each trained network scored by its own process first
            assert "--device_views" in args and "--stem=small" in args and "--final_evaluation" in args
    with pytest.raises(DatasetError, match="--fmnist_dir=.*nowhere holds no train-images-idx3-ubyte.gz"):
        stages.training_data(CONFIGS["gpu"], tmp_path / "pngs", tmp_path / "nowhere")


def test_a_rewritten_report_keeps_the_record_of_the_run_it_describes_and_no_other():
    gathered = {"rows": [{"model": "bingo"}], "stage_seconds": {"teacher": 10.0}, "wall_seconds": None,
                "command": "python -m scripts.demo --report_only", "machine": {"cpus": 2}}
    ran = {**gathered, "wall_seconds": 60.0, "command": "python -m scripts.demo", "machine": {"cpus": 16}}
    kept = keep_run_record(gathered, ran)
    assert (kept["wall_seconds"], kept["command"], kept["machine"]) == (60.0, "python -m scripts.demo", {"cpus": 16})
    assert kept["rows"] is gathered["rows"]
    # a stage has run since the record was written: it describes another run, so nothing of it is kept
    since = {**gathered, "stage_seconds": {"teacher": 10.0, "students/bingo/seed0": 5.0}}
    assert keep_run_record(since, ran) is since
    assert keep_run_record(gathered, None) is gathered


def test_the_seed_paired_bound_pairs_each_seed_with_its_own_and_needs_the_same_seeds():
    def runs(*values: float, first: int = 0) -> list[dict]:
        return [{"seed": first + i, "knn10_top1": v} for i, v in enumerate(values)]

    # per-seed gaps 0.25, 0.52, 0.73: mean 0.5, sd 0.2406, t(0.975, 2) = 4.3027 -> 4.3027 * 0.2406 / sqrt(3)
    half = seed_paired_half_width(runs(76.25, 77.52, 75.73), runs(76.0, 77.0, 75.0), "knn10_top1")
    assert half == pytest.approx(4.302653 * 0.240624 / 3 ** 0.5, rel=1e-4)
    # a seed effect both rows share cancels: the same gaps under any shift per seed give the same bound
    shifted = seed_paired_half_width(runs(86.25, 67.52, 75.73), runs(86.0, 67.0, 75.0), "knn10_top1")
    assert shifted == pytest.approx(half)
    assert seed_paired_half_width(runs(1.0), runs(0.5), "knn10_top1") is None  # one seed: no spread
    assert seed_paired_half_width(runs(1.0, 2.0), runs(1.0, 2.0, first=1), "knn10_top1") is None  # other seeds
    rows = [{"model": m, "seeds": 3, "knn10_top1": 0.0, "knn10_top1_std": 1.0, "linear_top1": 0.0,
             "linear_top1_std": 1.0, "runs": [{"seed": i, "knn10_top1": v, "linear_top1": v} for i, v in enumerate(x)]}
            for m, x in (("a", (76.25, 77.52, 75.73)), ("b", (76.0, 77.0, 75.0)))]
    (found, _) = differences(rows, [("a", "b")])
    assert found["seed_paired_half_width"] == pytest.approx(half)
    assert "(seeds paired: ±0.6)" in summary({"rows": [{**r, "kind": "student", "label": r["model"]} for r in rows],
                                             "differences": [found]})[-1]


def test_several_kinds_of_bag_get_a_purity_plot_and_a_row_per_kind_seed_by_seed(tmp_path):
    from PIL import Image

    from scripts.demo.plots import plot

    def run(seed: int, knn: float, linear: float) -> dict:
        return {"seed": seed, "knn10_top1": knn, "linear_top1": linear, "knn_curve": [[0, 70.0], [1, knn]],
                "loss_curve": [8.0, 7.5]}

    def row(model: str, bagging: str | None, purity: float | None, scores: list[tuple[float, float]]) -> dict:
        runs = [run(s, k, lin) for s, (k, lin) in enumerate(scores)]
        knn, linear = (sum(r[key] for r in runs) / len(runs) for key in ("knn10_top1", "linear_top1"))
        return {"kind": "student", "model": model, "label": model, "method": "bingo" if bagging else "seed",
                "bagging": bagging, "bag_purity": purity, "seeds": len(runs), "runs": runs, "knn10_top1": knn,
                "linear_top1": linear, "knn10_top1_std": 0.2, "linear_top1_std": 0.2, "knn10_top1_half": 0.8,
                "linear_top1_half": 0.7, "knn_curve": runs[0]["knn_curve"], "loss_curve": runs[0]["loss_curve"]}

    rows = [{"kind": "floor", "model": "pixels", "label": "raw pixels", "knn10_top1": 80.9, "linear_top1": 82.3,
             "seeds": 1},
            row("seed", None, None, [(80.0, 83.0), (80.2, 83.1)]),
            row("bingo", "knn", 74.7, [(80.6, 84.2), (80.7, 84.4)]),
            row("bingo-knn-redraw-other", "knn-redraw-other", 74.7, [(81.0, 84.5), (81.2, 84.6)]),
            row("bingo-label", "label", 100.0, [(82.0, 84.8), (82.1, 85.3)])]
    written = plot({"rows": rows}, tmp_path)
    assert [p.name for p in written] == ["learning_curves.png", "accuracy.png", "loss_curves.png", "purity.png",
                                         "bags.png"]
    assert Image.open(tmp_path / "bags.png").size[1] == round(120 * (1.5 + 0.5 * 3))  # one row per kind of bag
    (tmp_path / "one").mkdir()
    assert [p.name for p in plot({"rows": rows[:3]}, tmp_path / "one")] == ["learning_curves.png", "accuracy.png",
                                                                            "loss_curves.png"]


def test_more_seeds_go_into_the_configurations_folder_and_a_report_names_the_seeds_it_leaves_out(tmp_path):
    cpu = CONFIGS["cpu"]
    assert all(run_folder_name(cfg) == f"demo-{name}" for name, cfg in CONFIGS.items())
    assert run_folder_name(cpu) == run_folder_name(replace(cpu, seeds=3)) == "demo-cpu"
    longer = replace(cpu, teacher=replace(cpu.teacher, epochs=cpu.teacher.epochs + 8))  # another teacher: its own
    assert run_folder_name(longer) == f"demo-cpu-teacher{cpu.teacher.epochs + 8}"
    for folder in ("students/moco/seed0", "students/moco/seed1", "students/bingo/seed0", "students/bingo/seed3",
                   "students/bingo/seedling", "teacher"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "students" / "seed" / "seed7").parent.mkdir()
    (tmp_path / "students" / "seed" / "seed7").write_text("a file, not a run")
    assert seeds_beyond(tmp_path, 1) == [1, 3] and seeds_beyond(tmp_path, 2) == [3] and seeds_beyond(tmp_path, 4) == []
    assert seeds_beyond(tmp_path / "absent", 1) == []
