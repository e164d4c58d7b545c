"""Snakemake job: turn every evaluation into tables, statistics and figures."""
from pathlib import Path

from kdbench.schema.config import StatsConfig, build
from kdbench.analysis.report import aggregate, budget_models, model_evals
from kdbench.snake import run_job

p = snakemake.params
cfg = build(StatsConfig, p.stats, "stats")
tuning = Path(p.results) / "tuning" if snakemake.input.tuning else None  # tuning.sensitivity: the headline pair
run_job(snakemake, lambda: aggregate(model_evals(Path(p.results), p.models), cfg, Path(p.out), tuning,
                                     budget_models(Path(p.results), p.budgets)))
