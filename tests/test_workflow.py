"""The Snakemake workflow: dry run and lint of the default, and the smoke preset end to end.

    .venv/bin/python -m pytest tests/test_workflow.py -v      (the smoke run takes a few minutes)
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from kdbench.cache.store import TeacherCache
from kdbench.io import read_json

from conftest import REPO, SMOKE, snakemake


def job_counts(stdout: str) -> dict[str, int]:
    """The 'Job stats' table Snakemake prints: rule -> job count (the table ends at a blank line)."""
    counts = {}
    for line in stdout.split("Job stats:")[1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def test_default_dry_run_has_every_arm_and_seed(tmp_path):
    out = snakemake("-n", "--cores", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    seeds, controls = len(config["seeds"]), len(config["controls"]["random_teacher"])
    arms = config.get("run_arms") or config["arms"]
    assert counts["train_curve"] == 3 * seeds  # reference, candidate and ce: one run each, a branch per budget
    # the main budget is on the grid: the curve arms' main students are their branches there
    assert config["student"]["train"]["tokens"] in config["analysis"]["budgets"]
    assert counts["train_student"] == (len(arms) + controls) * seeds - counts["train_curve"]
    assert counts["train_teacher"] == counts["cache_teacher"] == 1
    assert counts["evaluate_model"] == 1 + 3 + counts["train_student"]  # the teacher, the floors, the students
    assert counts["evaluate_curve"] == counts["train_curve"]  # a curve run's branches in one job


def test_the_main_students_are_branches_only_where_every_seed_is_on_the_curves():
    from kdbench.schema.experiment import budget_model, load_experiment

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    main = config["student"]["train"]["tokens"]

    def path(**analysis):
        return budget_model(load_experiment({**config, "analysis": {**config["analysis"], **analysis}}), main, "logit", 2)

    assert path() == "students/logit/seed2"  # merged: the branch at the main budget is the main student
    assert path(budget_seeds=2) == f"budgets/b{main}/students/logit/seed2"  # seed 2 has no curve run
    assert path(curves="separate") == "students/logit/seed2"  # separate runs reuse the main (cosine) students
    assert path(budgets=[main // 2, main * 2]) == f"budgets/b{main}/students/logit/seed2"


def test_tuning_adds_one_search_per_arm(tmp_path):
    preset = tmp_path / "tuning.yaml"
    preset.write_text("tuning: {enabled: true, trials: 2}\n")
    out = snakemake("-n", "--cores", "2", "--configfile", str(preset), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert job_counts(out.stdout)["tune_arm"] == len(config["run_arms"] or config["arms"])  # ce's lr too


def test_controls_and_separate_budget_runs_add_their_jobs(tmp_path):
    preset = tmp_path / "why.yaml"
    preset.write_text("run_arms: []\n"  # every configured arm: hidden is a budget arm
                      "controls: {random_teacher: [logit, logit_hidden]}\n"
                      "analysis: {budgets: [100000, 800000, 1600000], curves: separate, budget_arms: [hidden]}\n")
    out = snakemake("-n", "--cores", "2", "--configfile", str(preset), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    seeds = len(config["seeds"])
    assert counts["train_student"] == (len(config["arms"]) + 2) * seeds  # + logit@random, logit_hidden@random
    assert counts["train_budget"] == 2 * 4 * seeds  # 800000 is the main budget: its students are reused
    assert "train_curve" not in counts
    assert counts["init_random_teacher"] == counts["cache_control"] == counts["probe_models"] == counts["analyze"] == 1
    from kdbench.schema.experiment import cached_tokens, load_experiment

    merged = {**config, **yaml.safe_load(preset.read_text())}
    assert cached_tokens(load_experiment(merged)) == 1600000  # the real teacher's cache covers the largest budget


def test_without_controls_every_student_is_a_curve_branch(tmp_path):
    preset = tmp_path / "bare.yaml"  # no twins: train_student has no arm left, and must not claim the curves'
    preset.write_text("controls: {random_teacher: []}\n")
    out = snakemake("-n", "--cores", "2", "--configfile", str(preset), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout)
    assert "train_student" not in counts and "init_random_teacher" not in counts
    seeds = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["seeds"]
    assert counts["train_curve"] == counts["evaluate_curve"] == 3 * len(seeds)  # ce and the headline pair


def test_parsing_the_workflow_imports_no_heavy_library():
    """The Snakefile's own imports (config schema, arms, registry) load without torch, transformers, pandas, seaborn."""
    import subprocess
    import sys

    code = ("import sys, yaml; from kdbench.schema.experiment import capture_spec, load_experiment; "
            f"capture_spec(load_experiment(yaml.safe_load(open({str(REPO / 'config' / 'config.yaml')!r})))); "
            "print(sorted(m for m in ('torch', 'transformers', 'pandas', 'seaborn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_generated_docs_are_current():
    """docs/config.md and the README's results section are what `kdbench docs` writes (run `make docs`)."""
    from kdbench.tools.docs import regenerate

    assert [p.name for p in regenerate(REPO, check=True)] == []


def test_lint_is_clean():
    out = snakemake("--lint", cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr


def test_invalid_config_fails_at_parse_time_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("arms:\n  logit:\n    terms: {ce: 1.0, kl: 1.0}\n")
    out = snakemake("-n", "--cores", "1", "--configfile", str(bad), cwd=tmp_path)
    assert out.returncode != 0 and "arms.logit.terms: unknown loss 'kl'" in out.stdout + out.stderr


@pytest.fixture(scope="module")
def smoke(smoke_run) -> Path:
    return smoke_run.results


@pytest.mark.slow
def test_smoke_run_produces_tables_figures_and_provenance(smoke):
    rows = list(csv.DictReader(open(smoke / "summary.csv")))
    assert {"model", "arm", "seed", "task", "metric", "value", "chance"} <= set(rows[0])
    arms = {r["arm"] for r in rows}
    assert {"teacher", "init", "ce", "logit", "logit_hidden"} <= arms
    tasks = {r["task"] for r in rows}
    assert len(tasks) >= 5
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in rows)
    assert "logit_hidden" in (smoke / "table.md").read_text()
    for fig in ("accuracy", "paired", "curves"):
        assert (smoke / "figures" / f"{fig}.png").stat().st_size > 1000
    for record in ("tokenizer", "teacher", "cache", "students/logit_hidden/seed1", "eval/teacher/results.json",
                   "summary.csv"):
        prov = read_json(smoke / f"{record}.prov.json")
        assert prov["outputs"] and prov["code"] and prov["environment"]["packages"]["torch"]
    TeacherCache(smoke / "cache", verify=True)


@pytest.mark.slow
def test_smoke_run_produces_every_analysis(smoke):
    """Controls, fidelity, CKA and budget curves end to end, with why.md, the report pieces and provenance."""
    a = smoke / "analysis"
    for name in ("fidelity", "cka", "controls", "budgets"):
        for ext in ("csv", "md", "tex"):
            assert (a / f"{name}.{ext}").stat().st_size > 100, name
    for fig in ("fidelity", "cka", "budgets"):
        for ext in ("png", "pdf"):
            assert (a / "figures" / f"{fig}.{ext}").stat().st_size > 1000
    why = (a / "why.md").read_text()
    for clause in ("## Controls", "random-teacher controls", "## Fidelity and inherited errors", "teacher got wrong",
                   "## Representations", "Linear CKA", "## Budget", "Budget curves"):
        assert clause in why, clause
    cka = list(csv.DictReader(open(a / "cka.csv")))
    assert {"init", "ce", "logit", "logit_hidden", "logit_hidden@random"} <= {r["arm"] for r in cka}
    fidelity = list(csv.DictReader(open(a / "fidelity.csv")))
    assert {r["arm"] for r in fidelity} >= {"init", "ce", "logit_hidden", "logit_hidden@random"}
    budgets = list(csv.DictReader(open(a / "budgets.csv")))
    assert {(int(r["budget"]), r["arm"]) for r in budgets} == {(b, arm) for b in (4096, 9216, 19456)  # tokens trained:
                                                              for arm in ("logit", "logit_hidden", "ce")}  # 1,024 a step
    assert all(float(r["flops"]) > 0 for r in budgets)
    assert (smoke / "headline.txt").read_text().startswith("Student tokens to reach 90% of the teacher's gain")
    assert (smoke / "efficiency.md").is_file() and "<img" in (smoke / "landing" / "learning.html").read_text()
    branch = read_json(smoke / "budgets" / "b10000" / "students" / "logit" / "seed0" / "train.json")
    assert branch["config"]["tokens"] == 10000 and branch["branch"]["decay_steps"] > 0
    other = read_json(smoke / "students" / "logit_hidden_attn" / "seed0" / "train.json")  # no curve: the same schedule
    assert other["branch"]["decay_steps"] == read_json(smoke / "students" / "logit" / "seed0" / "train.json")[
        "branch"]["decay_steps"] > 0
    control = read_json(smoke / "controls" / "cache" / "manifest.json")
    assert control["teacher_sha256"] != read_json(smoke / "cache" / "manifest.json")["teacher_sha256"]
    train = read_json(smoke / "students" / "logit_hidden@random" / "seed0" / "train.json")
    assert train["flops"]["teacher_forward"] > 0 and train["flops"]["projector"] > 0
    assert read_json(smoke / "students" / "ce" / "seed0" / "train.json")["flops"]["teacher_forward"] == 0
    assert "<p" in (smoke / "landing" / "why.html").read_text()
    for record in ("analysis/why.md", "analysis/probes/kl.csv", "controls/teacher", "controls/cache",
                   "students/logit/seed0"):  # a curve job's record: beside its first output, the main student
        assert read_json(smoke / f"{record}.prov.json")["outputs"], record


@pytest.mark.slow
def test_smoke_run_passes_the_audit(smoke):
    from kdbench.tools.audit import audit

    result = audit(smoke)
    assert result.ok, result.problems[:5]
    audited = {a.path for a in result.artifacts}
    assert {"analysis/why.md", "analysis/probes/cka.csv", "controls/cache", "controls/teacher",
            "students/logit_hidden@random/seed0", "budgets/b10000/students/ce/seed1"} <= audited


@pytest.mark.slow
def test_smoke_rerun_has_nothing_to_do(smoke):
    out = snakemake("-n", "--cores", "2", "--configfile", str(SMOKE), cwd=smoke.parents[1])
    assert out.returncode == 0 and "Nothing to be done" in out.stdout + out.stderr


@pytest.mark.slow
def test_a_deleted_output_of_a_finished_run_is_rebuilt(smoke, tmp_path):
    """An evaluation deleted from a finished run (a copy of it) comes back with the next run, and so does what reads it."""
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(smoke.parents[1], root, symlinks=True)  # mtimes kept: the copy is as up to date as the run
    lost = root / "results" / "smoke" / "eval" / "teacher" / "results.json"
    before = lost.read_bytes()
    lost.unlink()
    out = snakemake("--cores", "2", "--configfile", str(SMOKE), cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "kdbench: rebuilding 1 deleted output(s) of results/smoke, e.g. results/smoke/eval/teacher/results.json" \
        in out.stderr
    assert lost.read_bytes() == before
    counts = job_counts(out.stdout + out.stderr)
    assert counts["evaluate_model"] == counts["aggregate"] == 1
    again = snakemake("-n", "--cores", "2", "--configfile", str(SMOKE), cwd=root)
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_paper_target_regenerates_without_training(smoke):
    root = smoke.parents[1]
    out = snakemake("paper", "--cores", "2", "--configfile", str(SMOKE), cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    counts = job_counts(out.stdout + out.stderr)
    assert counts.get("paper") == 1 and set(counts) <= {"paper", "total"}
    paper = smoke / "paper"
    assert (paper / "summary.csv").read_text() == (smoke / "summary.csv").read_text()
    assert (paper / "figures" / "paired.pdf").stat().st_size > 1000
    assert (paper / "analysis" / "why.md").read_text() == (smoke / "analysis" / "why.md").read_text()


@pytest.mark.slow
def test_kdbench_paper_regenerates_a_shared_folder_without_models(smoke, tmp_path):
    """`kdbench paper` on a copy without models and caches (as results/reference ships) writes the same answer."""
    import shutil

    from kdbench.cli import main

    shared = tmp_path / "shared"
    shutil.copytree(smoke, shared, ignore=shutil.ignore_patterns("model.safetensors", "*.npy", ".work", "paper"))
    assert main(["paper", str(shared)]) == 0
    for name in ("headline.txt", "table.md", "comparison.md", "analysis/why.md"):
        assert (shared / "paper" / name).read_text() == (smoke / name).read_text(), name


@pytest.mark.slow
def test_html_report_builds(smoke):
    root = smoke.parents[1]
    out = snakemake("--report", str(root / "report.html"), "--configfile", str(SMOKE), cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    html = (root / "report.html").read_text(errors="ignore")
    assert "Figures" in html and "Tables" in html


@pytest.mark.slow
def test_branch_benchmark_compares_branches_with_separate_runs(smoke, tmp_path):
    """`kdbench.bench branches` on the smoke run: separate cosine runs (trained here, with the run's tuned settings)
    against the branches of the same length, the main budget's being the main students."""
    from kdbench.tools.retrain import bench_branches

    result = bench_branches(smoke, [10000, 20000], SMOKE, tmp_path)
    for budget in ("10000", "20000"):
        rows = result["budgets"][budget]
        assert set(rows) == {"logit", "logit_hidden", "ce"}
        for row in rows.values():
            assert len(row["branch"]) == len(row["separate"]) == 2 and row["seed_half_width"] >= 0
            assert abs(row["diff"] - (np.mean(row["branch"]) - np.mean(row["separate"]))) < 0.02
    trained = read_json(tmp_path / "b10000" / "logit" / "seed0" / "train.json")
    assert trained["config"]["tokens"] == 10000 and trained["config"]["lr"] == read_json(
        smoke / "tuning" / "logit" / "tuning.json")["lr"]
    main = read_json(tmp_path / "b20000" / "logit" / "seed0" / "train.json")  # a cosine run, not the branch
    assert "branch" not in main and "branch" in read_json(smoke / "students" / "logit" / "seed0" / "train.json")
