"""Snakemake job: evaluate models on the held-out suite with lm-eval: one (rule evaluate_model) or every branch of
a curve run (rule evaluate_curve), one output per model, in one process."""
from pathlib import Path

from kdbench.schema.config import EvalConfig, as_dict, build
from kdbench.evaluate import evaluate_model
from kdbench.snake import run_job

cfg = build(EvalConfig, snakemake.params.evaluation, "evaluation")
tasks = Path(snakemake.input.tasks[0]) if snakemake.input.tasks else None
outs = [Path(o) for o in snakemake.output]
models = [Path(m) for m in snakemake.input[: len(outs)]]  # the models come first, in the order of the outputs
stated = {k: v for k, v in as_dict(cfg).items() if k not in ("tasks", "device")}  # tasks hold results; any device


def evaluate() -> None:
    for model, out in zip(models, outs):
        evaluate_model(model, cfg, out, tasks, Path(snakemake.params.store))


run_job(snakemake, evaluate, states={out: stated for out in outs})
