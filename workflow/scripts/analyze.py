"""Snakemake job: the why analyses (controls, fidelity, CKA, budget curves) and why.md."""
from pathlib import Path

from kdbench.analysis.explain import analyze
from kdbench.schema.arms import ArmConfig
from kdbench.schema.config import AnalysisConfig, StatsConfig, build
from kdbench.snake import run_job

i, p = snakemake.input, snakemake.params
cfg = build(StatsConfig, p.stats, "stats")
analysis = build(AnalysisConfig, p.analysis, "analysis")
arms = {name: build(ArmConfig, spec, f"arms.{name}") for name, spec in p.arms.items()}
probes = {Path(f).name: Path(f) for f in i.probes}
run_job(snakemake, lambda: analyze(Path(p.results), cfg, analysis, arms, p.models, p.controls,
                                   {int(b): m for b, m in p.budgets.items()}, probes.get("kl.csv"),
                                   probes.get("cka.csv"), Path(p.out)))
