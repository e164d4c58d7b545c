"""Snakemake job: train the teacher on the corpus."""
from pathlib import Path

from kdbench.config import TeacherConfig, build
from kdbench.snake import run_job
from kdbench.teacher import train_teacher

cfg = build(TeacherConfig, snakemake.params.teacher, "teacher")
run_job(snakemake, lambda: train_teacher(cfg, Path(snakemake.input.info).parent, Path(snakemake.input.tokenizer),
                                         Path(snakemake.output[0]), Path(snakemake.params.work)))
