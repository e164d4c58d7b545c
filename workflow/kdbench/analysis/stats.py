"""Statistics over item-level scores: arm means with CIs, paired arm comparisons, power, the headline.

Input is one tidy frame of item scores with columns ``arm, seed, task, doc_id, value``
(value = the metric for one item, 0/1 for accuracy). Every (arm, seed) must have scored
the same items of a task, which is what makes the comparisons paired.

The design is crossed: every seed (one trained model) answers every item. A mean over
the seeds x items matrix then varies with which seeds were trained, which items the
suite drew, and their interaction. `estimate` takes the two-way ANOVA (without
replication) of that matrix, splits the variance of the grand mean into a seed part and
item parts, and widens each by its own t quantile (`Estimate`). A simulation
(tests/test_stats_coverage.py) shows these intervals cover at 3 and 10 seeds; the seed
bootstrap used before did not at 3 seeds. The p-values invert the same intervals and
have no resampling floor; below 0.001 they print as a bound.

"Overall" is the unweighted mean over tasks (the dead ones left out, `kdbench.analysis.suite`),
and with tasks of several kinds each kind has its own such mean. A seed is one model for all tasks, so its
effect is shared across tasks: the seed term comes from the spread of the per-seed
overall means, while items (different per task) add independent terms per task.

Multiplicity is declared: candidate vs reference overall is the one primary test,
reported unadjusted; every other comparison is in one secondary family under Holm.
Means, differences, CIs and MDEs are in points (100 x metric).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps

from kdbench import KdbenchError
from kdbench.schema.config import StatsConfig
from kdbench.evaluate import task_label
from kdbench.analysis.suite import OVERALL, Suite, is_group, teacher_status

PRIMARY, SECONDARY = "primary", "secondary"
UNTESTED = "dead"  # a dead task's row: reported, in no test family
COMPARISON_COLUMNS = ["arm", "reference", "task", "role", "diff", "ci_lo", "ci_hi", "half_width", "se", "mde",
                      "p", "p_adj", "p_shown", "cohen_h", "n_seeds", "n_items"]


@dataclass(frozen=True)
class Estimate:
    """A mean over a crossed seeds x items design (fractions) and its variance, split into parts.

    Each part is (variance, df): the seed part (df seeds - 1) and one item part per task
    (df items - 1). A width at quantile q is sqrt(sum q(df)^2 x variance) over the parts:
    each part's own t quantile, combined in quadrature. With one dominant part this is
    that part's t interval; in between it errs wide. Satterthwaite's pooled df, tried
    first, under-covered at 3 seeds (its df estimate is noisy and low variance estimates
    come with high df); see tests/test_stats_coverage.py. Arrays, so that many designs
    (e.g. simulated replicates) are handled at once.
    """

    mean: np.ndarray
    parts: tuple[tuple[np.ndarray, float], ...]

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(sum(v for v, _ in self.parts))

    def half_width(self, ci: float) -> np.ndarray:
        """Half-width of the two-sided interval at level `ci`."""
        return self._width(lambda df: sps.t.ppf((1 + ci) / 2, df))

    def mde(self, alpha: float, power: float) -> np.ndarray:
        """Minimal detectable difference: per part, the noncentrality at which a t test on its df has `power`.

        The textbook t_{1-alpha/2} + t_{power} is too small at 2 df (63% power instead of 80%).
        """
        return self._width(lambda df: _noncentrality(df, alpha, power))

    def p(self) -> np.ndarray:
        """Two-sided p of "true mean = 0": the level at which the interval's end touches 0 (the test it inverts)."""
        target = np.abs(self.mean)
        lo, hi = np.full(np.shape(target), -30.0), np.zeros(np.shape(target))  # log10 p brackets
        for _ in range(50):
            mid = (lo + hi) / 2
            inside = self._width(lambda df: sps.t.isf(10**mid / 2, df)) >= target
            lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid)
        return np.where(target > 0, 10**hi, 1.0)

    def _width(self, quantile) -> np.ndarray:
        return np.sqrt(sum(np.where(v > 0, quantile(df) ** 2 * v, 0.0) for v, df in self.parts))


