"""The answer as a learning curve: sample efficiency per arm and seed, and the flag for seeds that "click".

Near the budget where an arm starts to learn, each trained model has or has not made the jump, so the
seeds of an arm fall into two regimes and the seed-level intervals, which treat seed effects as
normal, can under-cover. Every function here takes the set of tasks to average over, so "overall"
and per-kind curves are the same code; accuracies are fractions, tokens are counts.

- Regimes: a model has *reached the trained regime* when its accuracy is at least `REGIME` of the
  teacher's gain over the untrained floor of its seed. A comparison of two arms is *flagged* when an
  arm's seeds are split between regimes or the arms hold different numbers of trained seeds
  (`flagged`): there, a seed-level interval cannot see how often an arm's seeds make the jump.
- Tokens to a target (`crossing`): the first budget at which a seed's curve reaches floor + share x
  (teacher - floor), interpolated linearly in log tokens from the budget before it; reached at the
  first budget: that budget (at most); never reached: censored at the largest budget, never
  extrapolated.
- Token ratio (`log_ratio`): reference / candidate tokens to the target, the geometric mean over
  paired seeds with a t interval on the per-seed log ratios; censored seeds enter at the largest
  budget (the restricted mean of log tokens), and a ratio with a censored seed is flagged. Where every
  seed of both arms is censored there is no ratio.
- Area under the curve (`auc_items`): per item, the trapezoid mean of its score over log tokens; a
  linear function of item scores, so its interval is `stats.estimate`'s crossed seeds x items one.

tests/test_curves_coverage.py holds these intervals to at least 93% coverage, or flagged, under a
generator of seeds that click (and under nulls), at 3 and 10 seeds.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from kdbench import KdbenchError

REGIME = 0.25  # share of the teacher's gain over the floor that marks a model as trained ("clicked")
TARGETS = (0.5, 0.9)  # shares of the teacher's gain whose tokens the curves report


def overall(items: pd.DataFrame, tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Accuracy per (arm, seed): the unweighted mean over `tasks` (None: all) of the per-task means."""
    if tasks is not None:
        items = items[items["task"].isin(tasks)]
    per_task = items.groupby(["arm", "seed", "task"], sort=False)["value"].mean()
    return per_task.groupby(["arm", "seed"], sort=False).mean().rename("acc").reset_index()


def anchors(items: pd.DataFrame, tasks: Sequence[str] | None = None) -> pd.DataFrame | None:
    """Per seed, the untrained floor (its `init` model) and the teacher over `tasks`; None without both."""
    acc = overall(items, tasks)
    floor, teacher = acc[acc["arm"] == "init"], acc[acc["arm"] == "teacher"]
    if floor.empty or teacher.empty:
        return None
    return pd.DataFrame({"seed": floor["seed"].to_numpy(), "floor": floor["acc"].to_numpy(),
                         "teacher": float(teacher["acc"].iloc[0])})


def target(floor, teacher, share: float):
    """The accuracy at `share` of the teacher's gain over the floor."""
    return floor + share * (teacher - floor)


def flagged(reached_a: np.ndarray, reached_b: np.ndarray) -> np.ndarray:
    """Whether a comparison of two arms is flagged: (..., seeds) booleans -> (...,)."""
    n = reached_a.shape[-1]
    ka, kb = reached_a.sum(axis=-1), reached_b.sum(axis=-1)
    return (ka != kb) | ((ka > 0) & (ka < n)) | ((kb > 0) & (kb < n))


