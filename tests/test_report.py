"""Aggregation: fake evaluation JSONs (teacher, init and 3 KD arms x 3 seeds x 2 tasks) -> all outputs.

The fake results are written in evaluate_model's format with a planted +35-point gain of
`logit_hidden` over `logit` on one task. Checks that every file is written and non-empty,
summary.csv has the documented columns and one row per model x task x metric, the
headline names both arms and a number and finds the planted task, chance comes from the
per-item choice counts, reruns are byte-identical, and inconsistent inputs are refused.

Run: .venv/bin/python -m pytest tests/test_report.py -q   (CPU, ~20 s)
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdbench import KdbenchError
from kdbench.evaluate import FORMAT
from kdbench.io import read_json, write_json
from kdbench.analysis.report import ModelEval, aggregate, model_evals
from kdbench.schema.config import StatsConfig

TASKS = {"kdb_alpha": 4, "kdb_beta": 2}  # task -> choices per item
N_ITEMS = 80
RATES = {"teacher": (0.9, 0.9), "init": (0.25, 0.5), "ce": (0.4, 0.6), "logit": (0.5, 0.7), "logit_hidden": (0.85, 0.7)}
OUTPUTS = ["summary.csv", "table.md", "table.csv", "table.tex", "comparison.csv", "comparison.md", "comparison.tex",
           "headline.txt"] + [f"figures/{f}.{e}" for f in ("accuracy", "paired", "curves") for e in ("png", "pdf")]


def _fake_eval(path: Path, rates: tuple[float, float], rng: np.random.Generator) -> None:
    tasks, samples = {}, {}
    for (task, k), rate in zip(TASKS.items(), rates):
        correct = (rng.random(N_ITEMS) < rate).astype(float)
        samples[task] = [{"doc_id": i, "id": f"{task}-{i}", "acc": c, "acc_norm": c, "n_choices": k, "label": 0,
                          "loglik": [-1.0 + c] + [-1.0] * (k - 1)} for i, c in enumerate(correct)]
        tasks[task] = {"acc": correct.mean(), "acc_stderr": 0.05, "acc_norm": correct.mean(), "acc_norm_stderr": 0.05,
                       "n": N_ITEMS, "task_sha256": "0" * 64, "version": "1.0"}
    write_json(path, {"format": FORMAT, "model_sha256": "0" * 64, "tasks": tasks, "samples": samples})


def _fake_curve(path: Path, arm: str, seed: int) -> None:
    steps = np.arange(0, 100, 10)
    loss = 5.0 * np.exp(-steps / 50) + 0.1 * seed
    frame = pd.DataFrame({"step": steps, "tokens": steps * 512, "lr": 1e-3, "loss": loss, "tokens_per_s": 1e4,
                          "loss_ce": loss / 2})
    if arm != "ce":
        frame["loss_fkl"] = loss / 2
    if arm == "logit_hidden":
        frame["loss_hidden_mse"] = loss / 4
    frame["val_loss"] = np.where(steps % 50 == 0, loss + 0.2, np.nan)
    frame.to_csv(path, index=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[ModelEval]:
    root = tmp_path_factory.mktemp("evals")
    rng = np.random.default_rng(3)
    out = [ModelEval("teacher", "teacher", None, root / "teacher.json")]
    _fake_eval(out[0].eval_path, RATES["teacher"], rng)
    for arm in ("init", "ce", "logit", "logit_hidden"):
        for seed in range(3):
            name = f"init/seed{seed}" if arm == "init" else f"students/{arm}/seed{seed}"
            curve = None if arm == "init" else root / f"{arm}{seed}.csv"
            m = ModelEval(name, arm, seed, root / f"{arm}{seed}.json", curve)
            _fake_eval(m.eval_path, RATES[arm], rng)
            if curve:
                _fake_curve(curve, arm, seed)
            out.append(m)
    return out


@pytest.fixture(scope="module")
def report(models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    aggregate(models, StatsConfig(), out)
    return out


def test_writes_every_output(report):
    for name in OUTPUTS:
        assert (report / name).stat().st_size > 100, name
    assert (report / "figures/accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (report / "figures/paired.pdf").read_bytes()[:5] == b"%PDF-"
    tex = (report / "table.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and "logit\\_hidden" in tex


def test_summary_columns_rows_and_chance(models, report):
    summary = pd.read_csv(report / "summary.csv")
    assert list(summary.columns) == ["model", "arm", "seed", "task", "metric", "value", "chance", "n"]
    assert len(summary) == len(models) * len(TASKS) * 2
    assert set(summary["metric"]) == {"acc", "acc_norm"}
    chance = summary.groupby("task")["chance"].unique()
    assert list(chance["kdb_alpha"]) == [0.25] and list(chance["kdb_beta"]) == [0.5]
    assert summary.loc[summary["arm"] == "teacher", "seed"].isna().all()


def test_tables_and_headline(report):
    headline = (report / "headline.txt").read_text().strip()
    assert "logit_hidden" in headline and "(logit)" in headline and re.search(r"[+-]\d+\.\d", headline)
    assert headline.startswith("Experiment 2 (logit_hidden) beats Experiment 1 (logit)")
    assert "better on alpha" in headline and "Flagged" not in headline  # every seed of every arm trained
    table_md = (report / "table.md").read_text()
    assert table_md.startswith(headline)
    rows = [line.split("|")[1].strip() for line in table_md.splitlines() if line.startswith("| ")]
    assert rows == ["arm", "teacher", "init", "ce", "logit", "logit_hidden", "chance"]
    header = [c.strip() for c in table_md.splitlines()[2].split("|")[1:-1]]
    assert header == ["arm", "seeds", "trained seeds", "alpha", "beta", "overall"]
    table = pd.read_csv(report / "table.csv")
    assert set(table["arm"]) == {"teacher", "init", "ce", "logit", "logit_hidden", "chance"}
    assert table.loc[(table["arm"] == "chance") & (table["task"] == "overall"), "mean"].item() == pytest.approx(37.5)
    comp = pd.read_csv(report / "comparison.csv")
    assert set(comp["arm"]) == {"ce", "logit_hidden"} and set(comp["reference"]) == {"logit"}
    alpha = comp[(comp["arm"] == "logit_hidden") & (comp["task"] == "kdb_alpha")].iloc[0]
    assert alpha["diff"] > 10 and alpha["p_adj"] < 0.05 and alpha["role"] == "secondary"


def test_rerun_is_byte_identical(models, report, tmp_path):
    aggregate(models, StatsConfig(), tmp_path)
    for name in OUTPUTS:
        assert (tmp_path / name).read_bytes() == (report / name).read_bytes(), name


def test_missing_candidate_and_no_curves(models, tmp_path):
    kept = [m for m in models if m.arm != "logit_hidden"]
    kept = [ModelEval(m.model, m.arm, m.seed, m.eval_path) for m in kept]
    aggregate(kept, StatsConfig(), tmp_path)
    assert "cannot be compared" in (tmp_path / "headline.txt").read_text()
    assert not (tmp_path / "figures/curves.png").exists()
    assert (tmp_path / "figures/paired.png").stat().st_size > 100


def test_refuses_inconsistent_inputs(models, tmp_path):
    short = tmp_path / "short.json"
    _fake_eval(short, (0.5, 0.5), np.random.default_rng(0))
    data = read_json(short)
    data["samples"]["kdb_beta"] = data["samples"]["kdb_beta"][:10]
    write_json(short, data)
    with pytest.raises(KdbenchError, match="other items of kdb_beta"):
        aggregate([*models, ModelEval("students/x/seed0", "x", 0, short)], StatsConfig(), tmp_path)
    with pytest.raises(KdbenchError, match="listed twice"):
        aggregate([*models, models[-1]], StatsConfig(), tmp_path)
    with pytest.raises(KdbenchError, match="metric"):
        aggregate(models, StatsConfig(metric="f1"), tmp_path)


def test_model_evals_follow_the_pipeline_layout(tmp_path):
    (tmp_path / "students/logit/seed1").mkdir(parents=True)
    (tmp_path / "students/logit/seed1/curve.csv").write_text("step,tokens,loss\n")
    found = model_evals(tmp_path, ["teacher", "students/init/seed0", "students/logit/seed1", "students/ce/seed2"])
    assert [(m.arm, m.seed) for m in found] == [("teacher", None), ("init", 0), ("logit", 1), ("ce", 2)]
    assert found[2].eval_path == tmp_path / "eval/students/logit/seed1/results.json"
    assert found[2].curve_path == tmp_path / "students/logit/seed1/curve.csv"
    assert found[3].curve_path is None and found[0].curve_path is None
    assert found[2].train_path is None
    with pytest.raises(KdbenchError, match="arm and seed"):
        model_evals(tmp_path, ["students/logit"])


def test_declared_tests_and_mde_are_stated(report):
    headline = (report / "headline.txt").read_text()
    assert "the declared primary test, unadjusted" in headline and "Holm-adjusted across all" in headline
    assert re.search(r"detects an overall difference of \d+\.\d points with 80% power", headline)
    assert "student tokens" not in headline  # no train.json in the fixture: conditions left out
    comp = pd.read_csv(report / "comparison.csv")
    assert list(comp["role"]).count("primary") == 1 and {"half_width", "mde", "p_adj", "p_shown"} <= set(comp.columns)
    md = (report / "comparison.md").read_text()
    assert md.startswith("Each arm minus logit") and "| primary |" in md and "| secondary |" in md


def test_training_conditions_come_from_train_json(models, tmp_path):
    with_train = []
    for m in models:
        if m.arm in ("logit", "logit_hidden"):
            train = tmp_path / f"{m.arm}{m.seed}-train.json"
            branch = {"decay": 0.2, "branch": {"decay_start": 310, "decay_steps": 78}} if m.arm == "logit" else {}
            write_json(train, {"tokens": 397312, "config": {"tokens": 400000, "lr": 0.003 if m.arm == "logit" else 0.001},
                               **branch})
            m = ModelEval(m.model, m.arm, m.seed, m.eval_path, m.curve_path, train)
        with_train.append(m)
    aggregate(with_train, StatsConfig(), tmp_path / "out")
    headline = (tmp_path / "out/headline.txt").read_text()
    # the tokens trained (whole batches), not the configured budget
    assert ("student tokens 397,312; learning rate 0.003 (logit), 0.001 (logit_hidden); schedule "
            "warmup-stable-decay (20% decay) (logit), cosine (logit_hidden))") in headline  # a branch, a cosine run


def test_sensitivity_sentence_counts_intervals_that_exclude_zero():
    """A difference of -0.0 is no sign: the sentence counts settings whose interval excludes 0, by side."""
    from kdbench.analysis.report import _sensitivity_sentence

    cfg = StatsConfig(reference_arm="logit", candidate_arm="logit_hidden")
    table = pd.DataFrame({"lr": [0.003, 0.008, 0.0015], "diff": [-0.0, 3.0, -2.5],
                          "ci_lo": [-2.3, 1.0, -4.0], "ci_hi": [2.3, 5.0, -0.5]})
    sentence = _sensitivity_sentence(table, cfg)
    assert "ranged from -2.5 to +3.0 points" in sentence
    assert "excluded 0 in 2 of 3 (1 above 0, 1 below)" in sentence
    table[["ci_lo", "ci_hi"]] = [[-1.0, 1.0]] * 3
    assert "excluded 0 in none of the 3." in _sensitivity_sentence(table, cfg)


def _rates(arm: str, frac: float) -> tuple[float, ...]:
    """Rates at `frac` of the way from the floor to the teacher, per task."""
    return tuple(i + frac * (t - i) for i, t in zip(RATES["init"], RATES["teacher"]))


# share of the teacher's gain per budget: logit_hidden learns first, logit 4x later (seed 2 never reaches 90%)
BUDGETS = (1000, 4000, 16000, 64000)
FRACTIONS = {"logit_hidden": [(0.0, 0.95, 1.0, 1.0)] * 3, "ce": [(0.0, 0.05, 0.2, 0.4)] * 3,
             "logit": [(0.0, 0.2, 0.95, 1.0), (0.0, 0.2, 0.95, 1.0), (0.0, 0.1, 0.3, 0.5)]}


def test_budget_curves_open_the_headline_on_tokens_to_the_teacher(models, tmp_path):
    rng = np.random.default_rng(11)
    budgets = {}
    for b, budget in enumerate(BUDGETS):
        budgets[budget] = []
        for arm, per_seed in FRACTIONS.items():
            for seed, fracs in enumerate(per_seed):
                m = ModelEval(f"budgets/b{budget}/students/{arm}/seed{seed}", arm, seed, tmp_path / f"{arm}{seed}b{b}.json")
                _fake_eval(m.eval_path, _rates(arm, fracs[b]), rng)
                budgets[budget].append(m)
    aggregate(models, StatsConfig(), tmp_path / "out", budgets=budgets)
    out = tmp_path / "out"
    headline = (out / "headline.txt").read_text()
    assert headline.startswith("Student tokens to reach 90% of the teacher's gain over the untrained floor")
    assert re.search(r"logit needs \d+\.\d\dx \(95% CI \[\d+\.\d\d, \d+\.\d\d\], 3 paired seeds\) the tokens of "
                     r"logit_hidden \(flagged: seeds censored at the largest budget \(logit_hidden 0 of 3, logit 1 of 3\)",
                     headline), headline
    assert "logit >=" in headline and "per seed" in headline and "ce >=64k (per seed >=64k, >=64k, >=64k)" in headline
    assert "at the largest budget (64,000 tokens) logit_hidden - logit = " in headline
    assert "At the main budget: Experiment 2 (logit_hidden)" in headline
    eff = pd.read_csv(out / "efficiency.csv")
    logit = eff[eff["arm"] == "logit"].set_index("seed")
    assert logit.loc[2, "censored_90"] and logit.loc[2, "tokens_90"] == 64000 and not logit.loc[0, "censored_90"]
    assert (eff.loc[eff["arm"] == "logit_hidden", "tokens_90"] < eff.loc[eff["arm"] == "logit", "tokens_90"].min()).all()
    assert (eff.loc[eff["arm"] == "ce", "censored_90"]).all()
    table = (out / "efficiency.md").read_text()
    assert "| ce | >=" in table and "AUC (points)" in table
    assert (out / "figures" / "learning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from kdbench.tools.docs import results_page

    page = results_page(out)  # the generated results page opens on the answer, then the curves
    assert page.index("> Student tokens") < page.index("![Learning curves](figures/learning.png)") < page.index("| ce | >=")


def test_the_answer_gives_tokens_to_the_teacher_per_task_kind(models, tmp_path):
    """kdb_alpha a knowledge task, kdb_beta a skill task: logit learns the knowledge at 4x logit_hidden's tokens and
    never the skill, so the knowledge ratio is finite and the skill ratio is censored on logit's side."""
    rng = np.random.default_rng(13)
    learns = {"logit_hidden": [(0.0, 1.0, 1.0, 1.0)] * 2, "logit": [(0.0, 0.0, 1.0, 1.0), (0.0, 0.0, 0.0, 0.0)],
              "ce": [(0.0, 0.0, 0.0, 0.0)] * 2}  # per arm, per task: share of the teacher's gain at each budget
    budgets = {}
    for b, budget in enumerate(BUDGETS):
        budgets[budget] = []
        for arm, per_task in learns.items():
            rates = tuple(i + f[b] * (t - i) for i, t, f in zip(RATES["init"], RATES["teacher"], per_task))
            for seed in range(3):
                m = ModelEval(f"budgets/b{budget}/students/{arm}/seed{seed}", arm, seed, tmp_path / f"{arm}{seed}b{b}.json")
                _fake_eval(m.eval_path, rates, rng)
                budgets[budget].append(m)
    cfg = StatsConfig(kinds={"kdb_alpha": "knowledge", "kdb_beta": "skill"})
    aggregate(models, cfg, tmp_path / "out", budgets=budgets)
    headline = (tmp_path / "out" / "headline.txt").read_text()
    sentence = headline[headline.index("Per task kind (tokens to 90% of the teacher's gain on that kind's tasks): "):]
    knowledge, skill = sentence.split("; on skill, ")
    assert re.search(r"on knowledge, logit needs \d\.\d\dx \(95% CI \[[\d.]+, [\d.]+\], 3 paired seeds\) the tokens "
                     r"of logit_hidden \(logit_hidden \d+k, logit \d+k\)$", knowledge), knowledge
    assert "(logit_hidden 3k, logit >=64k; flagged: seeds censored" in skill, skill
    eff = pd.read_csv(tmp_path / "out" / "efficiency.csv")
    assert set(eff["kind"]) == {"overall", "knowledge", "skill"}
    per_kind = eff[eff["arm"] == "logit"].set_index("kind")["censored_90"]
    assert not per_kind["knowledge"].any() and per_kind["skill"].all()


def test_seeds_in_different_regimes_flag_the_comparison(models, tmp_path):
    """One logit seed at the floor, two trained: the primary comparison is flagged in the tables and headline."""
    rng = np.random.default_rng(12)
    changed = []
    for m in models:
        if m.arm == "logit" and m.seed == 0:
            m = ModelEval(m.model, m.arm, m.seed, tmp_path / "logit0.json")
            _fake_eval(m.eval_path, RATES["init"], rng)
        changed.append(m)
    aggregate(changed, StatsConfig(), tmp_path / "out")
    flag = "seeds click: logit_hidden 3 of 3 seeds trained ("
    assert flag in (tmp_path / "out/comparison.md").read_text()
    headline = (tmp_path / "out/headline.txt").read_text()
    assert f"Flagged, {flag}" in headline and "logit 2 of 3 seeds trained" in headline
    assert "| logit | 3 | 2/3 |" in (tmp_path / "out/table.md").read_text()
