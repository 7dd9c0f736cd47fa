"""Gathering the demo's results: each evaluated network's scores with their intervals, each training stage's curves,
the students' means over seeds, each kind of bag's purity, and the compared pairs' differences, paired over the
same test images."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from scripts.demo.configs import ARCH_LABELS, METHOD_LABELS, Config, model_label, variants
from scripts.demo.stages import floors, neighbours_file, student_folder
from utils.io import load_predictions
from utils.logs import read_metrics

SCORES = ("knn10_top1", "linear_top1", "linear_top5")


def scores(run_dir: Path, folder: str) -> dict:
    """The 10-NN (majority vote) top-1 and the logistic-regression probe's top-1 / top-5 of one evaluated folder,
    each with its 95 % binomial interval (``<key>_ci95``), and the probe's chosen regularisation."""
    results = json.loads((run_dir / folder / "evaluation" / "results.json").read_text())
    knn, probe = results["knn"]["k10_majority"], results["logreg"]
    return {"knn10_top1": knn["top1"], "knn10_top1_ci95": knn["top1_ci95"],
            "linear_top1": probe["top1"], "linear_top1_ci95": probe["top1_ci95"],
            "linear_top5": probe["top5"], "linear_top5_ci95": probe["top5_ci95"],
            "logreg_C": probe["C"], "num_queries": results["num_val"], "num_memory": results["num_train"]}


def outcomes(run_dir: Path, folder: str) -> dict[str, np.ndarray] | None:
    """Per test image, whether the 10-NN classifier and the probe were right (from the evaluation's
    ``predictions.npz``; None for an evaluation written before it had one)."""
    path = run_dir / folder / "evaluation" / "predictions.npz"
    if not path.is_file():
        return None
    predicted = load_predictions(path)
    return {"knn10_top1": predicted["knn_k10_majority"] == predicted["labels"],
            "linear_top1": predicted["logreg"] == predicted["labels"]}


def mean_outcomes(per_run: list[dict[str, np.ndarray] | None]) -> dict[str, np.ndarray] | None:
    """The share of a row's runs (seeds) right on each test image; None unless every run has its predictions."""
    if not per_run or any(o is None for o in per_run):
        return None
    return {key: np.mean([o[key] for o in per_run], axis=0) for key in per_run[0]}


def finished(run_dir: Path, folder: str) -> bool:
    """Whether ``folder`` was evaluated (its ``results.json`` is the last file a stage writes)."""
    return (run_dir / folder / "evaluation" / "results.json").is_file()


def training_record(run_dir: Path, folder: str, times: dict) -> dict:
    """What a training stage's metrics.jsonl says: loss per epoch, the k-NN monitor curve, images/s; and its wall
    time as this run folder's stages timed it (None for a stage that ran elsewhere: its folder was copied in)."""
    metrics = read_metrics(run_dir / folder / "metrics.jsonl")
    # A run killed after logging an epoch but before its checkpoint logs that epoch again on resume: keep the last.
    epochs = sorted({m["epoch"]: m for m in metrics if m["kind"] == "epoch"}.items())
    knn = sorted({m["epoch"]: m["knn10_top1"] for m in metrics if m["kind"] == "knn"}.items())
    return {"train_seconds": times.get(folder),
            "images_per_s": statistics.median(m["images_per_s"] for _, m in epochs) if epochs else None,
            "loss_curve": [m["loss"] for _, m in epochs],
            "knn_curve": [list(point) for point in knn]}


