"""Snakemake job: run the teacher once and cache what the arms need."""
from pathlib import Path

from kdbench.schema.arms import ArmConfig
from kdbench.cache.capture import cache_teacher
from kdbench.schema.config import CacheConfig, as_dict, build
from kdbench.snake import run_job

p = snakemake.params
cfg = build(CacheConfig, p.cache, "cache")
arms = {name: build(ArmConfig, spec, f"arms.{name}") for name, spec in p.capture.items()}
out = Path(snakemake.output[0])
run_job(snakemake, lambda: cache_teacher(Path(snakemake.input.teacher), Path(snakemake.input.info).parent, cfg, arms,
                                         p.student_layers, p.student_tokens, out, Path(p.work)),
        states={out / "manifest.json": {"settings": as_dict(cfg)}})
