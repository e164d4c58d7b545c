"""Snakemake job: train the byte-level BPE tokenizer on the corpus."""
from pathlib import Path

from kdbench.schema.config import DataConfig, TokenizerConfig, build
from kdbench.data.tokens import read_texts
from kdbench.snake import run_job
from kdbench.data.tokenizer import train_tokenizer

data = build(DataConfig, snakemake.params.data, "data")
cfg = build(TokenizerConfig, snakemake.params.tokenizer, "tokenizer")
corpus = Path(snakemake.input.corpus[0]) if snakemake.input.corpus else None
run_job(snakemake, lambda: train_tokenizer(read_texts(data, corpus), cfg, Path(snakemake.output[0])))
