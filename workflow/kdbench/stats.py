"""Statistics over item-level scores: arm means with CIs, paired arm comparisons, the headline.

Input is one tidy frame of item scores with columns ``arm, seed, task, doc_id, value``
(value = the metric for one item, 0/1 for accuracy). Every (arm, seed) must have scored
the same items of a task, which is what makes the comparisons paired.

Uncertainty comes from two sources: which training seeds we happened to run and which
items the suite happened to contain. The bootstrap resamples both: seeds with
replacement (one draw shared by all tasks, since a seed is one trained model), then the
items of each task. Items are crossed with seeds (every seed answers the same items), so
one item draw applies to all drawn seeds. Means, differences and CIs are in points
(100 x metric).
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
import pandas as pd

from kdbench import KdbenchError
from kdbench.config import StatsConfig

OVERALL = "overall"  # the unweighted mean over tasks, per seed
TASK_PREFIX = "kdb_"  # rendered suite tasks; shown by family name



def task_label(task: str) -> str:
    """Display name: suite tasks by family ("kdb_syntax" -> "syntax"), lm-eval tasks as named."""
    return task.removeprefix(TASK_PREFIX)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (controls the family-wise error rate)."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    scaled = (len(p) - np.arange(len(p))) * p[order]
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted


def arm_means(items: pd.DataFrame, arms: Sequence[str], cfg: StatsConfig) -> pd.DataFrame:
    """Mean over seeds and items per (arm, task) and overall, with a crossed seed x item bootstrap CI.

    Columns: arm, task, mean, ci_lo, ci_hi, n_seeds, n_items (points; task "overall" last).
    """
    tasks = list(items["task"].unique())
    rows = []
    for arm in arms:
        seeds, mats = _matrices(items, arm, tasks)
        boot = _bootstrap(mats, cfg.n_boot, _rng(cfg, arm))
        means = [m.mean() for m in mats]
        for t, task in enumerate(tasks):
            rows.append([arm, task, 100 * means[t], *_interval(boot[:, t], cfg.ci), len(seeds), mats[t].shape[1]])
        rows.append([arm, OVERALL, 100 * np.mean(means), *_interval(boot.mean(axis=1), cfg.ci), len(seeds),
                     sum(m.shape[1] for m in mats)])
    return pd.DataFrame(rows, columns=["arm", "task", "mean", "ci_lo", "ci_hi", "n_seeds", "n_items"])


def paired_comparisons(items: pd.DataFrame, arms: Sequence[str], cfg: StatsConfig) -> pd.DataFrame:
    """Each arm minus the reference arm, paired over (seed, item), per task and overall.

    - diff and CI: the crossed seed x item bootstrap of the paired differences, on the
      seeds both arms share.
    - p: two-sided bootstrap p-value from the same draws, 2 x the smaller share of draws
      on either side of 0 (+1 smoothing, capped at 1). It is the test the percentile CI
      inverts (p < 1 - ci goes with a CI excluding 0, up to the resampling's
      granularity), and it carries seed-to-seed as well as item variation. With few seeds it is somewhat optimistic: resampling
      n seeds shrinks their variance by (n - 1) / n.
    - p_holm: Holm's correction over the tasks and the overall test of that arm.
    - cohen_h: Cohen's h between the two mean accuracies (2 asin sqrt p1 - 2 asin sqrt p2).

    Arms sharing no seed with the reference, and the reference itself, are left out.
    """
    columns = ["arm", "reference", "task", "diff", "ci_lo", "ci_hi", "p", "p_holm", "cohen_h", "n_seeds", "n_items"]
    ref = cfg.reference_arm
    if ref not in set(items["arm"]):
        return pd.DataFrame([], columns=columns)
    tasks = list(items["task"].unique())
    ref_seeds, ref_mats = _matrices(items, ref, tasks)
    rows = []
    for arm in arms:
        if arm == ref:
            continue
        seeds, mats = _matrices(items, arm, tasks)
        common = sorted(set(seeds) & set(ref_seeds))
        if not common:
            continue
        a = [m[[seeds.index(s) for s in common]] for m in mats]
        r = [m[[ref_seeds.index(s) for s in common]] for m in ref_mats]
        diffs = [x - y for x, y in zip(a, r)]
        boot = _bootstrap(diffs, cfg.n_boot, _rng(cfg, arm, ref))
        draws = [boot[:, t] for t in range(len(tasks))] + [boot.mean(axis=1)]
        p = [_bootstrap_p(d) for d in draws]
        estimates = [d.mean() for d in diffs]
        estimates.append(np.mean(estimates))
        h = [_cohen_h(x.mean(), y.mean()) for x, y in zip(a, r)]
        h.append(_cohen_h(np.mean([x.mean() for x in a]), np.mean([y.mean() for y in r])))
        n_items = [d.shape[1] for d in diffs] + [sum(d.shape[1] for d in diffs)]
        for task, est, draw, pv, ph, hv, n in zip(tasks + [OVERALL], estimates, draws, p, holm(p), h, n_items):
            rows.append([arm, ref, task, 100 * float(est), *_interval(draw, cfg.ci), pv, ph, hv, len(common), n])
    return pd.DataFrame(rows, columns=columns)


def headline(comparisons: pd.DataFrame, cfg: StatsConfig) -> str:
    """One sentence answering: does Experiment 2 beat Experiment 1 on the unseen tasks?"""
    exp1, exp2 = f"Experiment 1 ({cfg.reference_arm})", f"Experiment 2 ({cfg.candidate_arm})"
    rows = comparisons[(comparisons["arm"] == cfg.candidate_arm) & (comparisons["reference"] == cfg.reference_arm)]
    if rows.empty:
        return (f"{exp2} cannot be compared with {exp1}: no evaluated seeds of arm "
                f"{cfg.candidate_arm!r} paired with arm {cfg.reference_arm!r}.")
    alpha = 1.0 - cfg.ci
    overall = rows[rows["task"] == OVERALL].iloc[0]
    per_task = rows[rows["task"] != OVERALL]
    significant = overall["p_holm"] < alpha
    verdict = ("beats" if overall["diff"] > 0 else "is worse than") if significant else "does not significantly differ from"
    better = per_task[(per_task["p_holm"] < alpha) & (per_task["diff"] > 0)]
    worse = per_task[(per_task["p_holm"] < alpha) & (per_task["diff"] < 0)]
    return (
        f"{exp2} {verdict} {exp1} on the unseen tasks: {overall['diff']:+.1f} points of {cfg.metric} overall "
        f"({cfg.ci:.0%} CI [{overall['ci_lo']:+.1f}, {overall['ci_hi']:+.1f}], Holm-adjusted {_fmt_p(overall['p_holm'])}; "
        f"{int(overall['n_seeds'])} paired seeds, {len(per_task)} task families); "
        f"significantly better on {_list_tasks(better)}; significantly worse on {_list_tasks(worse)} "
        f"(Holm-adjusted p < {alpha:.2g})."
    )


def _matrices(items: pd.DataFrame, arm: str, tasks: list[str]) -> tuple[list, list[np.ndarray]]:
    """(seeds, one seeds x items matrix per task, items sorted by doc_id)."""
    sub = items[items["arm"] == arm]
    seeds = sorted(sub["seed"].unique())
    mats = []
    for task in tasks:
        grid = sub[sub["task"] == task].pivot(index="seed", columns="doc_id", values="value")
        grid = grid.reindex(index=seeds).sort_index(axis=1)
        if grid.empty or grid.isna().to_numpy().any():
            raise KdbenchError(f"statistics: arm {arm!r} lacks items of task {task!r} for some seed")
        mats.append(grid.to_numpy(dtype=float))
    return seeds, mats


def _rng(cfg: StatsConfig, *names: str) -> np.random.Generator:
    """A generator per arm (pair), so one arm's numbers do not depend on which other arms exist."""
    return np.random.default_rng([cfg.seed, *(zlib.crc32(n.encode()) for n in names)])


