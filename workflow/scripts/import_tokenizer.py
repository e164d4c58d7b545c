"""Snakemake job: save a pretrained teacher's tokenizer."""
from pathlib import Path

from kdbench.snake import run_job
from kdbench.train.teacher import import_tokenizer

run_job(snakemake, lambda: import_tokenizer(snakemake.params.source, Path(snakemake.output[0]),
                                              snakemake.params.revision))
