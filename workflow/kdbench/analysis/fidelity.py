"""Fidelity vs generalisation (Stanton et al., 2021): how closely students follow the teacher, item by item.

From the per-item evaluation logs (`results/<exp>/eval/<model>/results.json`): each model's choice
on an item is its highest log-likelihood answer (the one `acc` scores). Per arm and seed:

- top-1 agreement with the teacher's choice, per task family and overall;
- agreement where the teacher was right ("kept": the share of the teacher's correct answers the
  student also gives) and where it was wrong ("inherited": the share of the teacher's errors the
  student repeats, choosing the same wrong answer; negative transfer);

and, from the probes (`kdbench.analysis.probe`), KL(teacher || student) per token on validation text.
Intervals: agreement is a seeds x items design like accuracy (`kdbench.analysis.stats.estimate`); the
kept/inherited shares pool the items where the teacher was right (wrong) across families; KL is
one number per seed (mean and t interval over seeds).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from kdbench import KdbenchError
from kdbench.analysis import stats
from kdbench.analysis.stats import OVERALL

AGREEMENT_COLUMNS = ["arm", "task", "agreement", "agreement_lo", "agreement_hi", "kept", "kept_lo", "kept_hi",
                     "inherited", "inherited_lo", "inherited_hi", "n_teacher_right", "n_teacher_wrong", "n_seeds"]


def choices(samples: Sequence[dict]) -> np.ndarray:
    """Each item's chosen answer: the index of the highest log-likelihood (ties: the first, as lm-eval's argmax)."""
    return np.array([int(np.argmax(s["loglik"])) for s in samples])


def labels(samples: Sequence[dict]) -> np.ndarray:
    out = []
    for s in samples:
        if not isinstance(s["label"], (int, np.integer)):
            raise KdbenchError(f"fidelity: item {s['doc_id']} has a non-index label {s['label']!r}")
        out.append(int(s["label"]))
    return np.array(out)


def item_agreement(teacher: dict, students: Sequence[tuple[str, int, dict]], tasks: Sequence[str]) -> pd.DataFrame:
    """Tidy frame: arm, seed, task, doc_id, teacher_right, agree, student_right (0/1) for every student item.

    `teacher` and each student's dict are evaluation JSONs (`kdbench.evaluate`); students are
    (arm, seed, eval). Every model must have scored the same items.
    """
    frames = []
    for task in tasks:
        t_samples = teacher["samples"][task]
        doc_ids = [s["doc_id"] for s in t_samples]
        t_choice, label = choices(t_samples), labels(t_samples)
        for arm, seed, ev in students:
            s_samples = ev["samples"][task]
            if [s["doc_id"] for s in s_samples] != doc_ids:
                raise KdbenchError(f"fidelity: {arm} seed {seed} scored other items of {task} than the teacher")
            s_choice = choices(s_samples)
            frames.append(pd.DataFrame({"arm": arm, "seed": seed, "task": task, "doc_id": doc_ids,
                                        "teacher_right": (t_choice == label).astype(int),
                                        "agree": (s_choice == t_choice).astype(int),
                                        "student_right": (s_choice == label).astype(int)}))
    return pd.concat(frames, ignore_index=True)


def counts(items: pd.DataFrame) -> pd.DataFrame:
    """Per arm and seed: items, agreements, the teacher's right and wrong items, kept and inherited counts."""
    g = items.assign(kept=items["agree"] * items["teacher_right"],
                     inherited=items["agree"] * (1 - items["teacher_right"]),
                     teacher_wrong=1 - items["teacher_right"])
    out = g.groupby(["arm", "seed"], sort=False).agg(
        n_items=("agree", "size"), agree=("agree", "sum"), teacher_right=("teacher_right", "sum"),
        teacher_wrong=("teacher_wrong", "sum"), kept=("kept", "sum"), inherited=("inherited", "sum"))
    return out.reset_index()


