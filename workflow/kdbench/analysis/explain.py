"""Why the answer falls as it does: controls, fidelity, representation similarity and budget curves.

The `analyze` job reads what the run made (evaluation logs, the probes' KL and CKA, train.json
files) and writes into `results/<exp>/analysis/`:

- ``fidelity.{csv,md,tex}`` agreement with the teacher, kept / inherited shares, KL on validation
  text; ``fidelity_counts.csv`` the raw counts per arm and seed; ``figures/fidelity.{png,pdf}``;
- ``cka.{csv,md,tex}`` CKA at the mapped layer pairs per arm; ``figures/cka.{png,pdf}`` every pair;
- ``controls.{csv,md,tex}`` each controlled arm's gain over its random-teacher twin;
- ``budgets.{csv,md,tex}`` accuracy and FLOPs per budget and arm, the candidate-reference
  difference per budget; ``figures/budgets.{png,pdf}``;
- ``why.md`` the generated sections (`kdbench.analysis.why`).

Each part only when configured; the rule declares exactly the files its settings produce.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from kdbench import KdbenchError
from kdbench.analysis import curves, fidelity, plots, stats, why
from kdbench.schema.arms import ArmConfig
from kdbench.schema.config import AnalysisConfig, StatsConfig
from kdbench.evaluate import task_label
from kdbench.io import atomic_path
from kdbench.schema.layermap import layer_map
from kdbench.analysis.report import (_latex, _markdown, _write_csv, aggregate, budget_models, budget_tables,
                                     item_frame, load_evals, model_evals, task_chance)
from kdbench.analysis.stats import OVERALL


def analyze(results_dir: Path, cfg: StatsConfig, analysis: AnalysisConfig, arms: Mapping[str, ArmConfig],
            models: Sequence[str], controls: Mapping[str, str], budgets: Mapping[int, Sequence[str]],
            kl_path: Path | None, cka_path: Path | None, out_dir: Path) -> str:
    """Write every configured analysis into `out_dir`; returns why.md's sections."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    control_models = [f"students/{c}/seed{m.split('seed')[-1]}" for c, arm in controls.items()
                      for m in models if m.startswith(f"students/{arm}/")]
    evaluated = model_evals(results_dir, [*models, *control_models])
    evals, tasks = load_evals(evaluated)
    order = list(dict.fromkeys(m.arm for m in evaluated))
    items = item_frame(evaluated, evals, tasks, cfg.metric)
    suite = stats.task_suite(items, task_chance(evals, tasks), cfg)
    parts: dict[str, pd.DataFrame] = {"accuracy": stats.arm_means(items, order, cfg, suite)}
    students = [m.arm for m in evaluated if m.arm != "teacher"]
    students = list(dict.fromkeys(students))

    if analysis.fidelity:
        teacher = evals[[m.arm for m in evaluated].index("teacher")]
        pairs = [(m.arm, m.seed, e) for m, e in zip(evaluated, evals) if m.arm != "teacher"]
        agree = fidelity.item_agreement(teacher, pairs, tasks)
        table = fidelity.agreement_table(agree, students, cfg.ci)
        kl = fidelity.kl_table(pd.read_csv(kl_path), students, cfg.ci) if kl_path else None
        if kl is not None:
            table = table.merge(kl.drop(columns="n_seeds"), on="arm", how="left")
            table.loc[table["task"] != OVERALL, ["kl", "kl_lo", "kl_hi"]] = np.nan
        parts["fidelity"] = table
        _write_csv(out_dir / "fidelity_counts.csv", fidelity.counts(agree))
        _tables(out_dir / "fidelity", table, _fidelity_view(table), _fidelity_caption(cfg))
        points = _seed_points(agree, items)
        parts["fidelity_points"] = points
        plots.fidelity_figure(points, students, out_dir / "figures" / "fidelity")

    if analysis.cka:
        grid = pd.read_csv(cka_path)
        n_s, n_t = int(grid["student_layer"].max()), int(grid["teacher_layer"].max())
        mapped = mapped_pairs(arms, controls, cfg, n_s, n_t, [a for a in students if a in set(grid["arm"])])
        table, per_seed = cka_table(grid, mapped, cfg.ci)
        acc = _overall_per_seed(items)
        parts["cka"] = table
        parts["cka_points"] = per_seed.merge(acc, on=["arm", "seed"])
        _tables(out_dir / "cka", table, _cka_view(table), _cka_caption(cfg))
        means = {arm: g.groupby(["student_layer", "teacher_layer"])["cka"].mean().unstack().to_numpy()
                 for arm, g in grid.groupby("arm", sort=False)}
        plots.cka_figure(means, mapped, out_dir / "figures" / "cka")

    if controls:
        table = control_gains(items, controls, tasks, cfg)
        parts["controls"] = table
        _tables(out_dir / "controls", table, _controls_view(table), _controls_caption(cfg))

    if budgets:
        table, diffs = budget_tables(budget_models(results_dir, budgets), cfg, curves.anchors(items, suite.answered),
                                     suite.answered)
        parts["budgets"], parts["budget_diffs"] = table, diffs
        _tables(out_dir / "budgets", table, _budget_view(table, diffs), _budget_caption(cfg))
        plots.budget_figure(table, list(dict.fromkeys(table["arm"])), out_dir / "figures" / "budgets")

    text = why.sections(parts, cfg, controls)
    with atomic_path(out_dir / "why.md") as tmp:
        tmp.write_text(f"# Why\n\n{text}")
    return text


