"""Snakemake job: train one arm for one seed from the teacher cache (torchrun when gpu > 1). With `budgets`, a
warmup-stable-decay run that branches a student at every budget (one output per budget): rule train_curve, and
train_student where the curves branch (the same schedule, one budget).

The cache must be the given teacher's (a control's cache is never read as the real teacher's).
"""
from dataclasses import replace
from pathlib import Path

from kdbench.schema.arms import ArmConfig
from kdbench.cache.capture import Online
from kdbench.schema.config import TrainConfig, as_dict, build
from kdbench.provenance import weights_sha256
from kdbench.snake import run_job
from kdbench.train.student import train_student_distributed
from kdbench.train.tuning import tuned

w, p = snakemake.wildcards, snakemake.params
arm = build(ArmConfig, p.arm, f"arms.{w.arm}")
cfg = build(TrainConfig, p.train, "student.train")
if snakemake.input.tuned:  # the trial that won on validation loss
    arm, cfg = tuned(Path(snakemake.input.tuned[0]), w.arm, cfg)
out = Path(snakemake.output[0])
budgets = p.budgets or [cfg.tokens]  # train_curve: one output per budget, in the order given
branches = dict(zip(budgets, map(Path, snakemake.output))) if p.budgets else None  # warmup-stable-decay
run_job(snakemake, lambda: train_student_distributed(
    snakemake.resources.gpu, w.arm, arm, cfg, int(w.seed), Path(snakemake.input.init), Path(snakemake.input.cache),
    Path(snakemake.input.val).parent, out, Path(p.work), build(Online, p.online, "online") if p.online else None,
    weights_sha256(Path(snakemake.input.teacher)), branches=branches, decay=p.decay),
    states={Path(o) / "train.json": {"arm": w.arm, "seed": int(w.seed), "config": as_dict(replace(cfg, tokens=b)),
                                     "arm_config": as_dict(arm)} for b, o in zip(budgets, snakemake.output)})
