from pathlib import Path

from snakemake.utils import validate

from kdbench.checks import check_config_files, check_models, check_paths, check_tasks, student_depth
from kdbench.experiment import capture_spec, load_experiment
from kdbench.plan import teacher_mode


check_config_files(workflow.configfiles)  # a key given twice in one file would silently keep the last
validate(config, schema="../schemas/config.schema.yaml")
EXP = load_experiment(config)  # strict: unknown keys, types, arms and layer maps fail here
check_paths(EXP)  # local models and corpus files exist
check_tasks(EXP.evaluation.tasks)  # lm-eval names (indexed once per lm-eval version; none for the default)
PRETRAINED = check_models(EXP)  # pretrained models' shapes from their configs: arms and layer maps fit them
TEACHER_MODE = teacher_mode(EXP, PRETRAINED)  # the planned cache fits cache.max_gb; "auto" resolved by the plan

R = f"results/{EXP.experiment}"  # every output of this experiment
WORK = f"{R}/.work"  # resumable state (checkpoints, partial caches), never a declared output
LOGS = f"logs/{EXP.experiment}"
BENCH = f"benchmarks/{EXP.experiment}"
ARMS = list(EXP.arms)
SEEDS = list(EXP.seeds)
STUDENTS = [f"students/{arm}/seed{seed}" for arm in ARMS for seed in SEEDS]
FLOORS = [f"students/init/seed{seed}" for seed in SEEDS]
MODELS = ["teacher", *FLOORS, *STUDENTS]


wildcard_constraints:
    arm="|".join(ARMS),
    seed=r"\d+",
    model=r"teacher|students/[A-Za-z0-9_.-]+/seed\d+",


def corpus_files(wildcards):
    """The corpus file the data step reads: the world's, a local file, or none (a hub dataset)."""
    if EXP.data.source == "world":
        return [f"{R}/world/corpus.jsonl"]
    return [EXP.data.source] if Path(EXP.data.source).exists() else []


def student_section():
    """The student section without the training settings: what decides the initial weights."""
    return {k: v for k, v in config["student"].items() if k != "train"}


ENV = "../../envs/kdbench.yaml"  # one environment, the exact pins of envs/requirements.lock
GPUS = EXP.gpus  # GPUs per training, caching and evaluation job (0: CPU); the SLURM profile turns it into --gpus


def rendered_tasks(wildcards):
    return [f"{R}/eval/tasks"] if EXP.synthetic_suite else []


ONLINE = TEACHER_MODE == "online"
# What students read the teacher's targets from, and how: the cache, or the teacher itself run in their job.
TEACHER_TARGETS = f"{R}/teacher" if ONLINE else f"{R}/cache"
ONLINE_SPEC = {"cache": config["cache"], "student_tokens": EXP.student.train.tokens} if ONLINE else None
ONLINE_INPUTS = [f"{R}/data/train.npy"] if ONLINE else []  # the sequences the teacher runs over


def tuned(wildcards):
    """The tuning of an arm, when tuning is on (every arm is tuned, ce included)."""
    return [f"{R}/tuning/{wildcards.arm}"] if EXP.tuning.enabled else []


HEADLINE_PAIR = (EXP.stats.reference_arm, EXP.stats.candidate_arm)
SENSITIVITY = [f"{R}/tuning/{arm}" for arm in HEADLINE_PAIR] if EXP.tuning.enabled and EXP.tuning.sensitivity else []
