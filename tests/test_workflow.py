"""The Snakemake workflow: dry run and lint of the default, and the smoke preset end to end.

    .venv/bin/python -m pytest tests/test_workflow.py -v      (the smoke run takes a few minutes)
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from kdbench.cache import TeacherCache
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
    assert counts["train_student"] == len(config["arms"]) * len(config["seeds"])
    assert counts["train_teacher"] == counts["cache_teacher"] == 1
    assert counts["evaluate_model"] == 1 + 3 + counts["train_student"]


def test_tuning_adds_one_search_per_arm(tmp_path):
    preset = tmp_path / "tuning.yaml"
    preset.write_text("tuning: {enabled: true, trials: 2}\n")
    out = snakemake("-n", "--cores", "2", "--configfile", str(preset), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert job_counts(out.stdout)["tune_arm"] == len(config["arms"])  # ce tunes its learning rate too


def test_parsing_the_workflow_imports_no_heavy_library():
    """The Snakefile's own imports (config schema, arms, registry) load without torch, transformers, pandas, seaborn."""
    import subprocess
    import sys

    code = ("import sys, yaml; from kdbench.experiment import capture_spec, load_experiment; "
            f"capture_spec(load_experiment(yaml.safe_load(open({str(REPO / 'config' / 'config.yaml')!r})))); "
            "print(sorted(m for m in ('torch', 'transformers', 'pandas', 'seaborn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_generated_docs_are_current():
    """docs/config.md and the README's results section are what `kdbench docs` writes (run `make docs`)."""
    from kdbench.docs import regenerate

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
    assert len(tasks) >= 6
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
def test_smoke_rerun_has_nothing_to_do(smoke):
    out = snakemake("-n", "--cores", "2", "--configfile", str(SMOKE), cwd=smoke.parents[1])
    assert out.returncode == 0 and "Nothing to be done" in out.stdout + out.stderr


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


@pytest.mark.slow
def test_html_report_builds(smoke):
    root = smoke.parents[1]
    out = snakemake("--report", str(root / "report.html"), "--configfile", str(SMOKE), cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    html = (root / "report.html").read_text(errors="ignore")
    assert "Figures" in html and "Tables" in html