@dataclass(frozen=True)
class MeanSquares:
    """The two-way ANOVA mean squares behind an `Estimate` of a mean over tasks (one task or all).

    `seed` is the sample variance of the per-seed means over the tasks (None with one seed);
    `item` and `resid` hold one value per task, each task with `items` items and weight 1/T.
    """

    n_seeds: int
    items: tuple[int, ...]
    seed: np.ndarray | None
    item: tuple[np.ndarray, ...]
    resid: tuple[np.ndarray, ...]

    def estimate(self, mean: np.ndarray) -> Estimate:
        """Var(mean) = seed/S + sum_t w^2 max(MS_item - MS_resid, 0) / (S I_t), an unbiased split up to truncation.

        A seed is one model for all tasks, so the seed part comes from the spread of the
        per-seed means and already holds the residual's share (sigma_e^2 / S I); each task
        adds its item part sigma_b^2 / I (truncated at 0). With one seed, nothing separates
        seed from item: the item part is the whole item-to-item variance, and the interval
        holds for that one trained model.
        """
        s, w2 = self.n_seeds, 1.0 / len(self.items) ** 2
        parts = [] if self.seed is None else [(np.asarray(self.seed / s), s - 1)]
        parts += [(np.maximum(item - resid, 0.0) * w2 / (s * n), n - 1)
                  for n, item, resid in zip(self.items, self.item, self.resid)]
        return Estimate(np.asarray(mean), tuple(parts))


def mean_squares(mats: Sequence[np.ndarray]) -> tuple[np.ndarray, MeanSquares]:
    """(unweighted mean over tasks, its mean squares) for seeds x items matrices, one per task.

    Matrices may carry leading batch axes (..., seeds, items); every task has the same seeds.
    """
    n_seeds = mats[0].shape[-2]
    seed_means = sum(m.mean(axis=-1) for m in mats) / len(mats)
    item, resid = [], []
    for m in mats:
        item_means = m.mean(axis=-2)
        item.append(n_seeds * item_means.var(axis=-1, ddof=1))
        if n_seeds > 1:
            r = m - m.mean(axis=-1, keepdims=True) - item_means[..., None, :] + m.mean(axis=(-2, -1))[..., None, None]
            resid.append((r**2).sum(axis=(-2, -1)) / ((n_seeds - 1) * (m.shape[-1] - 1)))
        else:
            resid.append(np.zeros_like(item[-1]))
    seed = seed_means.var(axis=-1, ddof=1) if n_seeds > 1 else None
    return seed_means.mean(axis=-1), MeanSquares(n_seeds, tuple(m.shape[-1] for m in mats), seed, tuple(item), tuple(resid))


def estimate(mats: Sequence[np.ndarray]) -> Estimate:
    """The unweighted mean over tasks of seeds x items matrices, with its crossed-design variance."""
    mean, ms = mean_squares(mats)
    return ms.estimate(mean)


