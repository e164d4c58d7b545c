"""Task kinds and the teacher's status per task: dead tasks are marked and left out of the answer.

Fake evaluations of five world families (a teacher at chance on context_recall, below chance on
fact_negation, far above it elsewhere) go through `aggregate`; the checks read the written
tables, comparisons and headline.
Run: .venv/bin/python -m pytest tests/test_suite.py -q   (CPU, ~15 s)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdbench.analysis.report import ModelEval, aggregate
from kdbench.analysis.suite import ALIVE, BELOW, DEAD, OVERALL, Suite, kind_group, task_kind, teacher_status
from kdbench.evaluate import FORMAT
from kdbench.io import write_json
from kdbench.schema.config import StatsConfig, build

N_ITEMS = 120
CHOICES = {"kdb_fact_qa": 4, "kdb_induction": 4, "kdb_context_recall": 4, "kdb_fact_negation": 2, "kdb_agreement": 2}
RATES = {  # per task, in CHOICES' order
    "teacher": (0.95, 0.90, 0.25, 0.30, 1.0),
    "ce": (0.30, 0.30, 0.25, 0.50, 0.55),
    "logit": (0.40, 0.40, 0.25, 0.45, 0.60),
    "logit_hidden": (0.85, 0.45, 0.25, 0.35, 0.95),
}


def _fake_eval(path: Path, rates: tuple[float, ...], rng: np.random.Generator) -> None:
    tasks, samples = {}, {}
    for (task, k), rate in zip(CHOICES.items(), rates):
        correct = (rng.permutation(N_ITEMS) < round(rate * N_ITEMS)).astype(float)  # exactly the rate
        samples[task] = [{"doc_id": i, "id": f"{task}-{i}", "acc": c, "acc_norm": c, "n_choices": k, "label": 0,
                          "loglik": [-1.0 + c] + [-1.0] * (k - 1)} for i, c in enumerate(correct)]
        tasks[task] = {"acc": correct.mean(), "acc_stderr": 0.05, "acc_norm": correct.mean(), "acc_norm_stderr": 0.05,
                       "n": N_ITEMS, "task_sha256": "0" * 64, "version": "1.0"}
    write_json(path, {"format": FORMAT, "model_sha256": "0" * 64, "tasks": tasks, "samples": samples})


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[ModelEval]:
    root, rng = tmp_path_factory.mktemp("evals"), np.random.default_rng(5)
    out = [ModelEval("teacher", "teacher", None, root / "teacher.json")]
    out += [ModelEval(f"students/{arm}/seed{seed}", arm, seed, root / f"{arm}{seed}.json")
            for arm in ("ce", "logit", "logit_hidden") for seed in range(3)]
    for m in out:
        _fake_eval(m.eval_path, RATES[m.arm], rng)
    return out


def _aggregate(models, tmp_path: Path, **stats) -> Path:
    aggregate(models, build(StatsConfig, stats, "stats"), tmp_path)
    return tmp_path


def test_kinds_come_from_the_world_and_from_the_config():
    assert task_kind("kdb_fact_qa", {}) == "knowledge"
    assert task_kind("kdb_induction", {}) == "skill" and task_kind("kdb_agreement", {}) == "syntax"
    assert task_kind("arc_challenge", {"arc_challenge": "knowledge"}) == "knowledge"
    assert task_kind("winogrande", {}) == "undeclared"


def test_status_reads_the_teachers_interval_against_chance():
    teacher = pd.DataFrame({"task": ["a", "b", "c", OVERALL], "ci_lo": [60.0, 20.0, 25.0, 0.0],
                            "ci_hi": [70.0, 30.0, 40.0, 100.0]})
    assert teacher_status(teacher, {"a": 0.25, "b": 0.25, "c": 0.5}) == {"a": ALIVE, "b": DEAD, "c": BELOW}


def test_groups_leave_dead_tasks_out_unless_asked():
    kinds = {"q": "knowledge", "i": "skill", "c": "skill", "n": "knowledge"}
    status = {"q": ALIVE, "i": ALIVE, "c": DEAD, "n": BELOW}
    groups = dict(Suite(("q", "i", "c", "n"), kinds, status).groups())
    assert groups[OVERALL] == ["q", "i", "n"]
    assert groups[kind_group("knowledge")] == ["q", "n"] and groups[kind_group("skill")] == ["i"]
    assert dict(Suite(("q", "i", "c", "n"), kinds, status, include_dead=True).groups())[OVERALL] == ["q", "i", "c", "n"]
    every_dead = Suite(("c",), kinds, status)  # nothing alive: overall keeps everything, and says so
    assert dict(every_dead.groups())[OVERALL] == ["c"] and every_dead.tested("c")
    assert "at chance on every task" in every_dead.left_out_sentence()


def test_dead_task_is_marked_and_left_out_of_the_answer(models, tmp_path):
    out = _aggregate(models, tmp_path)
    table = pd.read_csv(out / "table.csv")
    teacher = table[table["arm"] == "teacher"].set_index("task")["mean"]
    alive = ["kdb_fact_qa", "kdb_induction", "kdb_fact_negation", "kdb_agreement"]
    assert teacher[OVERALL] == pytest.approx(np.mean([teacher[t] for t in alive]))  # context_recall left out
    assert teacher[kind_group("skill")] == pytest.approx(teacher["kdb_induction"])
    assert teacher[kind_group("knowledge")] == pytest.approx((teacher["kdb_fact_qa"] + teacher["kdb_fact_negation"]) / 2)
    chance = table[table["arm"] == "chance"].set_index("task")["mean"]
    assert chance[OVERALL] == pytest.approx(np.mean([25, 25, 50, 50]))

    comparisons = pd.read_csv(out / "comparison.csv")
    dead = comparisons[comparisons["task"] == "kdb_context_recall"]
    assert set(dead["role"]) == {"dead"} and dead["p_adj"].isna().all()
    assert (comparisons["role"] == "secondary").sum() == 2 * (len(alive) + 1 + 3) - 1  # tasks, overall, 3 kinds

    headline = (out / "headline.txt").read_text()
    assert "Left out of overall (the teacher is at chance): context_recall." in headline
    assert "4 task families" in headline
    assert "significantly below chance on fact_negation" in headline
    assert "Per task kind (logit_hidden - logit" in headline and "knowledge +" in headline and "syntax +" in headline
    wide = (out / "table.md").read_text()
    assert "context_recall (dead)" in wide and "fact_negation (below chance)" in wide and "overall: skill" in wide
    assert "context_recall (dead)" in (out / "comparison.md").read_text()


def test_include_dead_puts_it_back(models, tmp_path):
    out = _aggregate(models, tmp_path, include_dead=True)
    teacher = pd.read_csv(out / "table.csv").query("arm == 'teacher'").set_index("task")["mean"]
    assert teacher[OVERALL] == pytest.approx(np.mean([teacher[t] for t in CHOICES]))
    headline = (out / "headline.txt").read_text()
    assert "Kept in overall although the teacher is at chance (stats.include_dead): context_recall." in headline
    assert "5 task families" in headline
    assert set(pd.read_csv(out / "comparison.csv").query("task == 'kdb_context_recall'")["role"]) == {"secondary"}


def test_lm_eval_kinds_are_a_setting_and_checked(models, tmp_path):
    with pytest.raises(Exception, match="stats.kinds"):
        build(StatsConfig, {"kinds": {"arc_challenge": "trivia"}}, "stats")
    assert build(StatsConfig, {"kinds": {"arc_challenge": "knowledge"}}, "stats").kinds == {"arc_challenge": "knowledge"}


def test_why_reads_accuracy_per_kind(models):
    from kdbench.analysis import stats, why
    from kdbench.analysis.report import item_frame, load_evals, task_chance

    evals, tasks = load_evals(models)
    items, cfg = item_frame(models, evals, tasks, "acc"), StatsConfig()
    suite = stats.task_suite(items, task_chance(evals, tasks), cfg)
    text = why.sections({"accuracy": stats.arm_means(items, ["teacher", "logit", "logit_hidden"], cfg, suite)}, cfg, {})
    assert text.startswith("## Task kinds\n\nAccuracy per task kind") and "; skill: teacher 90.0 [" in text, text
    assert "syntax: teacher 100.0" in text and "logit_hidden 95.0" in text
    single = Suite.of(["kdb_fact_qa"], cfg)
    table = stats.arm_means(items[items["task"] == "kdb_fact_qa"], ["teacher"], cfg, single)
    assert why.sections({"accuracy": table}, cfg, {}).startswith("No analysis was configured")
