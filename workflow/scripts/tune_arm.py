"""Snakemake job: equal-budget search of one arm's temperature and weights on the validation split."""
from pathlib import Path

from kdbench.arms import ArmConfig
from kdbench.capture import Online
from kdbench.config import TrainConfig, TuningConfig, build
from kdbench.snake import run_job
from kdbench.tuning import tune_arm

w, p = snakemake.wildcards, snakemake.params
arm = build(ArmConfig, p.arm, f"arms.{w.arm}")
run_job(snakemake, lambda: tune_arm(
    w.arm, arm, build(TrainConfig, p.train, "student.train"), build(TuningConfig, p.tuning, "tuning"),
    Path(snakemake.input.init), Path(snakemake.input.cache), Path(snakemake.input.val).parent,
    Path(snakemake.output[0]), Path(p.work), build(Online, p.online, "online") if p.online else None))
