"""Aggregation: evaluation JSONs of all models -> tables, paired comparison, headline, figures.

Outputs in `out_dir` (all written atomically, identical on rerun):

- ``summary.csv``: one row per (model, arm, seed, task, metric) as reported by lm-eval.
- ``table.{md,csv,tex}``: arm means with 95% CIs per task, overall and per task kind, in points; a task
  where the teacher is at chance is marked dead and left out of overall (`kdbench.analysis.suite`).
- ``comparison.{md,csv,tex}``: each arm minus the reference arm, paired over items and seeds, with
  the role of each test (one primary, the rest one Holm-adjusted secondary family), CI
  half-width and minimal detectable difference.
- ``headline.txt``: the answer to the research question in one paragraph; with budget curves it opens on the
  budget-resolved answer (tokens to 90% of the teacher's gain, their ratio, the difference at the largest budget),
  then the same ratio per task kind where the answered tasks hold several kinds.
- ``efficiency.{md,csv,tex}`` (budget curves only): tokens to 50% and 90% of the teacher's gain per arm and seed,
  the area under the curve, the token ratio (`kdbench.analysis.curves`); the CSV also per task kind.
- ``figures/{accuracy,paired,curves,learning}.{png,pdf}`` (curves only when training curves are given, learning
  with budget curves).

A comparison whose seeds fall in different regimes (`curves.flag`) carries its flag in every table and, for
the primary test, in the headline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from kdbench import KdbenchError
from kdbench.analysis import curves, plots, stats
from kdbench.schema.arms import REFERENCE_MODELS
from kdbench.schema.config import StatsConfig
from kdbench.evaluate import FORMAT
from kdbench.io import atomic_path, read_json
from kdbench.analysis.stats import OVERALL
from kdbench.analysis.suite import Suite, is_group

__all__ = ["ModelEval", "StatsConfig", "aggregate", "item_frame", "load_evals", "model_evals"]

METRICS = ("acc", "acc_norm")
SUMMARY_COLUMNS = ["model", "arm", "seed", "task", "metric", "value", "chance", "n"]


@dataclass(frozen=True)
class ModelEval:
    model: str  # e.g. "teacher", "students/init/seed0", "students/logit/seed1"
    arm: str  # "teacher", "init", or the arm name
    seed: int | None  # None for the single teacher
    eval_path: Path  # the evaluate_model JSON
    curve_path: Path | None = None  # the student's curve.csv
    train_path: Path | None = None  # the student's train.json: token budget and learning rate for the headline


def model_evals(results_dir: Path, models: Sequence[str]) -> list[ModelEval]:
    """ModelEvals for the pipeline's layout: `<results>/eval/<model>/results.json`, curves in `<results>/<model>/`.

    Model names are "teacher", "students/init/seed<N>" (the untrained floor) and
    "students/<arm>/seed<N>"; a student's curve.csv and train.json are used when they exist.
    """
    results_dir = Path(results_dir)
    out = []
    for model in models:
        parts = model.split("/")
        if parts == ["teacher"]:
            arm, seed = "teacher", None
        elif len(parts) == 3 and parts[0] == "students" and parts[2].startswith("seed") and parts[2][4:].isdigit():
            arm, seed = parts[1], int(parts[2][4:])
        else:
            raise KdbenchError(f"report: cannot tell arm and seed from model name {model!r}")
        curve, train = (results_dir / model / name for name in ("curve.csv", "train.json"))
        trained = arm not in REFERENCE_MODELS
        out.append(ModelEval(model, arm, seed, results_dir / "eval" / model / "results.json",
                             curve if trained and curve.is_file() else None,
                             train if trained and train.is_file() else None))
    return out


def aggregate(models: Sequence[ModelEval], cfg: StatsConfig, out_dir: Path, tuning: Path | None = None,
              budgets: Mapping[int, Sequence[ModelEval]] | None = None) -> None:
    """Write every table, the headline and the figures for `models` into `out_dir`.

    `tuning`: the run's tuning folder, for the headline pair's sensitivity to the tuned settings.
    `budgets` (budget -> the models of the budget curves) adds the candidate-reference difference
    at each budget to the headline.
    """
    if not models:
        raise KdbenchError("report: no evaluated models")
    if cfg.metric not in METRICS:
        raise KdbenchError(f"report: metric {cfg.metric!r} is not one of {', '.join(METRICS)}")
    out_dir = Path(out_dir)
    evals, tasks = load_evals(models)
    arms = _arm_order(models)
    chance = task_chance(evals, tasks)
    items = item_frame(models, evals, tasks, cfg.metric)
    suite = stats.task_suite(items, chance, cfg)
    chance.update({group: float(np.mean([chance[t] for t in members]))
                   for group, members in suite.groups() if is_group(group)})
    answered = items[items["task"].isin(suite.answered)]
    means = stats.arm_means(items, arms, cfg, suite)
    regimes = curves.regimes(answered)
    comparisons = flag_comparisons(stats.paired_comparisons(items, [a for a in arms if a not in REFERENCE_MODELS], cfg,
                                                            suite), regimes)
    headline = stats.headline(comparisons, cfg, **_training_conditions(models, cfg), suite=suite)
    if budgets:
        kinds = {k: [t for t in suite.answered if suite.kinds[t] == k] for k in suite.kind_names}
        answer = budget_answer(budgets, items, cfg, out_dir, chance[OVERALL], suite.answered, kinds)
        headline = f"{answer} At the main budget: {headline}"
    sensitivity = tuning_sensitivity(tuning, cfg, suite) if tuning is not None else None
    if sensitivity is not None:
        headline += " " + _sensitivity_sentence(sensitivity, cfg)
        _write_csv(out_dir / "sensitivity.csv", sensitivity)
        _write_text(out_dir / "sensitivity.md", _markdown(sensitivity.round(4)))

    _write_csv(out_dir / "summary.csv", _summary(models, evals, tasks, chance))
    _write_csv(out_dir / "table.csv", pd.concat([means, _chance_rows(chance)], ignore_index=True))
    _write_csv(out_dir / "comparison.csv", comparisons)
    _write_text(out_dir / "headline.txt", headline + "\n")
    wide = _wide_table(means, chance, arms, suite, regimes)
    _write_text(out_dir / "table.md", f"{headline}\n\n{_markdown(wide)}")
    _write_text(out_dir / "table.tex", _latex(wide, rule_before_last=True))
    narrow, caption = _comparison_table(comparisons, cfg, suite), _comparison_caption(comparisons, cfg)
    _write_text(out_dir / "comparison.md", f"{caption}\n\n{_markdown(narrow)}" if len(narrow) else f"{headline}\n")
    _write_text(out_dir / "comparison.tex", f"% {caption}\n{_latex(narrow)}" if len(narrow) else f"% {headline}\n")

    figures = out_dir / "figures"
    plots.accuracy_figure(means, chance, arms, cfg.metric, figures / "accuracy", suite.label)
    plots.paired_figure(comparisons, arms, cfg.reference_arm, 1.0 - cfg.ci, figures / "paired", suite.label)
    training = _training_curves(models)
    if training is not None:
        plots.curves_figure(training, arms, figures / "curves")


def tuning_sensitivity(tuning: Path, cfg: StatsConfig, suite: Suite | None = None) -> pd.DataFrame | None:
    """The headline pair at every tuning setting: trial i of both arms shares its drawn settings.

    One row per trial: learning rate, each arm's validation loss (what chose the trial) and the
    candidate minus the reference on the suite (items only: one seed per trial; overall as `suite` answers). None unless
    both arms were tuned with `tuning.sensitivity`.
    """
    arms = (cfg.reference_arm, cfg.candidate_arm)
    paths = [Path(tuning) / arm / "tuning.json" for arm in arms]
    if not all(p.is_file() for p in paths):
        return None
    ref, cand = (read_json(p)["trials"] for p in paths)
    if not all("scores" in t for t in ref + cand):
        return None
    rows = []
    for i, trials in enumerate(zip(ref, cand)):
        models = [ModelEval(f"tuning/{arm}/trial{i}", arm, 0, path.parent / t["scores"])
                  for arm, path, t in zip(arms, paths, trials)]
        evals, tasks = load_evals(models)
        comparison = stats.paired_comparisons(item_frame(models, evals, tasks, cfg.metric), [arms[1]], cfg, suite)
        overall = comparison[comparison["task"] == OVERALL].iloc[0]
        rows.append({"trial": i, "lr": trials[1]["lr"], "temperature": trials[1]["arm"]["temperature"],
                     f"val_loss_{arms[0]}": trials[0]["val_loss"], f"val_loss_{arms[1]}": trials[1]["val_loss"],
                     "diff": overall["diff"], "ci_lo": overall["ci_lo"], "ci_hi": overall["ci_hi"]})
    return pd.DataFrame(rows)


def _sensitivity_sentence(table: pd.DataFrame, cfg: StatsConfig) -> str:
    """The range of the headline difference over the tuning settings, and in how many its interval excludes 0."""
    above, below = int((table["ci_lo"] > 0).sum()), int((table["ci_hi"] < 0).sum())
    excluded = (f"in {above + below} of {len(table)} ({above} above 0, {below} below)" if above + below
                else f"in none of the {len(table)}")
    return (f"Across the {len(table)} tuning settings (learning rate {table['lr'].min():.2g} to {table['lr'].max():.2g}, "
            f"at the tuning budget, one seed each), {cfg.candidate_arm} minus {cfg.reference_arm} ranged from "
            f"{table['diff'].min():+.1f} to {table['diff'].max():+.1f} points overall; its {cfg.ci:.0%} interval "
            f"excluded 0 {excluded}.")


def flag_comparisons(comparisons: pd.DataFrame, regimes: pd.DataFrame | None) -> pd.DataFrame:
    """`comparisons` with a "flag" column: `curves.flag` of each row's arm pair ("" where the seeds agree)."""
    flags = {(a, r): curves.flag(regimes, a, r) for a, r in set(zip(comparisons["arm"], comparisons["reference"]))}
    return comparisons.assign(flag=[flags[(a, r)] for a, r in zip(comparisons["arm"], comparisons["reference"])])


