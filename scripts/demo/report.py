"""The demo's report: the table (every accuracy with its interval), what each row is above or not, the differences
that exceed the noise, and results.md / results.json."""
from __future__ import annotations

from pathlib import Path

from scripts.demo.configs import BAG_LABELS
from scripts.demo.plots import plot
from scripts.demo.results import comparisons, differences
from utils.io import atomic_json


def cell(row: dict, key: str) -> str:
    """``mean [low, high]`` for one run (its 95 % binomial interval), ``mean ± std [±h]`` over several seeds (h: one
    run's interval half-width); † / ‡ where a trained row is not above its untrained network."""
    text = f"{row[key]:.1f}"
    if row["seeds"] > 1:
        text += f" ± {row[f'{key}_std']:.1f}"
        if f"{key}_half" in row:
            text += f" [±{row[f'{key}_half']:.1f}]"
    elif f"{key}_ci95" in row:
        low, high = row[f"{key}_ci95"]
        text += f" [{low:.1f}, {high:.1f}]"
    if not row.get("above_untrained", {}).get(key, True):
        text += " †"
    if not row.get("above_untrained_data_bn", {}).get(key, True):
        text += " ‡"
    return text


def table(results: dict) -> str:
    with_bags = any(r.get("bag_purity") is not None for r in results["rows"]) and len(results["bag_purity"]) > 1
    head = "| model | kind |" + (" bag purity |" if with_bags else "")
    lines = [head + " 10-NN top-1 | linear top-1 | linear top-5 | epochs | seeds | train time |",
             "|---|---|" + ("---|" if with_bags else "") + "---|---|---|---|---|---|"]
    for r in results["rows"]:
        epochs = r.get("epochs", "—")
        minutes = f"{r['train_seconds'] / 60:.1f} min" if r.get("train_seconds") is not None else "—"
        purity = (f" {r['bag_purity']:.1f} % |" if r.get("bag_purity") is not None else " — |") if with_bags else ""
        seeds = f"{r['seeds']}" + (f" of {r['planned_seeds']}" if r.get("planned_seeds", r["seeds"]) > r["seeds"]
                                   else "")
        lines.append(f"| {r['label']} | {r['kind']} |{purity} {cell(r, 'knn10_top1')} | {cell(r, 'linear_top1')} | "
                     f"{cell(r, 'linear_top5')} | {epochs} | {seeds} | {minutes} |")
    return "\n".join(lines)


def time_table(results: dict) -> str:
    """Each stage's wall time and, for a training stage or an evaluation, where it went (``results.time_breakdown``)."""
    lines = ["| stage | total s | start-up s | work s | rest s |", "|---|---|---|---|---|"]
    for r in results.get("time_breakdown", []):
        if "start-up_s" not in r:
            lines.append(f"| {r['stage']} | {r['total_s']:.1f} | | | |")
            continue
        if "train_s" in r:
            epochs = f"{r['epochs']} epoch" + ("s" if r["epochs"] != 1 else "")
            work = (f"training steps {r['train_s']:.1f} ({epochs}), k-NN monitor {r['monitor_s']:.1f} "
                    f"({r['monitor_points']} points)")
        else:
            parts = (("data_s", "data"), ("embed_s", "embedding"), ("logreg_s", "probe"), ("knn_s", "k-NN"))
            work = ", ".join(f"{label} {r[key]:.1f}" for key, label in parts if key in r)
        lines.append(f"| {r['stage']} | {r['total_s']:.1f} | {r['start-up_s']:.1f} | {work} | {r['rest_s']:.1f} |")
    return "\n".join(lines)


def _difference_line(d: dict, labels: dict) -> str:
    name = {"knn10_top1": "10-NN", "linear_top1": "linear"}[d["score"]]
    paired = d.get("paired_half_width")
    intervals = (f"interval half-widths {d['half_widths']:.1f}" if paired is None else
                 f"paired interval ±{paired:.1f} on the same test images, separate half-widths {d['half_widths']:.1f}")
    if d["seed_se"] is None:
        verdict = (f"{'beyond' if d['beyond_intervals'] else 'within'} the intervals ({intervals}); one seed, so "
                   "the seeds' spread is not measured (run --seeds 3)")
        return f"{labels[d['a']]} against {labels[d['b']]}, {name}: {d['difference']:+.1f} points, {verdict}"
    verdict = ("beyond the noise" if d["beyond_noise"] else
               "within the noise (" + ", ".join(part for part, hit in (
                   (f"{d['seed_t']:.1f} × seed s.e. {d['seed_t'] * d['seed_se']:.1f}", not d["beyond_seeds"]),
                   (f"intervals {d['half_widths'] if paired is None else paired:.1f}", not d["beyond_intervals"]))
               if hit) + ")")
    by_seed = d.get("seed_paired_half_width")
    by_seed = "" if by_seed is None else f" (seeds paired: ±{by_seed:.1f})"
    return (f"{labels[d['a']]} against {labels[d['b']]}, {name}: {d['difference']:+.1f} points, {verdict}; "
            f"seed s.e. {d['seed_se']:.1f}{by_seed}, {intervals}")


