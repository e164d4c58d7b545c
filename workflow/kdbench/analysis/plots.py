"""Report figures: accuracy per task by arm, paired differences vs the reference, training curves.

The CIs drawn are the ones computed in `kdbench.analysis.stats` (crossed seed x item intervals), not
seaborn's own, so figures and tables always agree. Each figure is saved as PNG (for the
Snakemake report) and PDF (for papers), without timestamps so reruns give equal files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless; must precede pyplot
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from kdbench.io import atomic_path  # noqa: E402
from kdbench.evaluate import task_label  # noqa: E402
from kdbench.analysis.suite import is_group  # noqa: E402

FIXED_COLORS = {"teacher": "black", "init": "0.55"}
_CURVE_X = "tokens"


def palette(arms: Sequence[str]) -> dict[str, tuple]:
    """One colour per arm, the same in every figure; teacher black, init grey."""
    students = [a for a in arms if a not in FIXED_COLORS]
    colors = dict(zip(students, sns.color_palette("colorblind", max(len(students), 1))))
    return {a: FIXED_COLORS.get(a, colors.get(a)) for a in arms}


def accuracy_figure(means: pd.DataFrame, chance: Mapping[str, float], arms: Sequence[str], metric: str,
                    out_base: Path, label: Callable[[str], str] = task_label) -> None:
    """Mean and CI per task (and overall, per kind) for every arm; teacher as a solid line, chance (a fraction) dashed.

    `label` names a task on the axis (`Suite.label` marks the dead ones).
    """
    tasks = list(dict.fromkeys(means["task"]))
    colors = palette(arms)
    dodged = [a for a in arms if a != "teacher"]
    width = 0.8 / max(len(dodged), 1)
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(tasks) + 0.15 * len(tasks) * len(dodged), 4.2))
        x = np.arange(len(tasks))
        for i, arm in enumerate(dodged):
            rows = means[means["arm"] == arm].set_index("task").reindex(tasks)
            pos = x - 0.4 + width * (i + 0.5)
            ax.errorbar(pos, rows["mean"], yerr=[rows["mean"] - rows["ci_lo"], rows["ci_hi"] - rows["mean"]],
                        fmt="o", color=colors[arm], capsize=3, markersize=5, label=arm)
        if "teacher" in set(means["arm"]):
            rows = means[means["arm"] == "teacher"].set_index("task").reindex(tasks)
            ax.hlines(rows["mean"], x - 0.45, x + 0.45, colors="black", linewidth=1.6, label="teacher")
        ax.hlines([100 * chance[t] for t in tasks], x - 0.45, x + 0.45, colors="0.3", linestyles="--", label="chance")
        ax.set_xticks(x, [label(t) for t in tasks], rotation=30, ha="right")
        ax.axvline(_n_tasks(tasks) - 0.5, color="0.75", linewidth=0.8)  # separates "overall" from the tasks
        ax.set_ylabel(f"{metric} (points)")
        ax.set_ylim(0, 100)
        ax.set_title("Held-out accuracy by arm (mean over seeds, 95% CI)")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        _save(fig, out_base)


def paired_figure(comparisons: pd.DataFrame, arms: Sequence[str], reference: str, alpha: float,
                  out_base: Path, label: Callable[[str], str] = task_label) -> None:
    """Forest plot of each arm minus the reference, per task and overall; filled = significant.

    Significance is read from p_adj: the primary test's own p, Holm over the secondary family for the rest.
    """
    colors = palette(arms)
    with sns.axes_style("whitegrid"):
        if comparisons.empty:
            fig, ax = plt.subplots(figsize=(6, 2))
            ax.text(0.5, 0.5, f"No arm could be paired with the reference arm {reference!r}.",
                    ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            _save(fig, out_base)
            return
        tasks = list(dict.fromkeys(comparisons["task"]))
        shown = [a for a in arms if a in set(comparisons["arm"])]
        step = 0.8 / len(shown)
        fig, ax = plt.subplots(figsize=(7, 1.2 + 0.2 * len(tasks) * max(len(shown), 2)))
        y = np.arange(len(tasks))[::-1]
        for i, arm in enumerate(shown):
            rows = comparisons[comparisons["arm"] == arm].set_index("task").reindex(tasks)
            pos = y + 0.4 - step * (i + 0.5)
            sig = (rows["p_adj"] < alpha).to_numpy()
            ax.hlines(pos, rows["ci_lo"], rows["ci_hi"], color=colors[arm], linewidth=1.6)
            ax.scatter(rows["diff"][sig], pos[sig], color=colors[arm], zorder=3)
            ax.scatter(rows["diff"][~sig], pos[~sig], facecolors="white", edgecolors=colors[arm], zorder=3)
        ax.axvline(0, color="black", linewidth=0.9)
        ax.axhline(len(tasks) - _n_tasks(tasks) - 0.5, color="0.75", linewidth=0.8)  # separates "overall" from the tasks
        ax.set_yticks(y, [label(t) for t in tasks])
        ax.set_xlabel(f"difference vs {reference} (points, 95% CI); filled: p < {alpha:.2g} (primary raw, secondary Holm)")
        handles = [Line2D([], [], color=colors[arm], marker="o", label=arm) for arm in shown]  # one per arm
        ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        _save(fig, out_base)


def _n_tasks(names: Sequence[str]) -> int:
    """How many of `names` are tasks (the rest, last, are "overall" and the per-kind means)."""
    return sum(not is_group(n) for n in names)


def curves_figure(curves: pd.DataFrame, arms: Sequence[str], out_base: Path) -> None:
    """Training loss terms against tokens seen, mean over seeds per arm; one panel per loss column."""
    columns = ["loss", *sorted(c for c in curves if c.startswith("loss_")), *(["val_loss"] if "val_loss" in curves else [])]
    mean = curves.groupby(["arm", "step"], sort=True)[[_CURVE_X, *columns]].mean().reset_index()
    colors = palette(arms)
    order = [a for a in arms if a in set(mean["arm"])]
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns), 3.4), squeeze=False)
        for ax, col in zip(axes[0], columns):
            data = mean.dropna(subset=[col])
            sns.lineplot(data=data, x=_CURVE_X, y=col, hue="arm", hue_order=[a for a in order if a in set(data["arm"])],
                         palette=colors, estimator=None, errorbar=None, ax=ax, linewidth=1.2)
            ax.set_title(col)
            ax.set_ylabel("")
            ax.set_xlabel("tokens seen")
            if ax is not axes[0][0] and ax.get_legend() is not None:
                ax.get_legend().remove()
        fig.suptitle("Training curves (mean over seeds)")
        _save(fig, out_base)


def cka_figure(grids: Mapping[str, np.ndarray], mapped: Mapping[str, Sequence[tuple[int, int]]], out_base: Path) -> None:
    """One heat map per arm: linear CKA of student layer (rows) x teacher layer (columns), mean over seeds.

    Mapped pairs (the arm's own layer map, or the candidate's for arms without one) are outlined.
    """
    arms = list(grids)
    cols = min(4, max(len(arms), 1))
    rows = -(-len(arms) // cols)
    with sns.axes_style("white"):
        fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols, 2.5 * rows), squeeze=False)
        for ax in axes.flat[len(arms):]:
            ax.set_axis_off()
        for ax, arm in zip(axes.flat, arms):
            grid = grids[arm]
            sns.heatmap(grid, vmin=0, vmax=1, cmap="viridis", annot=grid.size <= 40, fmt=".2f",
                        annot_kws={"fontsize": 7}, cbar=False, square=True, ax=ax)
            for s, t in mapped.get(arm, ()):
                ax.add_patch(matplotlib.patches.Rectangle((t, s), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
            ax.set_title(arm, fontsize="small")
            ax.set_xlabel("teacher layer")
            ax.set_ylabel("student layer")
        fig.suptitle("Linear CKA with the teacher on validation text (mean over seeds; red: mapped pairs)")
        _save(fig, out_base)


def fidelity_figure(points: pd.DataFrame, arms: Sequence[str], out_base: Path) -> None:
    """Per arm and seed: top-1 agreement with the teacher (x) against held-out accuracy (y), both overall."""
    colors = palette(arms)
    order = [a for a in arms if a in set(points["arm"])]
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(7.0, 4.0))
        sns.scatterplot(data=points, x="agreement", y="accuracy", hue="arm", hue_order=order, palette=colors,
                        s=45, ax=ax)
        ax.set_xlabel("top-1 agreement with the teacher (points)")
        ax.set_ylabel("held-out accuracy (points)")
        fig.suptitle("Fidelity vs generalisation (one point per arm and seed)")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        _save(fig, out_base)


def budget_figure(points: pd.DataFrame, arms: Sequence[str], out_base: Path, lines: dict[str, float] | None = None,
                  title: str = "Budget curves: accuracy against student tokens and training FLOPs") -> None:
    """Overall accuracy with CI per arm against student tokens and against training FLOPs (log scales);
    `lines`: labelled horizontal levels (the teacher, chance)."""
    colors = palette(arms)
    panels = [("budget", "student tokens")]
    if np.isfinite(points["flops"]).any():  # train.json records FLOPs; without them, tokens alone
        panels.append(("flops", "training FLOPs (estimate)"))
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), sharey=True, squeeze=False)
        axes = axes[0]
        for ax, (x, label) in zip(axes, panels):
            for arm in [a for a in arms if a in set(points["arm"])]:
                rows = points[points["arm"] == arm].sort_values(x)
                ax.errorbar(rows[x], rows["mean"], yerr=[rows["mean"] - rows["ci_lo"], rows["ci_hi"] - rows["mean"]],
                            marker="o", capsize=3, color=colors[arm], label=arm)
            for (name, level), style in zip((lines or {}).items(), ("--", ":")):
                ax.axhline(level, color="0.3", linestyle=style, linewidth=1, label=name)
            ax.set_xscale("log")
            ax.set_xlabel(label)
        axes[0].set_ylabel("held-out accuracy, overall (points, 95% CI)")
        axes[-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.suptitle(title)
        _save(fig, out_base)


def _save(fig: plt.Figure, out_base: Path) -> None:
    fig.tight_layout()
    for ext, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        with atomic_path(Path(f"{out_base}.{ext}")) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, metadata=meta)
    plt.close(fig)
