"""The "why" sections: generated from the analysis tables, whichever way the numbers fall.

Every clause states a number with its interval and reads it by a fixed rule (an interval that
excludes 0 is a difference, one that includes it is not), so nothing in `why.md` is written by
hand. Parts that were not run are left out.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from kdbench.schema.config import StatsConfig
from kdbench.analysis.fidelity import correlation
from kdbench.analysis.report import _markdown
from kdbench.analysis.stats import OVERALL, format_p


def sections(parts: Mapping[str, pd.DataFrame], cfg: StatsConfig, controls: Mapping[str, str]) -> str:
    """why.md's body: one short section per analysis that ran (controls, fidelity and inherited errors,
    representations, budget), each one or two generated sentences and a small table."""
    ref, cand = cfg.reference_arm, cfg.candidate_arm
    ci = f"{cfg.ci:.0%} CI"
    out = []
    kinds = _kinds(parts["accuracy"], ref, cand, ci) if "accuracy" in parts else ""
    if kinds:
        out.append(("Task kinds", [kinds], None))
    if "controls" in parts and not parts["controls"].empty:
        t = parts["controls"][parts["controls"]["task"] == OVERALL]
        out.append(("Controls", [_controls(parts["controls"], ci, 1 - cfg.ci)], pd.DataFrame({
            "arm": t["arm"], "control": t["control"],
            f"gain, points ({ci})": [_interval(r.gain, r.ci_lo, r.ci_hi, "{:.1f}", True) for r in t.itertuples()],
            "p": t["p"].map(format_p)})))
    if "fidelity" in parts:
        f = parts["fidelity"]
        text = _fidelity(f, ref, cand, ci)
        if "fidelity_points" in parts:
            text.append(_tracks("top-1 agreement with the teacher", parts["fidelity_points"], "agreement", cfg))
        out.append(("Fidelity and inherited errors", text, _arm_table(f, ref, cand, {
            "agreement": "agreement", "kept (teacher right)": "kept", "inherited (teacher wrong)": "inherited",
            "KL nats/token": "kl"})))
    if "cka" in parts:
        out.append(("Representations", [_cka(parts["cka"], ref, cand, ci),
                                        _tracks("CKA at the mapped layers", parts["cka_points"], "cka", cfg)],
                    _arm_table(parts["cka"], ref, cand, {"CKA at the mapped pairs": "cka"}, "{:.3f}")))
    if "budget_diffs" in parts and not parts["budget_diffs"].empty:
        d = parts["budget_diffs"].sort_values("budget")
        table = pd.DataFrame({"student tokens": d["budget"].map("{:,}".format),
                              f"{cand} - {ref} ({ci})": [_interval(r.diff, r.ci_lo, r.ci_hi, "{:.1f}", True)
                                                         for r in d.itertuples()],
                              "p": d["p"].map(format_p)})
        if "flag" in d:
            table["flag"] = d["flag"].fillna("").to_numpy()
        out.append(("Budget", [_budgets(d, cand, ref, ci, 1 - cfg.ci)], table))
    if not out:
        return "No analysis was configured (analysis.fidelity, analysis.cka, controls and analysis.budgets are off).\n"
    return "\n".join(f"## {title}\n\n{' '.join(x for x in text if x)}\n"
                     + ("" if table is None else f"\n{_markdown(table)}") for title, text, table in out)


def _arm_table(t: pd.DataFrame, ref: str, cand: str, columns: Mapping[str, str], fmt: str = "{:.1f}") -> pd.DataFrame:
    """Overall rows of the headline pair, ce, init and controls: each column as 'value [lo, hi]'."""
    shown = [a for a in (cand, ref, "ce", "init") if _row(t, a) is not None]
    shown += [a for a in dict.fromkeys(t["arm"]) if "@" in a and a not in shown]
    rows = []
    for arm in shown:
        r = _row(t, arm)
        rows.append({"arm": arm, **{name: _interval(r[col], r[f"{col}_lo"], r[f"{col}_hi"], fmt) if col in r else "-"
                                    for name, col in columns.items()}})
    return pd.DataFrame(rows)


def _kinds(t: pd.DataFrame, ref: str, cand: str, ci: str) -> str:
    """Accuracy per task kind of the teacher and the headline pair ("" with one kind): does what transfers depend on it?"""
    rows = t[t["task"].str.startswith(f"{OVERALL}: ")]
    if rows.empty:
        return ""
    clauses = []
    for group, g in rows.groupby("task", sort=False):
        cells = [f"{a} {_interval(r.mean, r.ci_lo, r.ci_hi, '{:.1f}')}" for a in ("teacher", cand, ref)
                 for r in g[g["arm"] == a].itertuples()]
        clauses.append(f"{group.removeprefix(f'{OVERALL}: ')}: {', '.join(cells)}")
    return (f"Accuracy per task kind (knowledge: facts seen in training; skill: the context alone; syntax; points, {ci}, "
            f"tasks where the teacher is at chance left out): {'; '.join(clauses)}.")


def _interval(mean: float, lo: float, hi: float, fmt: str, signed: bool = False) -> str:
    f = (lambda v: ("+" if v >= 0 else "") + fmt.format(v)) if signed else fmt.format
    if not np.isfinite(mean):
        return "n/a"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{f(mean)} (no interval: too few seeds or items)"
    return f"{f(mean)} [{f(lo)}, {f(hi)}]"


def _controls(t: pd.DataFrame, ci: str, alpha: float) -> str:
    clauses = []
    for r in t[t["task"] == OVERALL].itertuples():
        verdict = ("more than its control" if r.gain > 0 else "less than its control") if r.p < alpha else \
            "not distinguishable from its control"
        clauses.append(f"{r.arm} scores {_interval(r.gain, r.ci_lo, r.ci_hi, '{:.1f}', True)} points over {r.control} "
                       f"({format_p(r.p)}): {verdict}")
    return (f"Against random-teacher controls (the same loss distilled from an untrained teacher; points of accuracy "
            f"overall, {ci}), " + "; ".join(clauses) + ". A gain that excludes 0 is knowledge transferred from the "
            "teacher, beyond the regularising effect of the loss terms.")


def _row(t: pd.DataFrame, arm: str) -> pd.Series | None:
    rows = t[(t["arm"] == arm) & (t["task"] == OVERALL)] if "task" in t else t[t["arm"] == arm]
    return None if rows.empty else rows.iloc[0]


def _fidelity(t: pd.DataFrame, ref: str, cand: str, ci: str) -> list[str]:
    c, ce = _row(t, cand), _row(t, "ce")
    if c is None:
        return []
    wrong = int(c.n_teacher_wrong)
    if not wrong:
        return [f"The teacher answered every item right; {cand} agrees with its choices on "
                f"{_interval(c.agreement, c.agreement_lo, c.agreement_hi, '{:.1f}')} points ({ci})."]
    base = "" if ce is None else (f" against ce's {_interval(ce.inherited, ce.inherited_lo, ce.inherited_hi, '{:.1f}')}"
                                  f", the rate without transfer ({_compare(c, ce, 'inherited', cand, 'ce')})")
    return [f"Of the {wrong} items the teacher got wrong, {cand} repeats its wrong answer on "
            f"{_interval(c.inherited, c.inherited_lo, c.inherited_hi, '{:.1f}')}%{base}; of the "
            f"{int(c.n_teacher_right)} it got right, it keeps {_interval(c.kept, c.kept_lo, c.kept_hi, '{:.1f}')}% "
            f"({ci})."]


def _compare(a: pd.Series | None, b: pd.Series | None, col: str, name_a: str, name_b: str) -> str:
    """Whether two arms' intervals of `col` overlap (a conservative reading: overlap is no evidence of a difference)."""
    if a is None or b is None or not all(np.isfinite([a[f"{col}_lo"], a[f"{col}_hi"], b[f"{col}_lo"], b[f"{col}_hi"]])):
        return ""
    if a[f"{col}_lo"] > b[f"{col}_hi"]:
        return f"{name_a} above {name_b}, intervals disjoint"
    if a[f"{col}_hi"] < b[f"{col}_lo"]:
        return f"{name_a} below {name_b}, intervals disjoint"
    return f"{name_a} and {name_b} intervals overlap"