def summary(results: dict) -> list[str]:
    """Per trained row: above its network untrained or not (as initialised, and with BN statistics of the data);
    then the comparisons, each said to be beyond the noise or not."""
    lines = []
    for r in results["rows"]:
        if r["kind"] == "floor":
            continue
        parts = []
        for name, what, mark in (("untrained", "untrained", "†"),
                                 ("untrained_data_bn", "untrained with BN statistics of the data", "‡")):
            if name not in r:  # that floor did not finish
                continue
            gaps = ", ".join(f"{label} {r[key] - r[name][key]:+.1f}"
                             for key, label in (("knn10_top1", "10-NN"), ("linear_top1", "linear")))
            verdict = "above" if all(r[f"above_{name}"].values()) else f"NOT above ({mark})"
            parts.append(f"{verdict} the same network {what} ({gaps})")
        pixels = next((f for f in results["rows"] if f["model"] == "pixels"), None)
        if pixels is not None:
            gaps = ", ".join(f"{label} {r[key] - pixels[key]:+.1f}"
                             for key, label in (("knn10_top1", "10-NN"), ("linear_top1", "linear")))
            parts.append(f"against raw pixels {gaps}")
        lines.append(f"{r['label']}: " + ("; ".join(parts) or "no floor scored to compare with"))
    labels = {r["model"]: r["label"] for r in results["rows"]}
    found = results.get("differences")
    if found is None:  # results gathered before the differences were (no per-image predictions)
        found = differences(results["rows"], comparisons(results["rows"]))
    lines += [_difference_line(d, labels) for d in found]
    return lines


def purity_line(results: dict) -> str:
    parts = [f"{BAG_LABELS[b]} {p:.1f} %" for b, p in results["bag_purity"].items() if p is not None]
    if not parts:  # no bags made yet
        return ""
    return "Bag purity (bag members in their image's class; labels read for this figure only): " + ", ".join(parts)


def partial_line(results: dict) -> str:
    """What a stopped run lacks ('' when complete)."""
    if results.get("complete", True):
        return ""
    return (f"**Partial run**: {len(results['missing'])} stages not run or not finished "
            f"({', '.join(results['missing'])}); the same command again resumes (without --stop_after or "
            "--skip_floors, where given, to run them all).")


PLOT_CAPTIONS = {"learning_curves.png": "learning curves", "accuracy.png": "accuracy", "loss_curves.png": "loss curves",
                 "purity.png": "accuracy against bag purity", "bags.png": "each kind of bag's students, seed by seed"}


def report(results: dict, run_dir: Path) -> None:
    cfg = results["config"]
    if not results["rows"]:
        raise SystemExit(f"nothing in {run_dir} has been evaluated yet: run the demo first")
    queries, memory = results["rows"][0]["num_queries"], results["rows"][0]["num_memory"]
    partial, purity = partial_line(results), purity_line(results)
    written = plot(results, run_dir)  # first, so that results.md shows the plots there are
    text = (f"# BINGO demo on Fashion-MNIST ({cfg['name']} configuration)\n\n"
            + (f"{partial}\n\n" if partial else "") + f"{table(results)}\n\n"
            "† not above the same network untrained; ‡ not above it untrained with BatchNorm statistics of the "
            "data. One run: [95 % binomial interval]; several seeds: mean ± standard deviation [± one run's interval "
            "half-width].\n\n"
            + "\n".join(f"- {line}" for line in summary(results))
            + f"\n\nTraining images: {cfg['train_per_class'] or 6000} per class at {cfg['image_size']} px. Scored on "
            f"{queries:,} test images against {memory:,} labelled training images: k-NN with 10 neighbours "
            "(majority vote), and the linear probe as an L-BFGS logistic regression on the frozen features "
            f"(`main_lincls.py --protocol=logreg`). {purity + '. ' if purity else ''}All stages together: "
            f"{results['total_stage_seconds'] / 60:.1f} min.\n\n"
            + "".join(f"![{PLOT_CAPTIONS[p.name]}]({p.name})\n" for p in written)
            + f"\n## Where the time went\n\n{time_table(results)}\n")
    (run_dir / "results.md").write_text(text)
    atomic_json(results, run_dir / "results.json")
    print("\n" + (f"{partial}\n" if partial else "") + table(results) + "\n\n" + "\n".join(summary(results))
          + f"\n{purity}"
          + f"\n\nwritten: {run_dir / 'results.md'}, results.json, {', '.join(p.name for p in written)}", flush=True)
