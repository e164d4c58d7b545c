"""Snakemake job: every table and figure of a finished run into paper/ (the why analyses into paper/analysis/)."""
from pathlib import Path

from kdbench.analysis.explain import paper
from kdbench.schema.arms import ArmConfig
from kdbench.schema.config import AnalysisConfig, StatsConfig, build
from kdbench.snake import run_job

p = snakemake.params
analysis = build(AnalysisConfig, p.analysis, "analysis") if p.analysis is not None else None
arms = {name: build(ArmConfig, spec, f"arms.{name}") for name, spec in p.arms.items()}
run_job(snakemake, lambda: paper(Path(p.results), Path(p.out), build(StatsConfig, p.stats, "stats"), p.models,
                                 p.budgets, analysis, arms, p.controls))