def budget_items(budgets: Mapping[int, Sequence[ModelEval]], cfg: StatsConfig,
                 tasks: Sequence[str] | None = None) -> dict[int, pd.DataFrame]:
    """The item scores of the budget curves' models, per budget, of `tasks` (None: all)."""
    out = {}
    for budget, models in sorted(budgets.items()):
        evals, names = load_evals(models)
        items = item_frame(models, evals, names, cfg.metric)
        out[int(budget)] = items if tasks is None else items[items["task"].isin(tasks)]
    return out


def budget_tables(budgets: Mapping[int, Sequence[ModelEval]], cfg: StatsConfig, base: pd.DataFrame | None = None,
                  tasks: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per budget and arm: accuracy overall with CI, mean training FLOPs, seeds in the trained regime (with
    `base`, `curves.anchors`); candidate - reference per budget, flagged where the pair's seeds click)."""
    rows, diffs = [], []
    for budget, items in budget_items(budgets, cfg, tasks).items():
        arms = list(dict.fromkeys(m.arm for m in budgets[budget]))
        means = stats.arm_means(items, arms, cfg)
        regimes = curves.regimes(items, base=base) if base is not None else None
        for arm in arms:
            row = means[(means["arm"] == arm) & (means["task"] == OVERALL)].iloc[0]
            flops = [read_json(m.train_path).get("flops", {}).get("total") for m in budgets[budget]
                     if m.arm == arm and m.train_path is not None]
            flops = [f for f in flops if f is not None]
            trained = "" if regimes is None else \
                f"{int(regimes.loc[regimes['arm'] == arm, 'reached'].sum())}/{int(row['n_seeds'])}"
            rows.append([budget, arm, row["mean"], row["ci_lo"], row["ci_hi"],
                         float(np.mean(flops)) if flops else np.nan, int(row["n_seeds"]), trained])
        d = stats.budget_differences({budget: items}, cfg)
        diffs.append(d.assign(flag=curves.flag(regimes, cfg.candidate_arm, cfg.reference_arm)))
    table = pd.DataFrame(rows, columns=["budget", "arm", "mean", "ci_lo", "ci_hi", "flops", "n_seeds", "trained"])
    return table, pd.concat(diffs, ignore_index=True)


def _efficiency(by_budget: Mapping[int, pd.DataFrame], items: pd.DataFrame, tasks: Sequence[str] | None) -> pd.DataFrame:
    """`curves.efficiency` over `tasks`, anchored on the main run's floor and teacher (`items`)."""
    base = curves.anchors(items, tasks)
    if base is None:
        raise KdbenchError("budget curves: the untrained floor (init) and the teacher must be evaluated")
    if tasks is not None:
        by_budget = {b: it[it["task"].isin(tasks)] for b, it in by_budget.items()}
    return curves.efficiency(curves.seed_curves(by_budget, tasks), base)


def kind_answer(by_budget: Mapping[int, pd.DataFrame], items: pd.DataFrame, cfg: StatsConfig,
                kinds: Mapping[str, Sequence[str]]) -> tuple[str, pd.DataFrame]:
    """Per task kind (kind -> its answered tasks): the headline pair's tokens to 90% of the teacher's gain on that
    kind's tasks and their ratio; returns the sentence and the per-kind efficiency rows (column "kind")."""
    ref, cand, share = cfg.reference_arm, cfg.candidate_arm, curves.TARGETS[-1]
    parts, frames = [], []
    for kind, tasks in kinds.items():
        eff = _efficiency(by_budget, items, tasks)
        ratio = curves.token_ratio(eff, ref, cand, share, cfg.ci)
        text = curves.ratio_text(ratio, cfg.ci)
        ratio_part = f"{ref} needs {text} the tokens of {cand}" if ratio and ratio["ratio"] else f"{ref} / {cand}: {text}"
        detail = "; ".join(filter(None, [", ".join(f"{a} {curves.arm_tokens(eff, a, share, per_seed=False)}"
                                                   for a in (cand, ref)), curves.ratio_flag(ratio)]))
        parts.append(f"on {kind}, {ratio_part} ({detail})")
        frames.append(eff.assign(kind=kind))
    sentence = f"Per task kind (tokens to {share:.0%} of the teacher's gain on that kind's tasks): {'; '.join(parts)}."
    return sentence, pd.concat(frames, ignore_index=True)


def budget_answer(budgets: Mapping[int, Sequence[ModelEval]], items: pd.DataFrame, cfg: StatsConfig, out_dir: Path,
                  chance: float, tasks: Sequence[str] | None = None,
                  kinds: Mapping[str, Sequence[str]] | None = None) -> str:
    """Write efficiency.{csv,md,tex} and figures/learning.{png,pdf}; returns the budget-resolved answer.

    `items`: the main run's item scores, whose `init` and `teacher` models anchor the targets; `tasks`: the
    task families to average over (None: all); `kinds`: kind -> its tasks, for the per-kind sentence and the
    per-kind rows of efficiency.csv (two kinds or more).
    """
    by_budget = budget_items(budgets, cfg, tasks)
    eff = _efficiency(by_budget, items, tasks)
    base = curves.anchors(items, tasks)
    ref, cand = cfg.reference_arm, cfg.candidate_arm
    ratios = {s: curves.token_ratio(eff, ref, cand, s, cfg.ci) for s in curves.TARGETS}
    auc = curves.auc_items(by_budget)
    arms = list(dict.fromkeys(eff["arm"]))
    auc_means = stats.arm_means(auc, arms, cfg)
    auc_diffs = stats.paired_comparisons(auc, arms, cfg) if ref in arms else pd.DataFrame(columns=["arm", "task"])
    table, diffs = budget_tables(budgets, cfg, base, tasks)
    summary = curves.summary_table(eff, auc_means, auc_diffs, ratios, ref, cfg.ci)
    caption = (f"Sample efficiency ({cfg.metric}, overall): student tokens to 50% and 90% of the teacher's gain over "
               f"the untrained floor (geometric mean over seeds, then each seed; >= censored at the largest budget, "
               f"<= reached at the first), the area under the accuracy-vs-log-tokens curve (points, {cfg.ci:.0%} CI "
               f"over seeds and items) and its difference from {ref}, and {ref}'s tokens over the candidate's "
               f"({cfg.ci:.0%} t interval over paired seeds).")
    last = diffs.iloc[-1] if len(diffs) else None
    answer = curves.answer(eff, ratios[curves.TARGETS[-1]], last, ref, cand, cfg.ci,
                           flag_last=last["flag"] if last is not None else "")
    eff = eff.assign(kind=OVERALL)
    if kinds is not None and len(kinds) > 1:
        sentence, per_kind = kind_answer(by_budget, items, cfg, kinds)
        answer, eff = f"{answer} {sentence}", pd.concat([eff, per_kind], ignore_index=True)
        caption += " efficiency.csv also holds the rows of each task kind (column kind)."
    _write_csv(out_dir / "efficiency.csv", eff)
    _write_text(out_dir / "efficiency.md", f"{caption}\n\n{_markdown(summary)}")
    _write_text(out_dir / "efficiency.tex", f"% {caption}\n{_latex(summary)}")
    teacher = float(base["teacher"].iloc[0])
    plots.budget_figure(table, arms, out_dir / "figures" / "learning",
                        lines={"teacher": 100 * teacher, "chance": 100 * chance},
                        title="Learning curves: accuracy against student tokens and training FLOPs")
    return answer


def budget_models(results_dir: Path, budgets: Mapping[int, Sequence[str]]) -> dict[int, list[ModelEval]]:
    """ModelEvals of the budget curves: model folders "[budgets/b<N>/]students/<arm>/seed<S>", keyed by the
    tokens the students trained (whole batches, from their train.json), else by the configured budget."""
    results_dir = Path(results_dir)
    out = {}
    for budget, models in budgets.items():
        evals = []
        for model in models:
            parts = model.split("/")[-3:]
            if len(parts) != 3 or parts[0] != "students" or not parts[2].startswith("seed"):
                raise KdbenchError(f"report: cannot tell arm and seed from budget model {model!r}")
            train = results_dir / model / "train.json"
            evals.append(ModelEval(model, parts[1], int(parts[2][4:]), results_dir / "eval" / model / "results.json",
                                   train_path=train if train.is_file() else None))
        trained = {read_json(m.train_path).get("tokens") if m.train_path else None for m in evals}
        out[trained.pop() if len(trained) == 1 and None not in trained else int(budget)] = evals
    return out


def load_evals(models: Sequence[ModelEval]) -> tuple[list[dict], list[str]]:
    """(the evaluation JSON of each model, their common task list); refuses models that scored different items."""
    evals = [_load(m) for m in models]
    return evals, _check_tasks(models, evals)


def _load(m: ModelEval) -> dict:
    path = Path(m.eval_path)
    if not path.is_file():
        raise KdbenchError(f"report: evaluation of {m.model} missing ({path})")
    data = read_json(path)
    if data.get("format") != FORMAT:
        raise KdbenchError(f"report: {path} is not a kdbench evaluation (format {data.get('format')!r})")
    return data


def _check_tasks(models: Sequence[ModelEval], evals: list[dict]) -> list[str]:
    """The common task list; every model must have scored the same items, or nothing pairs."""
    tasks = list(evals[0]["tasks"])
    first = {t: [s["doc_id"] for s in evals[0]["samples"][t]] for t in tasks}
    seen = set()
    for m, e in zip(models, evals):
        if (m.arm, m.seed) in seen:
            raise KdbenchError(f"report: arm {m.arm!r} seed {m.seed} listed twice")
        seen.add((m.arm, m.seed))
        if sorted(e["tasks"]) != sorted(tasks):
            raise KdbenchError(f"report: {m.model} was evaluated on {sorted(e['tasks'])}, {models[0].model} on {sorted(tasks)}")
        for t in tasks:
            if [s["doc_id"] for s in e["samples"][t]] != first[t]:
                raise KdbenchError(f"report: {m.model} scored other items of {t} than {models[0].model} (different limit?)")
    return tasks


def task_chance(evals: list[dict], tasks: list[str]) -> dict[str, float]:
    """Per task, the mean of 1 / choices over its items (a fraction)."""
    return {t: float(np.mean([1.0 / s["n_choices"] for s in evals[0]["samples"][t]])) for t in tasks}


def _arm_order(models: Sequence[ModelEval]) -> list[str]:
    """teacher, init, then the KD arms in the order given."""
    given = list(dict.fromkeys(m.arm for m in models))
    return [a for a in REFERENCE_MODELS if a in given] + [a for a in given if a not in REFERENCE_MODELS]


def item_frame(models: Sequence[ModelEval], evals: list[dict], tasks: list[str], metric: str) -> pd.DataFrame:
    """The tidy item scores `kdbench.analysis.stats` reads: arm, seed, task, doc_id, value."""
    frames = []
    for m, e in zip(models, evals):
        for t in tasks:
            samples = e["samples"][t]
            frames.append(pd.DataFrame({
                "arm": m.arm,
                "seed": -1 if m.seed is None else m.seed,  # a seedless model is its arm's only seed
                "task": t,
                "doc_id": [s["doc_id"] for s in samples],
                "value": [s[metric] for s in samples],
            }))
    return pd.concat(frames, ignore_index=True)


def _summary(models: Sequence[ModelEval], evals: list[dict], tasks: list[str], chance: dict) -> pd.DataFrame:
    rows = [[m.model, m.arm, m.seed, t, metric, e["tasks"][t][metric], chance[t], e["tasks"][t]["n"]]
            for m, e in zip(models, evals) for t in tasks for metric in METRICS]
    frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    frame["seed"] = frame["seed"].astype("Int64")
    return frame


def _chance_rows(chance: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame([{"arm": "chance", "task": t, "mean": 100 * c} for t, c in chance.items()])


def _wide_table(means: pd.DataFrame, chance: dict, arms: list[str], suite: Suite,
                regimes: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows: arms then chance; columns: seeds, seeds in the trained regime (`curves.REGIME`), each task (dead ones
    marked), overall, each kind; cells 'mean [lo, hi]'."""
    columns = [group for group, _ in suite.groups()]
    rows = []
    for arm in arms:
        cells = means[means["arm"] == arm].set_index("task")
        reached = None if regimes is None else regimes.loc[regimes["arm"] == arm, "reached"]
        trained = "" if reached is None or reached.empty else f"{int(reached.sum())}/{len(reached)}"
        rows.append([arm, str(int(cells["n_seeds"].iloc[0])), trained]
                    + [f"{cells.at[t, 'mean']:.1f} [{cells.at[t, 'ci_lo']:.1f}, {cells.at[t, 'ci_hi']:.1f}]" for t in columns])
    rows.append(["chance", "", ""] + [f"{100 * chance[t]:.1f}" for t in columns])
    return pd.DataFrame(rows, columns=["arm", "seeds", "trained seeds"] + [suite.label(t) for t in columns])


def _schedule(record: dict) -> str:
    """A student's learning-rate schedule, from its train.json: a branch of a curve run, or a cosine run."""
    return f"warmup-stable-decay ({record['decay']:.0%} decay)" if "branch" in record else "cosine"


def _training_conditions(models: Sequence[ModelEval], cfg: StatsConfig) -> dict[str, dict | None]:
    """Tokens trained, learning rate and schedule per headline arm, from train.json; None where unknown or seeds
    disagree."""
    arms = (cfg.reference_arm, cfg.candidate_arm)
    configs = {arm: [{**(j := read_json(m.train_path)).get("config", {}), "tokens": j.get("tokens"),
                      "schedule": _schedule(j)}
                     for m in models if m.arm == arm and m.train_path] for arm in arms}
    out = {}
    for key in ("tokens", "lr", "schedule"):
        values = {arm: {c.get(key) for c in configs[arm]} for arm in arms}
        known = all(len(v) == 1 and None not in v for v in values.values())
        out[key] = {arm: v.pop() for arm, v in values.items()} if known else None
    return out


def _comparison_caption(comparisons: pd.DataFrame, cfg: StatsConfig) -> str:
    n_secondary = int((comparisons["role"] == stats.SECONDARY).sum())
    return (f"Each arm minus {cfg.reference_arm}, paired over seeds and items, in points of {cfg.metric} "
            f"({cfg.ci:.0%} CI over seeds and items). Primary test: {cfg.candidate_arm} vs {cfg.reference_arm} "
            f"overall, p unadjusted. Secondary: the other {n_secondary} rows, one family, Holm-adjusted p. "
            f"MDE: the true difference each test finds with {cfg.power:.0%} power at alpha {1 - cfg.ci:.2g}.")


def _comparison_table(comparisons: pd.DataFrame, cfg: StatsConfig, suite: Suite) -> pd.DataFrame:
    """The printed comparison: p is the decision p (unadjusted for the primary test, Holm for the secondary family)."""
    return pd.DataFrame({
        "arm": comparisons["arm"],
        "vs": comparisons["reference"],
        "task": comparisons["task"].map(suite.label),
        "test": comparisons["role"],
        "diff [95% CI]": [f"{r.diff:+.1f} [{r.ci_lo:+.1f}, {r.ci_hi:+.1f}]" for r in comparisons.itertuples()],
        f"MDE ({cfg.power:.0%} power)": comparisons["mde"].map("{:.1f}".format),
        "p (primary: raw; secondary: Holm)": comparisons["p_shown"],
        "Cohen's h": comparisons["cohen_h"].map("{:+.2f}".format),
        "seeds": comparisons["n_seeds"].astype(str),
        "flag": comparisons["flag"] if "flag" in comparisons else "",
    })


def _markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _latex(table: pd.DataFrame, rule_before_last: bool = False) -> str:
    """booktabs tabular, ready to paste (needs \\usepackage{booktabs})."""
    body = [" & ".join(_tex(c) for c in row) + r" \\" for row in table.itertuples(index=False)]
    if rule_before_last:
        body.insert(len(body) - 1, r"\midrule")
    return "\n".join([
        r"\begin{tabular}{l" + "r" * (len(table.columns) - 1) + "}",
        r"\toprule",
        " & ".join(_tex(c) for c in table.columns) + r" \\",
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
    ]) + "\n"


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "<": r"$<$"}


def _tex(value: object) -> str:
    return "".join(_TEX_ESCAPES.get(char, char) for char in str(value))


def _training_curves(models: Sequence[ModelEval]) -> pd.DataFrame | None:
    frames = []
    for m in models:
        if m.curve_path is None:
            continue
        path = Path(m.curve_path)
        if not path.is_file():
            raise KdbenchError(f"report: training curve of {m.model} missing ({path})")
        curve = pd.read_csv(path)
        missing = {"step", "tokens", "loss"} - set(curve.columns)
        if missing:
            raise KdbenchError(f"report: {path} lacks column(s) {', '.join(sorted(missing))}")
        frames.append(curve.assign(arm=m.arm, seed=m.seed))
    return pd.concat(frames, ignore_index=True) if frames else None


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
