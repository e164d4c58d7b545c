"""Snakemake job: the untrained teacher of the random-teacher controls (the real teacher's architecture, its own seed)."""
from pathlib import Path

from kdbench.snake import run_job
from kdbench.train.teacher import random_teacher

run_job(snakemake, lambda: random_teacher(Path(snakemake.input.teacher), snakemake.params.seed,
                                          Path(snakemake.output[0])))
