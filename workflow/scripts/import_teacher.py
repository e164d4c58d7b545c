"""Snakemake job: copy a pretrained teacher (hub id or directory) into the results tree."""
from pathlib import Path

from kdbench.snake import run_job
from kdbench.train.teacher import import_teacher

run_job(snakemake, lambda: import_teacher(snakemake.params.source, Path(snakemake.output[0]),
                                            snakemake.params.revision))
