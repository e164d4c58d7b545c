"""Snakemake job: render the synthetic suite as lm-eval task YAMLs with absolute data paths."""
from pathlib import Path

from kdbench.evaluate import render_tasks
from kdbench.snake import run_job

run_job(snakemake, lambda: render_tasks(Path(snakemake.input.suite), Path(snakemake.output[0])))
