"""Snakemake job: tokenise and pack the corpus into train/val sequences."""
from pathlib import Path

from kdbench.schema.config import DataConfig, build
from kdbench.data.tokens import prepare, read_texts
from kdbench.models.causal_lm import load_tokenizer
from kdbench.snake import run_job

cfg = build(DataConfig, snakemake.params.data, "data")
corpus = Path(snakemake.input.corpus[0]) if snakemake.input.corpus else None
run_job(snakemake, lambda: prepare(read_texts(cfg, corpus), load_tokenizer(snakemake.input.tokenizer), cfg,
                                   Path(snakemake.output.info).parent))
