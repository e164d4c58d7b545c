"""Snakemake job: generate the embedded synthetic world (corpus + held-out task suite)."""
from pathlib import Path

from kdbench.schema.config import WorldConfig, build
from kdbench.snake import run_job
from kdbench.data.world import generate_world

cfg = build(WorldConfig, snakemake.params.world, "world")
run_job(snakemake, lambda: generate_world(cfg, Path(snakemake.output.corpus).parent))