def time_breakdown(run_dir: Path, times: dict) -> list[dict]:
    """Where each stage's wall time went: for a training stage, its process start-up before the first step
    (imports, teacher, decoding, building; one per start, resumes included), its epochs' steps and its k-NN monitor
    points, from its metrics.jsonl; for an evaluation stage, its start-up (to the data), data (read or held,
    BatchNorm re-estimated), embedding, probe and k-NN, from its results.json, summed over the evaluations it ran in
    one process (the floors'); ``rest_s`` is what is left (checkpoints, writing, process exit). The kNN steps give
    their total only."""
    rows = []
    for stage, total in times.items():
        path = run_dir / stage / "metrics.jsonl"
        if stage.endswith(": evaluation"):
            parts = {}
            for results in sorted((run_dir / stage.removesuffix(": evaluation")).glob("**/evaluation/results.json")):
                for name, value in json.loads(results.read_text()).get("seconds", {}).items():
                    parts[f"{name}_s"] = parts.get(f"{name}_s", 0.0) + value
            rows.append({"stage": stage, "total_s": total, **parts,
                         **({"rest_s": total - sum(parts.values())} if parts else {})})
            continue
        if not path.is_file():
            rows.append({"stage": stage, "total_s": total})
            continue
        metrics = read_metrics(path)
        parts = {"start-up_s": sum(m["seconds"] for m in metrics if m["kind"] == "setup"),
                 "train_s": sum(m.get("train_s", 0.0) for m in metrics if m["kind"] == "epoch"),
                 "monitor_s": sum(m.get("seconds", 0.0) for m in metrics if m["kind"] == "knn")}
        rows.append({"stage": stage, "total_s": total, **parts, "rest_s": total - sum(parts.values()),
                     "epochs": sum(1 for m in metrics if m["kind"] == "epoch"),
                     "monitor_points": sum(1 for m in metrics if m["kind"] == "knn")})
    return rows


def half_width(interval: list[float]) -> float:
    return (interval[1] - interval[0]) / 2


def aggregate(runs: list[dict]) -> dict:
    """Mean and sample standard deviation (0 for one run) of each score over seeds, and the mean half-width of one
    run's 95 % binomial interval (``<key>_half``: the evaluation's own uncertainty; the std is the seeds')."""
    out = {}
    for key in (*SCORES, "train_seconds", "images_per_s"):
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = statistics.mean(values) if values else None
        out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        intervals = [r[f"{key}_ci95"] for r in runs if f"{key}_ci95" in r]
        if intervals:
            out[f"{key}_half"] = statistics.mean(half_width(i) for i in intervals)
            if len(runs) == 1:
                out[f"{key}_ci95"] = intervals[0]
    for key in ("num_queries", "num_memory"):  # the same evaluation images for every run
        if key in runs[0]:
            out[key] = runs[0][key]
    return out


def bag_purity(run_dir: Path, bagging: str) -> float | None:
    """The share of bag members in their image's class (%), as the kNN step recorded it (labels read for the
    report only)."""
    return json.loads(neighbours_file(run_dir, bagging).with_suffix(".json").read_text()).get("bag_purity")


def seeds_beyond(run_dir: Path, seeds: int) -> list[int]:
    """The seeds, ``seeds`` or higher, of the student runs ``run_dir`` holds (``students/<model>/seed<k>``): runs a
    report of ``seeds`` seeds leaves out."""
    found = {int(folder.name[4:]) for folder in run_dir.glob("students/*/seed*")
             if folder.is_dir() and folder.name[4:].isdigit()}
    return sorted(seed for seed in found if seed >= seeds)


