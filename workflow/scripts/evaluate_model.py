"""Snakemake job: evaluate one model on the held-out suite with lm-eval."""
from pathlib import Path

from kdbench.config import EvalConfig, build
from kdbench.evaluate import evaluate_model
from kdbench.snake import run_job

cfg = build(EvalConfig, snakemake.params.evaluation, "evaluation")
tasks = Path(snakemake.input.tasks[0]) if snakemake.input.tasks else None
run_job(snakemake, lambda: evaluate_model(Path(snakemake.input.model), cfg, Path(snakemake.output[0]), tasks,
                                          Path(snakemake.params.store)))
