"""Snakemake job: train the teacher on the corpus."""
from pathlib import Path

from kdbench.schema.config import TeacherConfig, as_dict, build
from kdbench.snake import run_job
from kdbench.train.teacher import train_teacher

cfg = build(TeacherConfig, snakemake.params.teacher, "teacher")
out = Path(snakemake.output[0])
run_job(snakemake, lambda: train_teacher(cfg, Path(snakemake.input.info).parent, Path(snakemake.input.tokenizer), out,
                                         Path(snakemake.params.work)),
        states={out / "train.json": {"config": as_dict(cfg)}})