def collect(cfg: Config, run_dir: Path, seconds: float | None, load_before: list[float]) -> dict:
    """Every row of the report (floors, teacher, students), each trained row compared with its untrained network.
    A stopped run reports what finished: a student row holds its evaluated seeds (``seeds``, of ``planned_seeds``),
    unfinished folders are listed under ``missing`` and ``complete`` is false."""
    times_path = run_dir / "stage_times.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}
    rows, missing, correct = [], [], {}
    for folder, (arch, _, label) in floors(cfg).items():
        if not finished(run_dir, folder):
            missing.append(folder)
            continue
        rows.append({"model": folder.split("/")[-1], "label": label, "kind": "floor", "arch": arch, "seeds": 1,
                     **aggregate([scores(run_dir, folder)])})
    by_model = {r["model"]: r for r in rows}
    if finished(run_dir, "teacher"):
        teacher_runs = [{**scores(run_dir, "teacher"), **training_record(run_dir, "teacher", times)}]
        rows.append({"model": "teacher", "label": f"Teacher {ARCH_LABELS.get(cfg.teacher.arch, cfg.teacher.arch)} "
                     "(MoCo-v2)", "kind": "teacher", "arch": cfg.teacher.arch, "epochs": cfg.teacher.epochs,
                     "seeds": 1, "planned_seeds": 1, **aggregate(teacher_runs),
                     **{k: teacher_runs[0][k] for k in ("knn_curve", "loss_curve")}})
    else:
        missing.append("teacher")
    for model, method, bagging in variants(cfg):
        runs, per_run = [], []
        for seed in range(cfg.seeds):
            folder = student_folder(model, seed)
            if not finished(run_dir, folder):
                missing.append(folder)
                continue
            runs.append({"seed": seed, **scores(run_dir, folder), **training_record(run_dir, folder, times)})
            per_run.append(outcomes(run_dir, folder))
        correct[model] = mean_outcomes(per_run)
        if runs:
            rows.append({"model": model, "method": method, "bagging": bagging,
                         "bag_purity": bag_purity(run_dir, bagging) if bagging else None,
                         "label": model_label(cfg, cfg.student.arch, method, bagging), "kind": "student",
                         "arch": cfg.student.arch, "epochs": cfg.student.epochs, "seeds": len(runs),
                         "planned_seeds": cfg.seeds, **aggregate(runs), "runs": runs})
    for row in rows:
        for name, floor in (("untrained", f"untrained-{row['arch']}"),
                            ("untrained_data_bn", f"untrained-{row['arch']}-data-bn")):
            if row["kind"] != "floor" and floor in by_model:
                row[name] = {key: by_model[floor][key] for key in ("knn10_top1", "linear_top1")}
                row[f"above_{name}"] = {key: row[key] > row[name][key] for key in ("knn10_top1", "linear_top1")}
    purity = {b: bag_purity(run_dir, b) for b in cfg.bags if neighbours_file(run_dir, b).with_suffix(".json").is_file()}
    return {"config": asdict(cfg), "rows": rows, "complete": not missing, "missing": missing,
            "bag_purity": purity, "differences": differences(rows, comparisons(rows), correct),
            "wall_seconds": seconds, "total_stage_seconds": sum(times.values()), "stage_seconds": times,
            "time_breakdown": time_breakdown(run_dir, times),
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg())},
            "command": " ".join([Path(sys.executable).name, "-m", "scripts.demo", *sys.argv[1:]])}


RUN_RECORD = ("wall_seconds", "command", "machine")  # how a run ran, which a report rewritten from its files keeps


def keep_run_record(results: dict, previous: dict | None) -> dict:
    """``results`` gathered again from a run folder (``--report_only``) with the wall time, command and machine of
    the run that wrote ``previous`` (the ``results.json`` it replaces), where ``previous`` describes the same stages:
    the same stage times to the last digit (a stage run since changes them). Otherwise ``results`` as gathered."""
    if not previous or previous.get("stage_seconds") != results["stage_seconds"]:
        return results
    return {**results, **{key: previous[key] for key in RUN_RECORD if key in previous}}


def comparisons(rows: list[dict]) -> list[tuple[str, str]]:
    """The pairs the report compares: BINGO against every baseline; with several kinds of bag, each kind against
    the next purer one, the teacher's k-NN bags with members redrawn against them, and the paper's (the teacher's
    k-NN bags) and the purest against SEED and MoCo-v2."""
    models = {r["model"]: r for r in rows if r["kind"] == "student"}
    bingos = sorted((r for r in models.values() if r.get("method") == "bingo"), key=lambda r: r.get("bag_purity") or 0)
    if len(bingos) > 1:
        steps = [(b["model"], a["model"]) for a, b in zip(bingos, bingos[1:])]
        steps += [(r["model"], "bingo") for r in bingos if str(r.get("bagging")).startswith("knn-") and "bingo" in
                  models and (r["model"], "bingo") not in steps and ("bingo", r["model"]) not in steps]
        against_baselines = dict.fromkeys(m for m in ("bingo", bingos[-1]["model"]) if m in models)  # once each
        return steps + [(m, other) for m in against_baselines for other in ("seed", "moco") if other in models]
    if "bingo" not in models:
        return []
    return [("bingo", other) for other in METHOD_LABELS if other != "bingo" and other in models]


def paired_half_width(a: np.ndarray, b: np.ndarray) -> float:
    """The 95 % half-width (points) of the difference of two rows' accuracies on the same test images, from the
    per-image difference of their shares right (``mean_outcomes``): 1.96 sd / sqrt(n). Pairing removes what both
    rows get right or wrong alike; two rows' separate binomial intervals count it twice."""
    gap = 100.0 * (a.astype(np.float64) - b.astype(np.float64))
    return 1.96 * float(gap.std(ddof=1)) / len(gap) ** 0.5


