"""Snakemake job: evaluate one model on the held-out suite with lm-eval."""
from pathlib import Path

from kdbench.schema.config import EvalConfig, as_dict, build
from kdbench.evaluate import evaluate_model
from kdbench.snake import run_job

cfg = build(EvalConfig, snakemake.params.evaluation, "evaluation")
tasks = Path(snakemake.input.tasks[0]) if snakemake.input.tasks else None
out = Path(snakemake.output[0])
stated = {k: v for k, v in as_dict(cfg).items() if k not in ("tasks", "device")}  # tasks hold results; any device
run_job(snakemake, lambda: evaluate_model(Path(snakemake.input.model), cfg, out, tasks, Path(snakemake.params.store)),
        states={out: stated})