def format_p(p: float) -> str:
    """The one way a p-value is printed: below 0.001 as a bound, since smaller values are not meaningful here."""
    if not np.isfinite(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (controls the family-wise error rate)."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    scaled = (len(p) - np.arange(len(p))) * p[order]
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted


def arm_means(items: pd.DataFrame, arms: Sequence[str], cfg: StatsConfig, suite: Suite | None = None) -> pd.DataFrame:
    """Mean over seeds and items per (arm, task), overall and per kind (`suite`), with a crossed seed x item t interval.

    Intervals are clipped to [0, 100] points: with few seeds a t interval can reach past the
    bounds of an accuracy.

    Columns: arm, task, mean, ci_lo, ci_hi, n_seeds, n_items (points; the tasks, then "overall", then the kinds).
    """
    tasks = list(items["task"].unique())
    rows = []
    for arm in arms:
        seeds, mats = _matrices(items, arm, tasks)
        for task, group in _groups(tasks, mats, suite):
            est = estimate(group)
            hw = est.half_width(cfg.ci)
            lo, hi = np.clip([est.mean - hw, est.mean + hw], 0.0, 1.0)  # an accuracy lies in [0, 1]
            rows.append([arm, task, 100 * float(est.mean), 100 * float(lo), 100 * float(hi),
                         len(seeds), sum(m.shape[1] for m in group)])
    return pd.DataFrame(rows, columns=["arm", "task", "mean", "ci_lo", "ci_hi", "n_seeds", "n_items"])


def task_suite(items: pd.DataFrame, chance: Mapping[str, float], cfg: StatsConfig) -> Suite:
    """The tasks' kinds and the teacher's status on each (from its interval; all alive without a teacher)."""
    tasks = list(items["task"].unique())
    suite = Suite.of(tasks, cfg)
    if "teacher" not in set(items["arm"]):
        return suite
    return Suite.of(tasks, cfg, teacher_status(arm_means(items, ["teacher"], cfg, suite), chance))


def paired_comparisons(items: pd.DataFrame, arms: Sequence[str], cfg: StatsConfig,
                       suite: Suite | None = None) -> pd.DataFrame:
    """Each arm minus the reference arm, paired over (seed, item), per task, overall and per kind (`suite`).

    - diff, ci_lo/ci_hi, half_width, se: the crossed-design interval of the mean paired difference
      (seeds both arms share, paired by seed number).
    - mde: the true difference the test finds with probability `cfg.power` at alpha = 1 - ci.
    - p: two-sided test of "no difference" that the interval inverts. role: "primary" for candidate vs reference overall,
      "secondary" for every other row, "dead" for a dead task's own rows (no test: p_adj NaN). p_adj: p
      for the primary test; Holm over all secondary rows together for the rest. p_shown: p_adj as printed.
    - cohen_h: Cohen's h between the two mean accuracies (2 asin sqrt p1 - 2 asin sqrt p2).

    Arms sharing no seed with the reference, and the reference itself, are left out.
    """
    ref = cfg.reference_arm
    if ref not in set(items["arm"]):
        return pd.DataFrame([], columns=COMPARISON_COLUMNS)
    tasks = list(items["task"].unique())
    alpha = 1.0 - cfg.ci
    rows = []
    for arm in arms:
        if arm == ref:
            continue
        common, a, r = _aligned(items, arm, ref, tasks)
        if not common:
            continue
        for (task, ga), (_, gr) in zip(_groups(tasks, a, suite), _groups(tasks, r, suite)):
            est = estimate([x - y for x, y in zip(ga, gr)])
            hw = float(est.half_width(cfg.ci))
            d = float(est.mean)
            role = (PRIMARY if (arm, task) == (cfg.candidate_arm, OVERALL)
                    else SECONDARY if suite is None or suite.tested(task) else UNTESTED)
            rows.append([arm, ref, task, role, 100 * d, 100 * (d - hw), 100 * (d + hw), 100 * hw, 100 * float(est.se),
                         100 * float(est.mde(alpha, cfg.power)), float(est.p()),
                         _cohen_h(np.mean([x.mean() for x in ga]), np.mean([y.mean() for y in gr])),
                         len(common), sum(x.shape[1] for x in ga)])
    frame = pd.DataFrame(rows, columns=[c for c in COMPARISON_COLUMNS if c not in ("p_adj", "p_shown")])
    secondary = frame["role"] == SECONDARY
    frame.insert(frame.columns.get_loc("p") + 1, "p_adj", frame["p"].where(frame["role"] != UNTESTED))
    frame.loc[secondary, "p_adj"] = holm(frame.loc[secondary, "p"])
    shown = frame["p_adj"].map(format_p).where(frame["role"] != UNTESTED, "not tested: teacher at chance")
    frame.insert(frame.columns.get_loc("p_adj") + 1, "p_shown", shown)
    return frame


def headline(comparisons: pd.DataFrame, cfg: StatsConfig, tokens: Mapping[str, float] | None = None,
             lr: Mapping[str, float] | None = None, suite: Suite | None = None,
             schedule: Mapping[str, str] | None = None) -> str:
    """One paragraph answering: does Experiment 2 beat Experiment 1 on the unseen tasks?

    `tokens`, `lr` and `schedule` (per arm, from the students' train.json) state the training conditions
    the answer holds at; absent, they are left out. `suite` adds the answer per task kind and
    names the tasks left out (teacher at chance) or below chance.
    """
    parts = [_headline(comparisons, cfg, tokens, lr, schedule)]
    if suite is not None:
        parts += [kind_sentence(comparisons, cfg), suite.left_out_sentence(), suite.below_sentence()]
    return " ".join(p for p in parts if p)


def kind_sentence(comparisons: pd.DataFrame, cfg: StatsConfig) -> str:
    """"Per task kind (...): knowledge +30.1 [+25.0, +35.2] (p < 0.001); skill ..." ("" with one kind)."""
    rows = comparisons[(comparisons["arm"] == cfg.candidate_arm) & comparisons["task"].str.startswith(f"{OVERALL}: ")]
    if rows.empty:
        return ""
    parts = [f"{r.task.removeprefix(f'{OVERALL}: ')} {r.diff:+.1f} [{r.ci_lo:+.1f}, {r.ci_hi:+.1f}] ({format_p(r.p_adj)})"
             for r in rows.itertuples()]
    return (f"Per task kind ({cfg.candidate_arm} - {cfg.reference_arm}, points, {cfg.ci:.0%} CI, Holm-adjusted "
            f"with the secondary tests): {'; '.join(parts)}.")


BUDGET_COLUMNS = ["budget", "diff", "ci_lo", "ci_hi", "p", "n_seeds", "n_items"]


def budget_differences(items_by_budget: Mapping[int, pd.DataFrame], cfg: StatsConfig) -> pd.DataFrame:
    """Candidate minus reference overall at each student token budget (points, crossed seeds x items CI)."""
    rows = []
    for budget, items in sorted(items_by_budget.items()):
        mats = difference_matrices(items, cfg.candidate_arm, cfg.reference_arm)
        if not mats:
            continue
        est = estimate(mats)
        d, hw = float(est.mean), float(est.half_width(cfg.ci))
        rows.append([int(budget), 100 * d, 100 * (d - hw), 100 * (d + hw), float(est.p()), mats[0].shape[0],
                     sum(m.shape[1] for m in mats)])
    return pd.DataFrame(rows, columns=BUDGET_COLUMNS)


def _headline(comparisons: pd.DataFrame, cfg: StatsConfig, tokens: Mapping[str, float] | None,
              lr: Mapping[str, float] | None, schedule: Mapping[str, str] | None) -> str:
    """The primary test and the significant secondary ones; a "flag" column (`report.flag_comparisons`) on
    the primary row is stated after the primary test."""
    exp1, exp2 = f"Experiment 1 ({cfg.reference_arm})", f"Experiment 2 ({cfg.candidate_arm})"
    primary = comparisons[comparisons["role"] == PRIMARY]
    if primary.empty:
        return (f"{exp2} cannot be compared with {exp1}: no evaluated seeds of arm "
                f"{cfg.candidate_arm!r} paired with arm {cfg.reference_arm!r}.")
    alpha = 1.0 - cfg.ci
    top = primary.iloc[0]
    verdict = ("beats" if top["diff"] > 0 else "is worse than") if top["p"] < alpha else "does not significantly differ from"
    secondary = comparisons[comparisons["role"] == SECONDARY]
    mine = secondary[(secondary["arm"] == cfg.candidate_arm) & (secondary["p_adj"] < alpha) & ~secondary["task"].map(is_group)]
    conditions = "; ".join(c for c in (_conditions("student tokens", tokens, "{:,.0f}"),
                                       _conditions("learning rate", lr, "{:g}"),
                                       _conditions("schedule", schedule, "{}")) if c)
    return (
        f"{exp2} {verdict} {exp1} on the unseen tasks: {top['diff']:+.1f} points of {cfg.metric} overall "
        f"({cfg.ci:.0%} CI [{top['ci_lo']:+.1f}, {top['ci_hi']:+.1f}], {format_p(top['p'])}, the declared primary "
        f"test, unadjusted; {int(top['n_seeds'])} paired seeds, {_n_answered(comparisons)} task families, "
        f"{int(top['n_items'])} items{'; ' + conditions if conditions else ''})"
        f"{'. Flagged, ' + top['flag'] + ': the interval treats seed effects as normal and may not hold' if top.get('flag') else ''}. "
        f"This design detects an overall difference of {top['mde']:.1f} points with {cfg.power:.0%} power "
        f"(two-sided alpha {alpha:.2g}). Secondary tests, Holm-adjusted across all {len(secondary)} of them "
        f"(every arm per task family and kind, the other arms overall): {cfg.candidate_arm} is significantly better on "
        f"{_list_tasks(mine[mine['diff'] > 0])} and significantly worse on {_list_tasks(mine[mine['diff'] < 0])}."
    )


def _n_answered(comparisons: pd.DataFrame) -> int:
    """The number of task families the overall answer averages (dead ones are reported, not answered)."""
    tasks = comparisons[(comparisons["role"] != UNTESTED) & ~comparisons["task"].map(is_group)]
    return tasks["task"].nunique()


def difference_matrices(items: pd.DataFrame, arm: str, ref: str) -> list[np.ndarray]:
    """Per task, the seeds x items matrix of `arm` minus `ref` on the seeds both share (none: empty list)."""
    common, a, r = _aligned(items, arm, ref, list(items["task"].unique()))
    return [x - y for x, y in zip(a, r)] if common else []


def _aligned(items: pd.DataFrame, arm: str, ref: str, tasks: list[str]) -> tuple[list, list[np.ndarray], list[np.ndarray]]:
    """(seeds both arms share, arm's matrices, ref's matrices), rows in the order of those seeds."""
    seeds, mats = _matrices(items, arm, tasks)
    ref_seeds, ref_mats = _matrices(items, ref, tasks)
    common = sorted(set(seeds) & set(ref_seeds))
    return (common, [m[[seeds.index(s) for s in common]] for m in mats],
            [m[[ref_seeds.index(s) for s in common]] for m in ref_mats])


def _groups(tasks: list[str], mats: list[np.ndarray], suite: Suite | None) -> list[tuple[str, list[np.ndarray]]]:
    """Each task alone, then "overall" (all tasks, or the suite's answered ones), then the suite's kinds."""
    if suite is None:
        return [(t, [m]) for t, m in zip(tasks, mats)] + [(OVERALL, mats)]
    by_task = dict(zip(tasks, mats))
    return [(name, [by_task[t] for t in members]) for name, members in suite.groups()]


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


@functools.lru_cache(maxsize=None)
def _noncentrality(df: float, alpha: float, power: float) -> float:
    """The true mean / se at which the two-sided t test at `alpha` on `df` rejects with probability `power`."""
    crit = sps.t.isf(alpha / 2, df)

    def shortfall(delta: float) -> float:
        far = np.nan_to_num(sps.nct.cdf(-crit, df, delta))  # the wrong-sign tail; scipy gives NaN where it is ~0
        return sps.nct.sf(crit, df, delta) + far - power

    high = crit + 1.0
    while shortfall(high) < 0:
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high))


def _cohen_h(p1: float, p2: float) -> float:
    p1, p2 = np.clip([p1, p2], 0.0, 1.0)
    return float(2 * np.arcsin(np.sqrt(p1)) - 2 * np.arcsin(np.sqrt(p2)))


def _conditions(name: str, per_arm: Mapping[str, float] | None, fmt: str) -> str:
    """"name V" when every arm used V, else "name V1 (arm1), V2 (arm2)"; "" when unknown."""
    if not per_arm:
        return ""
    if len(set(per_arm.values())) == 1:
        return f"{name} {fmt.format(next(iter(per_arm.values())))}"
    return f"{name} " + ", ".join(f"{fmt.format(v)} ({arm})" for arm, v in per_arm.items())


def _list_tasks(rows: pd.DataFrame) -> str:
    if rows.empty:
        return "none"
    return ", ".join(f"{task_label(r.task)} ({r.diff:+.1f}, {format_p(r.p_adj)})" for r in rows.itertuples())