def seeds_bound(std_a: float, n_a: int, std_b: float, n_b: int) -> tuple[float, float, float]:
    """``(se, df, t)`` for the difference of two means over seeds: Welch's standard error ``sqrt(s_a^2/n_a +
    s_b^2/n_b)``, its Welch-Satterthwaite degrees of freedom (``n_a + n_b - 2`` when both spreads are 0) and Student's
    two-sided 95 % quantile for them (``t * se`` is the bound a difference must pass: about 2.8 x se for 3 seeds
    against 3, not 2)."""
    from scipy.stats import t as student_t  # scikit-learn's dependency, imported only here

    va, vb = std_a ** 2 / n_a, std_b ** 2 / n_b
    se = (va + vb) ** 0.5
    df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1)) if va + vb > 0 else n_a + n_b - 2
    return se, df, float(student_t.ppf(0.975, df))


def seed_paired_half_width(runs_a: list[dict], runs_b: list[dict], key: str) -> float | None:
    """Student's 95 % half-width of the mean per-seed difference on ``key``, each seed's run of one row paired with
    the same seed's run of the other (every method's seed *s* starts from the same network), or None unless both rows
    ran the same two or more seeds. It uses what pairing shares and Welch's bound ignores, at ``n - 1`` degrees of
    freedom where Welch's has up to ``2n - 2``: with 3 seeds neither bound is the tighter in general."""
    from scipy.stats import t as student_t

    a, b = ({r["seed"]: r[key] for r in runs} for runs in (runs_a, runs_b))
    if a.keys() != b.keys() or len(a) < 2:
        return None
    gaps = np.array([a[seed] - b[seed] for seed in sorted(a)], dtype=np.float64)
    return float(student_t.ppf(0.975, len(gaps) - 1) * gaps.std(ddof=1) / len(gaps) ** 0.5)


def differences(rows: list[dict], pairs: list[tuple[str, str]],
                correct: dict[str, dict[str, np.ndarray] | None] | None = None) -> list[dict]:
    """For each ``(a, b)`` pair of student models: the difference of their means on each score, its standard error
    from the seeds and Student's 95 % quantile for it (``seeds_bound``; None with one seed), the two runs' binomial
    half-widths, and, where ``correct`` holds both rows' per-image outcomes (``mean_outcomes``), the paired
    half-width of the difference on the same test images (``paired_half_width``; None otherwise), and, for
    information, the seed-paired half-width (``seed_paired_half_width``; not part of the verdicts).
    ``beyond_seeds``: the difference exceeds ``t * se``; ``beyond_intervals``: it exceeds the paired half-width, or,
    without one, the sum of the two half-widths; ``beyond_noise``: both (never with one seed, whose spread over
    seeds is unmeasured)."""
    by_model = {r["model"]: r for r in rows}
    correct = correct or {}
    out = []
    for a, b in pairs:
        ra, rb = by_model[a], by_model[b]
        for key in ("knn10_top1", "linear_top1"):
            delta = ra[key] - rb[key]
            halves = ra.get(f"{key}_half", 0.0) + rb.get(f"{key}_half", 0.0)
            paired = (paired_half_width(correct[a][key], correct[b][key])
                      if correct.get(a) is not None and correct.get(b) is not None else None)
            if min(ra["seeds"], rb["seeds"]) < 2:  # one seed: the seeds' spread is not measured
                se, t, beyond_seeds = None, None, None
            else:
                se, _, t = seeds_bound(ra[f"{key}_std"], ra["seeds"], rb[f"{key}_std"], rb["seeds"])
                beyond_seeds = bool(abs(delta) > t * se)
            beyond_intervals = bool(abs(delta) > (halves if paired is None else paired))
            out.append({"a": a, "b": b, "score": key, "difference": delta, "seed_se": se, "seed_t": t,
                        "half_widths": halves, "paired_half_width": paired,
                        "seed_paired_half_width": seed_paired_half_width(ra.get("runs", []), rb.get("runs", []), key),
                        "beyond_seeds": beyond_seeds,
                        "beyond_intervals": beyond_intervals, "beyond_noise": bool(beyond_seeds) and beyond_intervals})
    return out
