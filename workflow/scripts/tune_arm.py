"""Snakemake job: equal-budget search of one arm's learning rate, temperature and weights on the validation split."""
from pathlib import Path

from kdbench.schema.arms import ArmConfig
from kdbench.cache.capture import Online
from kdbench.schema.config import EvalConfig, TrainConfig, TuningConfig, build
from kdbench.snake import run_job
from kdbench.train.tuning import tune_arm

w, p, i = snakemake.wildcards, snakemake.params, snakemake.input
arm = build(ArmConfig, p.arm, f"arms.{w.arm}")
score = (build(EvalConfig, p.evaluation, "evaluation"), Path(i.tasks[0]) if i.tasks else None) if p.score else None
run_job(snakemake, lambda: tune_arm(
    w.arm, arm, build(TrainConfig, p.train, "student.train"), build(TuningConfig, p.tuning, "tuning"),
    Path(i.init), Path(i.cache), Path(i.val).parent, Path(snakemake.output[0]), Path(p.work), score,
    build(Online, p.online, "online") if p.online else None))