def agreement_table(items: pd.DataFrame, arms: Sequence[str], ci: float) -> pd.DataFrame:
    """Per arm and task (then overall): agreement, kept and inherited shares with CIs (points)."""
    tasks = list(dict.fromkeys(items["task"]))
    rows = []
    for arm in arms:
        sub = items[items["arm"] == arm]
        if sub.empty:
            continue
        n_seeds = sub["seed"].nunique()
        for task in [*tasks, OVERALL]:
            part = sub if task == OVERALL else sub[sub["task"] == task]
            by_task = [_matrix(part[part["task"] == t], "agree") for t in dict.fromkeys(part["task"])]
            right = part[part["teacher_right"] == 1]
            wrong = part[part["teacher_right"] == 0]
            rows.append([arm, task, *_interval(by_task, ci), *_interval([_matrix(right, "agree")], ci),
                         *_interval([_matrix(wrong, "agree")], ci),
                         right[["task", "doc_id"]].drop_duplicates().shape[0],
                         wrong[["task", "doc_id"]].drop_duplicates().shape[0], n_seeds])
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def seed_interval(values: Sequence[float], ci: float, bounds: tuple[float, float] = (-np.inf, np.inf)
                  ) -> tuple[float, float, float]:
    """Mean of per-seed values and its t interval over seeds, clipped to the quantity's `bounds`
    (NaN bounds with one seed)."""
    v = np.asarray(values, dtype=float)
    mean = float(v.mean()) if len(v) else float("nan")
    if len(v) < 2:
        return mean, float("nan"), float("nan")
    hw = float(sps.t.ppf((1 + ci) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    lo, hi = np.clip([mean - hw, mean + hw], *bounds)
    return mean, float(lo), float(hi)


def kl_table(kl: pd.DataFrame, arms: Sequence[str], ci: float) -> pd.DataFrame:
    """Per arm: KL(teacher || student) in nats per token, mean over seeds with a t interval."""
    rows = []
    for arm in arms:
        values = kl.loc[kl["arm"] == arm, "kl"]
        if len(values):
            rows.append([arm, *seed_interval(values, ci, (0.0, np.inf)), len(values)])  # a KL is >= 0
    return pd.DataFrame(rows, columns=["arm", "kl", "kl_lo", "kl_hi", "n_seeds"])


def correlation(x: Sequence[float], y: Sequence[float], ci: float) -> tuple[float, float, float, int]:
    """Pearson r with a Fisher-z interval: (r, lo, hi, n); NaN where n < 4 or a side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n < 4 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan"), float("nan"), float("nan"), n
    r = float(np.corrcoef(x, y)[0, 1])
    z, half = np.arctanh(np.clip(r, -0.999999, 0.999999)), sps.norm.ppf((1 + ci) / 2) / np.sqrt(n - 3)
    return r, float(np.tanh(z - half)), float(np.tanh(z + half)), n


def _matrix(part: pd.DataFrame, column: str) -> np.ndarray:
    """Seeds x items (task, doc_id) matrix of `column`; (0, 0) when empty."""
    if part.empty:
        return np.zeros((0, 0))
    grid = part.pivot_table(index="seed", columns=["task", "doc_id"], values=column, aggfunc="first")
    if grid.isna().to_numpy().any():
        raise KdbenchError("fidelity: some seeds lack items the others scored")
    return grid.to_numpy(dtype=float)


def _interval(mats: list[np.ndarray], ci: float) -> tuple[float, float, float]:
    """(mean, lo, hi) in points of the crossed seeds x items estimate; NaN where too few items."""
    mats = [m for m in mats if m.size]
    if not mats:
        return float("nan"), float("nan"), float("nan")
    est = stats.estimate(mats)
    mean = 100 * float(est.mean)
    if min(m.shape[1] for m in mats) < 2:
        return mean, float("nan"), float("nan")
    hw = 100 * float(est.half_width(ci))
    lo, hi = np.clip([mean - hw, mean + hw], 0.0, 100.0)  # a share in points
    return mean, float(lo), float(hi)
