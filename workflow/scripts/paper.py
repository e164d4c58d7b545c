"""Snakemake job: every table and figure of a finished run into paper/ (the why analyses into paper/analysis/)."""
from pathlib import Path

from kdbench.analysis import analyze
from kdbench.arms import ArmConfig
from kdbench.config import AnalysisConfig, StatsConfig, build
from kdbench.report import aggregate, budget_models, model_evals
from kdbench.snake import run_job

i, p = snakemake.input, snakemake.params
cfg = build(StatsConfig, p.stats, "stats")
out = Path(p.out)
budgets = {int(b): m for b, m in p.budgets.items()}


def work() -> None:
    aggregate(model_evals(Path(p.results), p.models), cfg, out, budget_models(Path(p.results), budgets))
    if p.analysis is not None:
        probes = {Path(f).name: Path(f) for f in i.probes}
        arms = {name: build(ArmConfig, spec, f"arms.{name}") for name, spec in p.arms.items()}
        analyze(Path(p.results), cfg, build(AnalysisConfig, p.analysis, "analysis"), arms, p.models, p.controls,
                budgets, probes.get("kl.csv"), probes.get("cka.csv"), out / "analysis")


run_job(snakemake, work)