def regimes(items: pd.DataFrame, tasks: Sequence[str] | None = None,
            base: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """Per trained (arm, seed): accuracy, its floor and the teacher, and whether it reached the trained regime.

    `base` (`anchors`) gives floor and teacher when `items` lacks them (the budget curves); None when neither has.
    """
    base = anchors(items, tasks) if base is None else base
    if base is None:
        return None
    acc = overall(items, tasks)
    acc = acc[~acc["arm"].isin(["init", "teacher"])].merge(base, on="seed", how="inner")
    acc["reached"] = acc["acc"] >= target(acc["floor"], acc["teacher"], REGIME)
    return acc


def flag(reg: pd.DataFrame | None, arm: str, ref: str) -> str:
    """The flag of `arm` vs `ref` ("" when not flagged): each arm's trained seeds and per-seed accuracies."""
    if reg is None:
        return ""
    a, r = (reg[reg["arm"] == x].sort_values("seed") for x in (arm, ref))
    common = sorted(set(a["seed"]) & set(r["seed"]))
    a, r = (x[x["seed"].isin(common)] for x in (a, r))
    if not common or not flagged(a["reached"].to_numpy(), r["reached"].to_numpy()):
        return ""
    return "seeds click: " + "; ".join(_outcomes(x, name) for x, name in ((a, arm), (r, ref)))


def _outcomes(rows: pd.DataFrame, arm: str) -> str:
    per_seed = ", ".join(f"{100 * v:.1f}" for v in rows["acc"])
    return f"{arm} {int(rows['reached'].sum())} of {len(rows)} seeds trained ({per_seed})"


def crossing(acc: np.ndarray, goal: np.ndarray, log_budgets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log tokens at which each curve first reaches `goal`, censored) for curves (..., budgets), goals (...)."""
    above = acc >= np.asarray(goal)[..., None]
    ever, first = above.any(axis=-1), above.argmax(axis=-1)
    before = np.maximum(first - 1, 0)
    a0 = np.take_along_axis(acc, before[..., None], axis=-1)[..., 0]
    a1 = np.take_along_axis(acc, first[..., None], axis=-1)[..., 0]
    frac = np.clip((goal - a0) / np.where(a1 > a0, a1 - a0, 1.0), 0.0, 1.0)
    logt = np.where(first == 0, log_budgets[0], log_budgets[before] + frac * (log_budgets[first] - log_budgets[before]))
    return np.where(ever, logt, log_budgets[-1]), ~ever


def log_ratio(log_ref: np.ndarray, log_cand: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    """(mean, half-width) of the paired log ratio reference / candidate over the last axis (seeds)."""
    d = log_ref - log_cand
    n = d.shape[-1]
    return d.mean(axis=-1), sps.t.ppf((1 + ci) / 2, n - 1) * d.std(axis=-1, ddof=1) / np.sqrt(n)


def auc_weights(budgets: Sequence[int]) -> np.ndarray:
    """Trapezoid weights over log tokens, summing to 1: the mean of a curve over the log-token range."""
    x = np.log(np.asarray(budgets, dtype=float))
    if len(x) < 2:
        raise KdbenchError(f"analysis.budgets: an area under the curve needs two budgets or more, got {len(x)}")
    gaps = np.diff(x)
    return (np.r_[gaps, 0.0] + np.r_[0.0, gaps]) / 2 / (x[-1] - x[0])


def seed_curves(items_by_budget: Mapping[int, pd.DataFrame], tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Accuracy per (arm, seed, budget) over `tasks`; an (arm, seed) missing at some budget is refused."""
    frames = [overall(items, tasks).assign(budget=int(b)) for b, items in sorted(items_by_budget.items())]
    curves = pd.concat(frames, ignore_index=True)
    counts = curves.groupby(["arm", "seed"])["budget"].nunique()
    if (counts < len(frames)).any():
        arm, seed = counts[counts < len(frames)].index[0]
        raise KdbenchError(f"budget curves: arm {arm!r} seed {seed} lacks an evaluation at some budget")
    return curves


def efficiency(curves: pd.DataFrame, base: pd.DataFrame, shares: Sequence[float] = TARGETS) -> pd.DataFrame:
    """Per (arm, seed): tokens to each share of the teacher's gain (`crossing`) and the area under the curve.

    Columns: arm, seed, then per share s (as a percentage p): tokens_p, censored_p, at_first_p; auc (fraction).
    """
    budgets = np.array(sorted(curves["budget"].unique()))
    logb, weights = np.log(budgets.astype(float)), auc_weights(budgets)
    wide = curves.pivot_table(index=["arm", "seed"], columns="budget", values="acc", sort=False)[budgets]
    wide = wide.reset_index().merge(base, on="seed", how="inner")
    acc = wide[list(budgets)].to_numpy(dtype=float)
    out = wide[["arm", "seed"]].copy()
    for share in shares:
        p = round(100 * share)
        logt, censored = crossing(acc, target(wide["floor"].to_numpy(), wide["teacher"].to_numpy(), share), logb)
        out[f"tokens_{p}"], out[f"censored_{p}"] = np.exp(logt), censored
        out[f"at_first_{p}"] = ~censored & (logt == logb[0])
    out["auc"] = acc @ weights
    return out


def token_ratio(eff: pd.DataFrame, ref: str, cand: str, share: float, ci: float) -> dict | None:
    """Reference / candidate tokens to `share` of the teacher's gain over paired seeds; None without common seeds.

    Keys: arm (the candidate), share, ratio, lo, hi (None where every seed of both arms is censored: no arm reached the target), n_seeds,
    censored (per arm), flagged (a censored seed in either arm).
    """
    p = round(100 * share)
    a, r = (eff[eff["arm"] == x].set_index("seed") for x in (cand, ref))
    seeds = sorted(set(a.index) & set(r.index))
    if len(seeds) < 2:
        return None
    ca, cr = a.loc[seeds, f"censored_{p}"].to_numpy(bool), r.loc[seeds, f"censored_{p}"].to_numpy(bool)
    out = {"arm": cand, "share": share, "n_seeds": len(seeds), "censored": {cand: int(ca.sum()), ref: int(cr.sum())},
           "flagged": bool(flagged(ca, cr)), "ratio": None, "lo": None, "hi": None}
    if ca.all() and cr.all():
        return out
    mean, hw = log_ratio(np.log(r.loc[seeds, f"tokens_{p}"].to_numpy(float)),
                         np.log(a.loc[seeds, f"tokens_{p}"].to_numpy(float)), ci)
    out.update(ratio=float(np.exp(mean)), lo=float(np.exp(mean - hw)), hi=float(np.exp(mean + hw)))
    return out


def auc_items(items_by_budget: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """Item scores -> per-item area under the curve (columns arm, seed, task, doc_id, value), for `stats`."""
    budgets = sorted(items_by_budget)
    keys = ["arm", "seed", "task", "doc_id"]
    total = None
    for w, b in zip(auc_weights(budgets), budgets):
        part = items_by_budget[b].set_index(keys)["value"] * w
        total = part if total is None else total.add(part)
    if total.isna().any():
        raise KdbenchError("budget curves: some arm, seed or item lacks a score at some budget")
    return total.rename("value").reset_index()


def _tokens(v: float) -> str:
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.0f}k"


def arm_tokens(eff: pd.DataFrame, arm: str, share: float, per_seed: bool = True) -> str:
    """"180k (per seed 150k, 190k, >=1.60M)": the geometric mean over seeds (">=" with a censored seed, "<="
    reached at the first budget), then (`per_seed`) each seed's tokens."""
    p = round(100 * share)
    rows = eff[eff["arm"] == arm].sort_values("seed")
    if rows.empty:
        return "n/a"
    seeds = [(">=" if c else "<=" if f else "") + _tokens(t)
             for t, c, f in zip(rows[f"tokens_{p}"], rows[f"censored_{p}"], rows[f"at_first_{p}"])]
    mean = float(np.exp(np.log(rows[f"tokens_{p}"]).mean()))
    bound = ">=" if rows[f"censored_{p}"].any() else "<=" if rows[f"at_first_{p}"].all() else ""
    return f"{bound}{_tokens(mean)}" + (f" (per seed {', '.join(seeds)})" if per_seed else "")


def ratio_text(r: dict | None, ci: float) -> str:
    """"3.90x (95% CI [2.10, 7.20], 3 paired seeds)", or why there is no ratio."""
    if r is None:
        return "no ratio (fewer than two paired seeds)"
    if r["ratio"] is None:
        return "no ratio (no seed of either arm reached the target within the budgets)"
    return f"{r['ratio']:.2f}x ({ci:.0%} CI [{r['lo']:.2f}, {r['hi']:.2f}], {r['n_seeds']} paired seeds)"


def ratio_flag(r: dict | None) -> str:
    """The flag of a token ratio with censored seeds ("" when none)."""
    if r is None or not r["flagged"]:
        return ""
    censored = ", ".join(f"{arm} {k} of {r['n_seeds']}" for arm, k in r["censored"].items())
    return (f"flagged: seeds censored at the largest budget ({censored}); the ratio is then a bound on the censored "
            f"side and its interval may not hold")


def answer(eff: pd.DataFrame, ratio: dict | None, last: pd.Series | None, ref: str, cand: str, ci: float,
           share: float = TARGETS[-1], flag_last: str = "") -> str:
    """The headline's first sentence: tokens to `share` of the teacher's gain per headline arm (and ce), the
    ratio with its interval, and where the arms end at the largest budget (`last`: stats.budget_differences' row)."""
    arms = list(dict.fromkeys(a for a in (cand, ref, "ce") if a in set(eff["arm"])))
    reach = "; ".join(f"{a} {arm_tokens(eff, a, share)}" for a in arms)
    has_ratio = ratio is not None and ratio["ratio"] is not None
    text = (f"Student tokens to reach {share:.0%} of the teacher's gain over the untrained floor (overall, "
            f"interpolated in log tokens, censored at the largest budget): {reach}. "
            + (f"{ref} needs {ratio_text(ratio, ci)} the tokens of {cand}" if has_ratio
               else f"{ref} / {cand}: {ratio_text(ratio, ci)}"))
    if ratio_flag(ratio):
        text += f" ({ratio_flag(ratio)})"
    if last is not None:
        text += (f"; at the largest budget ({int(last['budget']):,} tokens) {cand} - {ref} = {last['diff']:+.1f} "
                 f"points ({ci:.0%} CI [{last['ci_lo']:+.1f}, {last['ci_hi']:+.1f}])")
        if flag_last:
            text += f" (flagged, {flag_last})"
    return text + "."


def summary_table(eff: pd.DataFrame, auc_means: pd.DataFrame, auc_diffs: pd.DataFrame,
                  ratios: Mapping[float, dict | None], ref: str, ci: float) -> pd.DataFrame:
    """Per arm: tokens to each target and the area under the curve (points, CI over seeds and items), with the
    AUC difference from the reference and, for the candidate, the token ratios."""
    rows = []
    for arm in dict.fromkeys(eff["arm"]):
        row = {"arm": arm, **{f"tokens to {s:.0%}": arm_tokens(eff, arm, s) for s in ratios}}
        m = auc_means[(auc_means["arm"] == arm) & (auc_means["task"] == "overall")]
        row["AUC (points)"] = (f"{m['mean'].iloc[0]:.1f} [{m['ci_lo'].iloc[0]:.1f}, {m['ci_hi'].iloc[0]:.1f}]"
                               if len(m) else "-")
        d = auc_diffs[(auc_diffs["arm"] == arm) & (auc_diffs["task"] == "overall")]
        row[f"AUC - {ref}"] = f"{d['diff'].iloc[0]:+.1f} [{d['ci_lo'].iloc[0]:+.1f}, {d['ci_hi'].iloc[0]:+.1f}]" \
            if len(d) else "-"
        rows.append(row)
    table = pd.DataFrame(rows)
    for share, r in ratios.items():
        table[f"{ref} / arm tokens to {share:.0%}"] = ["-"] * len(table)
        if r is not None:
            table.loc[table["arm"] == r["arm"], f"{ref} / arm tokens to {share:.0%}"] = \
                "; ".join(t for t in (ratio_text(r, ci), ratio_flag(r)) if t)
    return table
