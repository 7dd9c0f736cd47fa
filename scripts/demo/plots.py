"""The demo's plots: k-NN learning curves against the floors, accuracy bars, loss curves, and (with several kinds of
bag) accuracy against bag purity and each kind of bag's students seed by seed."""
from __future__ import annotations

import statistics
from pathlib import Path


def mean_curve(curves: list[list]) -> tuple[list, list, list]:
    """x, mean and standard deviation of curves given as [[x, y], ...] (points present in every curve)."""
    xs = sorted(set.intersection(*(set(x for x, _ in c) for c in curves)))
    ys = [[dict((x, y) for x, y in c)[x] for c in curves] for x in xs]
    return xs, [statistics.mean(v) for v in ys], [statistics.stdev(v) if len(v) > 1 else 0.0 for v in ys]


def error(row: dict, key: str) -> float:
    """The bar's error: the std over seeds, or for one run its interval's half-width."""
    if row["seeds"] > 1:
        return row[f"{key}_std"]
    return row.get(f"{key}_half", 0.0)


def plot(results: dict, run_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = results["rows"]
    floors_ = [r for r in rows if r["kind"] == "floor"]
    trained = [r for r in rows if r["kind"] != "floor"]
    written = []

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, kind in zip(axes, ("teacher", "student")):
        for r in (r for r in trained if r["kind"] == kind):
            curves = [r["knn_curve"]] if kind == "teacher" else [run["knn_curve"] for run in r["runs"]]
            if not all(curves):
                continue
            xs, mean, std = mean_curve(curves)
            ax.plot(xs, mean, marker="o", label=r["label"])
            ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_title(f"{kind}: k-NN monitor (k = 10) on its validation split")
        if ax.get_legend_handles_labels()[0]:  # a stopped run may have no student yet
            ax.legend(fontsize=7)
    axes[0].set_ylabel("10-NN top-1 (%)")
    fig.tight_layout()
    written.append(run_dir / "learning_curves.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(9, 0.9 * len(rows)), 4))
    names = [r["label"].replace(", ", "\n").replace(" (", "\n(") for r in rows]
    x = range(len(rows))
    handles = []
    for offset, key, label, colour in ((-0.2, "knn10_top1", "10-NN top-1", "tab:blue"),
                                       (0.2, "linear_top1", "linear top-1", "tab:orange")):
        bars = ax.bar([i + offset for i in x], [r[key] for r in rows], width=0.4, color=colour,
                      yerr=[error(r, key) for r in rows], capsize=3, edgecolor="black", linewidth=0.3)
        for bar, r in zip(bars, rows):
            if r["kind"] == "floor":
                bar.set_hatch("//")
        handles.append(Patch(facecolor=colour, edgecolor="black", linewidth=0.3, label=label))
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="floor"))
    ax.set_xticks(list(x), names, fontsize=6)
    ax.set_ylabel("accuracy (%)")
    low = min(min(r["knn10_top1"], r["linear_top1"]) for r in rows)
    ax.set_ylim(max(0, low - 15), 100)
    ax.legend(handles=handles, fontsize=8)
    ax.set_title("Fashion-MNIST test accuracy (hatched: floors; error bars: std over seeds, or one run's 95 % "
                 "interval)", fontsize=9)
    fig.tight_layout()
    written.append(run_dir / "accuracy.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in trained:
        curves = [r["loss_curve"]] if r["kind"] == "teacher" else [run["loss_curve"] for run in r["runs"]]
        xs, mean, _ = mean_curve([list(enumerate(c)) for c in curves])
        ax.plot(xs, mean, marker="o", label=r["label"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (epoch mean)")
    ax.set_title("Training loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(run_dir / "loss_curves.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    bingos = sorted((r for r in trained if r.get("bagging")), key=lambda r: r["bag_purity"] or 0)
    if len(bingos) > 1:
        written.append(run_dir / "purity.png")
        purity_plot(bingos, [r for r in trained if r["kind"] == "student" and not r.get("bagging")],
                    [r for r in floors_ if r["model"] == "pixels"], written[-1], plt)
        written.append(run_dir / "bags.png")
        bags_plot(bingos, [r for r in rows if r["kind"] != "student" or not r.get("bagging")], written[-1], plt)
    return written


def bags_plot(bingos: list[dict], others: list[dict], path: Path, plt) -> None:
    """Each kind of bag's BINGO students, one row each (purest at the top): every seed a dot, the mean a bar with one
    run's 95 % interval around it, and the other rows (baselines, teacher, floors) as vertical lines. Kinds of bag of
    about the same purity, which the purity plot draws on top of each other, stand apart here."""
    from scripts.demo.configs import BAG_LABELS

    fig, axes = plt.subplots(1, 2, figsize=(11, 1.5 + 0.5 * len(bingos)), sharey=True)
    names = [f"{BAG_LABELS.get(r['bagging'], r['bagging'])} ({r['bag_purity']:.1f} %)" for r in bingos]
    for ax, key, title in zip(axes, ("knn10_top1", "linear_top1"), ("10-NN top-1", "linear top-1")):
        for y, r in enumerate(bingos):
            ax.errorbar(r[key], y, xerr=r.get(f"{key}_half", 0.0), fmt="D", color="tab:blue", capsize=4,
                        label="mean, one run's 95 % interval" if y == 0 else None)
            seeds = [run[key] for run in r["runs"]]
            ax.plot(seeds, [y] * len(seeds), "o", color="tab:orange", alpha=0.8, markersize=5,
                    label="each seed" if y == 0 else None)
        for r, style in zip(others, ("--", "-.", ":", (0, (1, 3)), (0, (5, 2)), (0, (3, 1, 1, 1)))):
            ax.axvline(r[key], color="gray", linestyle=style, linewidth=1, label=r["label"])
        ax.set_xlabel(f"{title} (%)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(bingos)), names, fontsize=7)  # the axis is shared: once
    axes[0].set_ylim(-0.5, len(bingos) - 0.5)
    axes[1].legend(fontsize=6, loc="best")
    fig.suptitle("BINGO students by kind of bag (bag purity in brackets)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def purity_plot(bingos: list[dict], others: list[dict], floors_: list[dict], path: Path, plt) -> None:
    """Each BINGO student's accuracy against its bags' purity (mean ± std over seeds), the bag-free students and the
    raw-pixel floor as horizontal lines."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    titles = ("10-NN top-1", "linear top-1 (logistic regression)")
    for ax, key, title in zip(axes, ("knn10_top1", "linear_top1"), titles):
        xs = [r["bag_purity"] for r in bingos]
        ax.errorbar(xs, [r[key] for r in bingos], yerr=[error(r, key) for r in bingos], marker="o", capsize=4,
                    label="BINGO")
        for r in bingos:
            ax.annotate(r["bagging"], (r["bag_purity"], r[key]), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
        for r, style in zip(others + floors_, ("--", "-.", ":", (0, (1, 3)))):
            ax.axhline(r[key], color="gray", linestyle=style, linewidth=1, label=r["label"])
        ax.set_xlabel("bag purity (% of bag members in the image's class)")
        ax.set_ylabel(f"{title} (%)")
        ax.legend(fontsize=7)
    fig.suptitle("BINGO students by the purity of their bags (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