def _bootstrap(mats: list[np.ndarray], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_tasks) resampled task means: seeds drawn once per resample, items per task."""
    n_seeds = mats[0].shape[0]
    seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_boot)
    out = np.empty((n_boot, len(mats)))
    for t, m in enumerate(mats):
        n_items = m.shape[1]
        item_counts = rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=n_boot)
        out[:, t] = ((seed_counts @ m) * item_counts).sum(axis=1) / (n_seeds * n_items)
    return out


def _interval(draws: np.ndarray, ci: float) -> tuple[float, float]:
    """Percentile bootstrap interval, in points."""
    lo, hi = np.quantile(draws, [(1 - ci) / 2, (1 + ci) / 2])
    return 100 * float(lo), 100 * float(hi)


def _bootstrap_p(draws: np.ndarray) -> float:
    """Two-sided p of "difference = 0" from bootstrap draws of the difference."""
    below, above = (np.sum(draws <= 0) + 1) / (len(draws) + 1), (np.sum(draws >= 0) + 1) / (len(draws) + 1)
    return float(min(1.0, 2 * min(below, above)))


def _cohen_h(p1: float, p2: float) -> float:
    p1, p2 = np.clip([p1, p2], 0.0, 1.0)
    return float(2 * np.arcsin(np.sqrt(p1)) - 2 * np.arcsin(np.sqrt(p2)))


def _fmt_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _list_tasks(rows: pd.DataFrame) -> str:
    if rows.empty:
        return "none"
    return ", ".join(f"{task_label(r.task)} ({r.diff:+.1f}, {_fmt_p(r.p_holm)})" for r in rows.itertuples())
