"""The "why" paragraph: generated from the analysis tables, whichever way the numbers fall.

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
from kdbench.analysis.stats import OVERALL, format_p


def paragraph(parts: Mapping[str, pd.DataFrame], cfg: StatsConfig, controls: Mapping[str, str]) -> str:
    ref, cand = cfg.reference_arm, cfg.candidate_arm
    ci = f"{cfg.ci:.0%} CI"
    sentences = []
    if "accuracy" in parts:
        sentences.append(_kinds(parts["accuracy"], ref, cand, ci))
    if "controls" in parts and not parts["controls"].empty:
        sentences.append(_controls(parts["controls"], ci, 1 - cfg.ci))
    if "fidelity" in parts:
        sentences += _fidelity(parts["fidelity"], ref, cand, ci)
        if "fidelity_points" in parts:
            sentences.append(_tracks("top-1 agreement with the teacher", parts["fidelity_points"], "agreement", cfg))
    if "cka" in parts:
        sentences.append(_cka(parts["cka"], ref, cand, ci))
        sentences.append(_tracks("CKA at the mapped layers", parts["cka_points"], "cka", cfg))
    if "budget_diffs" in parts:
        sentences.append(_budgets(parts["budget_diffs"], cand, ref, ci, 1 - cfg.ci))
    if not any(sentences):
        return "No analysis was configured (analysis.fidelity, analysis.cka, controls and analysis.budgets are off)."
    return " ".join(s for s in sentences if s)


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
    shown = [a for a in (cand, ref, "ce", "init") if _row(t, a) is not None]
    first = _row(t, shown[0]) if shown else None
    if first is None:
        return []
    agree = ", ".join(f"{a} {_interval(_row(t, a).agreement, _row(t, a).agreement_lo, _row(t, a).agreement_hi, '{:.1f}')}"
                      for a in shown)
    out = [f"Top-1 agreement with the teacher's choices on the suite ({ci}, points): {agree}."]
    wrong = int(first.n_teacher_wrong)
    if wrong:
        inh = ", ".join(f"{a} {_interval(_row(t, a).inherited, _row(t, a).inherited_lo, _row(t, a).inherited_hi, '{:.1f}')}"
                        for a in shown)
        kept = ", ".join(f"{a} {_interval(_row(t, a).kept, _row(t, a).kept_lo, _row(t, a).kept_hi, '{:.1f}')}"
                         for a in shown)
        verdict = _compare(_row(t, cand), _row(t, "ce"), "inherited", cand, "ce") if "ce" in shown and cand in shown else ""
        out.append(f"Of the {wrong} items the teacher got wrong, the share on which a student repeats the teacher's "
                   f"wrong answer (inherited errors, negative transfer; ce never saw the teacher, so its share is the "
                   f"rate without transfer) is {inh}{' (' + verdict + ')' if verdict else ''}; of the "
                   f"{int(first.n_teacher_right)} it got right, the share a student keeps is {kept}.")
    if "kl" in t and np.isfinite(first.get("kl", np.nan)):
        kl = ", ".join(f"{a} {_interval(_row(t, a).kl, _row(t, a).kl_lo, _row(t, a).kl_hi, '{:.3f}')}" for a in shown)
        out.append(f"KL(teacher || student) on held-out validation text, nats per token: {kl}.")
    return out


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
    shown = [a for a in (cand, ref, "ce", "init") if _row(t, a) is not None]
    shown += [a for a in t["arm"] if "@" in a and a not in shown]
    values = ", ".join(f"{a} {_interval(_row(t, a).cka, _row(t, a).cka_lo, _row(t, a).cka_hi, '{:.3f}')}" for a in shown)
    pairs = _row(t, cand)["pairs"] if _row(t, cand) is not None else ""
    verdict = _compare(_row(t, cand), _row(t, ref), "cka", cand, ref)
    return (f"Linear CKA with the teacher at the mapped layer pairs ({pairs}; {ci} over seeds): {values}"
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