def mapped_pairs(arms: Mapping[str, ArmConfig], controls: Mapping[str, str], cfg: StatsConfig, n_s: int, n_t: int,
                 shown: Sequence[str]) -> dict[str, tuple[tuple[int, int], ...]]:
    """Per arm, the layer pairs its CKA is read at: its own layer map, else the candidate's (uniform if none)."""
    cand = arms.get(cfg.candidate_arm)
    default = layer_map(cand.layer_map if cand is not None and cand.uses_layers else "uniform", n_s, n_t)
    out = {}
    for arm in shown:
        spec = arms.get(controls.get(arm, arm))
        out[arm] = spec.pairs(n_s, n_t) if spec is not None and spec.uses_layers else default
    return out


def cka_table(grid: pd.DataFrame, mapped: Mapping[str, Sequence[tuple[int, int]]], ci: float
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per arm: mean CKA over the mapped pairs with a t interval over seeds, and per pair; per arm and seed)."""
    rows, seeds = [], []
    for arm, pairs in mapped.items():
        g = grid[grid["arm"] == arm].set_index(["student_layer", "teacher_layer"])
        per_seed = []
        for seed, gs in g.groupby("seed"):
            value = float(np.mean([gs.loc[p, "cka"] for p in pairs]))
            per_seed.append(value)
            seeds.append([arm, seed, value])
        pair_means = {f"cka_{s}_{t}": float(g.loc[(s, t), "cka"].mean()) for s, t in pairs}
        rows.append({"arm": arm, "pairs": " ".join(f"{s}->{t}" for s, t in pairs),
                     **dict(zip(("cka", "cka_lo", "cka_hi"), fidelity.seed_interval(per_seed, ci, (0.0, 1.0)))),
                     "n_seeds": len(per_seed), **pair_means})
    return pd.DataFrame(rows), pd.DataFrame(seeds, columns=["arm", "seed", "cka"])


def control_gains(items: pd.DataFrame, controls: Mapping[str, str], tasks: Sequence[str], cfg: StatsConfig
                  ) -> pd.DataFrame:
    """Each controlled arm minus its random-teacher twin, paired over seeds and items, per task and overall."""
    rows = []
    for control, arm in controls.items():
        mats = stats.difference_matrices(items, arm, control)
        if not mats:
            continue
        for task, group in [*zip(tasks, ([m] for m in mats)), (OVERALL, mats)]:
            est = stats.estimate(group)
            d, hw = float(est.mean), float(est.half_width(cfg.ci))
            rows.append([arm, control, task, 100 * d, 100 * (d - hw), 100 * (d + hw), float(est.p()),
                         mats[0].shape[0], sum(m.shape[1] for m in group)])
    return pd.DataFrame(rows, columns=["arm", "control", "task", "gain", "ci_lo", "ci_hi", "p", "n_seeds", "n_items"])


def _overall_per_seed(items: pd.DataFrame) -> pd.DataFrame:
    """Accuracy overall (unweighted over tasks) per arm and seed, in points."""
    per_task = items.groupby(["arm", "seed", "task"], sort=False)["value"].mean()
    return (100 * per_task.groupby(["arm", "seed"], sort=False).mean()).rename("accuracy").reset_index()


def _seed_points(agree: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    per_task = agree.groupby(["arm", "seed", "task"], sort=False)["agree"].mean()
    points = (100 * per_task.groupby(["arm", "seed"], sort=False).mean()).rename("agreement").reset_index()
    return points.merge(_overall_per_seed(items), on=["arm", "seed"])


def _ci(mean: float, lo: float, hi: float, fmt: str = "{:.1f}") -> str:
    if not np.isfinite(mean):
        return "-"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return fmt.format(mean)
    return f"{fmt.format(mean)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def _fidelity_view(t: pd.DataFrame) -> pd.DataFrame:
    view = pd.DataFrame({
        "arm": t["arm"], "task": t["task"].map(task_label),
        "agreement": [_ci(r.agreement, r.agreement_lo, r.agreement_hi) for r in t.itertuples()],
        "kept (teacher right)": [_ci(r.kept, r.kept_lo, r.kept_hi) for r in t.itertuples()],
        "inherited (teacher wrong)": [_ci(r.inherited, r.inherited_lo, r.inherited_hi) for r in t.itertuples()],
        "teacher right/wrong": [f"{r.n_teacher_right}/{r.n_teacher_wrong}" for r in t.itertuples()],
    })
    if "kl" in t:
        view["KL(teacher, student) nats/token"] = [_ci(r.kl, r.kl_lo, r.kl_hi, "{:.3f}") for r in t.itertuples()]
    view["seeds"] = t["n_seeds"].astype(str)
    return view


def _fidelity_caption(cfg: StatsConfig) -> str:
    return (f"Fidelity to the teacher, per arm and task family (points, {cfg.ci:.0%} CI over seeds and items). "
            "Agreement: the student's top-1 choice equals the teacher's. Kept: agreement on the items the teacher "
            "got right (= the student's accuracy there). Inherited: the student repeats the teacher's wrong choice "
            "on the items the teacher got wrong (negative transfer; compare with ce, which never saw the teacher). "
            "KL(teacher || student) on validation text, nats per token, mean over seeds with a t interval.")


def _cka_view(t: pd.DataFrame) -> pd.DataFrame:
    view = pd.DataFrame({"arm": t["arm"], "mapped pairs (student->teacher)": t["pairs"],
                         "CKA, mean over pairs": [_ci(r.cka, r.cka_lo, r.cka_hi, "{:.3f}") for r in t.itertuples()]})
    for col in [c for c in t.columns if c.startswith("cka_") and c not in ("cka_lo", "cka_hi")]:
        s, l = col[4:].split("_")
        view[f"{s}->{l}"] = t[col].map(lambda v: "-" if not np.isfinite(v) else f"{v:.3f}")
    view["seeds"] = t["n_seeds"].astype(str)
    return view


def _cka_caption(cfg: StatsConfig) -> str:
    return (f"Linear CKA (Kornblith et al., 2019) between student and teacher layers on validation text, at the mapped "
            f"layer pairs (each arm's own map; arms without one at {cfg.candidate_arm}'s pairs), mean over seeds with a "
            f"{cfg.ci:.0%} t interval. Layer 0: embeddings; l: output of block l.")


def _controls_view(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"arm": t["arm"], "control": t["control"], "task": t["task"].map(task_label),
                         "gain [CI]": [f"{r.gain:+.1f} [{r.ci_lo:+.1f}, {r.ci_hi:+.1f}]" for r in t.itertuples()],
                         "p": t["p"].map(stats.format_p), "seeds": t["n_seeds"].astype(str)})


def _controls_caption(cfg: StatsConfig) -> str:
    return (f"Gain of each arm over its random-teacher control (the same arm distilled from an untrained teacher of the "
            f"same architecture), paired over seeds and items, points of {cfg.metric} ({cfg.ci:.0%} CI, p unadjusted).")


def _budget_view(t: pd.DataFrame, diffs: pd.DataFrame) -> pd.DataFrame:
    wide = []
    for budget, g in t.groupby("budget", sort=True):
        row = {"student tokens": f"{budget:,}"}
        for r in g.itertuples():
            row[r.arm] = _ci(r.mean, r.ci_lo, r.ci_hi) + (f" ({r.trained} trained)" if r.trained else "")
            row[f"{r.arm} FLOPs"] = f"{r.flops:.2e}" if np.isfinite(r.flops) else "-"
        d = diffs[diffs["budget"] == budget]
        row["candidate - reference"] = (f"{d['diff'].iloc[0]:+.1f} [{d['ci_lo'].iloc[0]:+.1f}, {d['ci_hi'].iloc[0]:+.1f}]"
                                        if len(d) else "-")
        row["flag"] = d["flag"].iloc[0] if len(d) else ""
        wide.append(row)
    return pd.DataFrame(wide)


def _budget_caption(cfg: StatsConfig) -> str:
    return (f"Budget curves: overall {cfg.metric} (points, {cfg.ci:.0%} CI over seeds and items) of {cfg.reference_arm}, "
            f"{cfg.candidate_arm}, ce and any further curve arms at each student token budget (seeds at >= "
            f"{curves.REGIME:.0%} of the teacher's gain over the floor in brackets), the mean training FLOPs of a "
            f"model (estimate; the teacher's forward once per cached token read), and {cfg.candidate_arm} - "
            f"{cfg.reference_arm} paired over seeds and items, flagged where the pair's seeds click.")


def _tables(base: Path, raw: pd.DataFrame, view: pd.DataFrame, caption: str) -> None:
    _write_csv(base.with_suffix(".csv"), raw)
    for ext, text in ((".md", f"{caption}\n\n{_markdown(view)}"), (".tex", f"% {caption}\n{_latex(view)}")):
        with atomic_path(base.with_suffix(ext)) as tmp:
            tmp.write_text(text)


__all__ = ["analyze", "cka_table", "control_gains", "mapped_pairs", "KdbenchError"]


def paper(results_dir: Path, out: Path, cfg: StatsConfig, models: Sequence[str], budgets: Mapping[int, Sequence[str]],
          analysis: AnalysisConfig | None = None, arms: Mapping[str, ArmConfig] | None = None,
          controls: Mapping[str, str] | None = None) -> None:
    """Every table and figure of a finished run into `out`, the why analyses into `out/analysis`.

    Reads only what the run kept: evaluations, train.json files, tuning records and the probes' KL
    and CKA tables, so it runs on a shared results folder without models (`kdbench paper`).
    """
    results_dir, budgets = Path(results_dir), {int(b): list(m) for b, m in budgets.items()}
    tuning = results_dir / "tuning"
    aggregate(model_evals(results_dir, models), cfg, out, tuning if tuning.is_dir() else None,
              budget_models(results_dir, budgets))
    if analysis is not None:
        probes = results_dir / "analysis" / "probes"
        kl, cka = ((probes / name) if (probes / name).is_file() else None for name in ("kl.csv", "cka.csv"))
        analyze(results_dir, cfg, analysis, arms or {}, models, controls or {}, budgets, kl, cka, Path(out) / "analysis")
