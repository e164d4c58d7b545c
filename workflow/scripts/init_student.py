"""Snakemake job: save the seed's initial student weights (shared by every arm)."""
from pathlib import Path

from kdbench.schema.config import StudentConfig, build
from kdbench.io import read_json
from kdbench.snake import run_job
from kdbench.train.student import init_student

cfg = build(StudentConfig, snakemake.params.student, "student")
seq_len = read_json(snakemake.input.info)["seq_len"]
run_job(snakemake, lambda: init_student(cfg, int(snakemake.wildcards.seed), Path(snakemake.input.tokenizer), seq_len,
                                        Path(snakemake.input.teacher), Path(snakemake.output[0])))