def _cka(t: pd.DataFrame, ref: str, cand: str, ci: str) -> str:
    c, r = _row(t, cand), _row(t, ref)
    if c is None or r is None:
        return ""
    verdict = _compare(c, r, "cka", cand, ref)
    return (f"Linear CKA with the teacher at the mapped layer pairs ({c['pairs']}; {ci} over seeds): {cand} "
            f"{_interval(c.cka, c.cka_lo, c.cka_hi, '{:.3f}')}, {ref} {_interval(r.cka, r.cka_lo, r.cka_hi, '{:.3f}')}"
            f"{' (' + verdict + ')' if verdict else ''}.")


def _tracks(what: str, points: pd.DataFrame, col: str, cfg: StatsConfig) -> str:
    students = points[points["arm"] != "init"]
    r, lo, hi, n = correlation(students[col], students["accuracy"], cfg.ci)
    if not np.isfinite(r):
        return f"Too few trained arm-seed pairs ({n}) to relate {what} to accuracy."
    verdict = "tracks" if lo > 0 else "runs against" if hi < 0 else "does not significantly track"
    return (f"Across trained arms and seeds, {what} {verdict} held-out accuracy: Pearson r = {r:+.2f} "
            f"({cfg.ci:.0%} CI [{lo:+.2f}, {hi:+.2f}], n = {n} models).")


def _budgets(d: pd.DataFrame, cand: str, ref: str, ci: str, alpha: float) -> str:
    if d.empty:
        return ""
    rows = list(d.sort_values("budget").itertuples())
    values = "; ".join(f"{int(r.budget):,} tokens {_interval(r.diff, r.ci_lo, r.ci_hi, '{:.1f}', True)}"
                       + ("" if r.p < alpha else " (n.s.)") for r in rows)
    found = [r for r in rows if r.p < alpha]  # only a detected difference has a sign worth reading
    sides = [f"{cand} {side} at {', '.join(f'{int(r.budget):,}' for r in found if (r.diff > 0) == ahead)} tokens"
             for side, ahead in (("ahead", True), ("behind", False)) if any((r.diff > 0) == ahead for r in found)]
    last = rows[-1]
    if not found:
        shape = "no budget shows a detectable difference"
    else:
        where = "every budget" if len(found) == len(rows) else f"{len(found)} of {len(rows)} budgets"
        shape = f"a difference is detectable at {where} ({' and '.join(sides)})"
    end = ("a gap remains at the largest budget" if last.p < alpha else
           "no gap is detectable at the largest budget")
    return (f"Budget curves, {cand} - {ref} overall ({ci}, points): {values}; {shape}, and {end} "
            f"({int(last.budget):,} tokens, {format_p(last.p)}).")
