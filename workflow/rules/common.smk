import re
from pathlib import Path

from snakemake.utils import validate

from kdbench.schema.claim import claim, lost_outputs, stamp_config
from kdbench.schema.checks import check_config_files, check_models, check_paths, check_tasks, student_depth
from kdbench.schema.experiment import (budget_arms, budget_model, cached_tokens, capture_spec, chosen_arms,
                                       control_arms, load_experiment, merged_main)
from kdbench.schema.plan import teacher_mode


check_config_files(workflow.configfiles)  # a key given twice in one file would silently keep the last
config["arms"] = chosen_arms(config)  # the arms that run (run_arms, null arms dropped): what every rule reads
EXP = load_experiment(config)  # strict: unknown keys, types, arms and layer maps fail here, in one line
validate(config, schema="../schemas/config.schema.yaml")
check_paths(EXP)  # local models and corpus files exist
check_tasks(EXP.evaluation.tasks)  # lm-eval names (indexed once per lm-eval version; none for the default)
PRETRAINED = check_models(EXP)  # pretrained models' shapes from their configs: arms and layer maps fit them
TEACHER_MODE = teacher_mode(EXP, PRETRAINED)  # the planned cache fits cache.max_gb; "auto" resolved by the plan

R = f"results/{EXP.experiment}"  # every output of this experiment
# One run per results folder, of one config. Only the main process: jobs that parse the workflow again
# (SLURM job steps) run inside the run that holds the lock.
LOST = []  # outputs records name that are gone: asked for again by rule all, so they are rebuilt
if workflow.is_main_process:
    claim(Path(R), config, EXP.overwrite)
    LOST = lost_outputs(Path(R))


onstart:
    if workflow.is_main_process:
        stamp_config(Path(R), config)  # the config this folder's results are made with, once jobs run


WORK = f"{R}/.work"  # resumable state (checkpoints, partial caches), never a declared output
LOGS = f"logs/{EXP.experiment}"
BENCH = f"benchmarks/{EXP.experiment}"
ARMS = list(EXP.arms)
SEEDS = list(EXP.seeds)
STUDENTS = [f"students/{arm}/seed{seed}" for arm in ARMS for seed in SEEDS]
FLOORS = [f"students/init/seed{seed}" for seed in SEEDS]
MODELS = ["teacher", *FLOORS, *STUDENTS]
# Random-teacher controls: "<arm>@random" twins, distilled from an untrained teacher (rules/analysis.smk).
# They stay out of MODELS, so the headline's comparisons and their Holm family are the same with or without them.
CONTROLS = control_arms(EXP)  # twin -> the arm it copies
CONTROL_STUDENTS = [f"students/{arm}/seed{seed}" for arm in CONTROLS for seed in SEEDS]
# Budget curves: reference, candidate, ce (and analysis.budget_arms) at each budget. "branch": one run per arm
# and seed branches a student at every budget (train_curve), its branch at the main budget being the main student
# where every seed is on the curves (merged_main); "separate": a run per budget (train_budget), the main budget
# reusing the main students.
BUDGETS = sorted(EXP.analysis.budgets)
BRANCHES = EXP.analysis.curves == "branch"
BUDGET_SEEDS = SEEDS[: EXP.analysis.budget_seeds]  # None: all
BUDGET_MODELS = {b: [budget_model(EXP, b, a, s) for a in budget_arms(EXP) for s in BUDGET_SEEDS] for b in BUDGETS}
BUDGET_ONLY = sorted({m for ms in BUDGET_MODELS.values() for m in ms if m.startswith("budgets/")})
# the outputs of train_curve, one student per budget, the main student first where it is one of them (its
# record then sits beside it)
CURVE_BUDGETS = sorted(BUDGETS, key=lambda b: not (merged_main(EXP) and b == EXP.student.train.tokens))
BRANCH_MODELS = [budget_model(EXP, b, "{arm}", "{seed}") for b in CURVE_BUDGETS]  # patterns in {arm} and {seed}
BRANCH_OUTPUTS = [directory(f"{R}/{m}") for m in BRANCH_MODELS]
CURVE_ARMS = budget_arms(EXP) if BRANCHES else []
MAIN_ARMS = [a for a in [*ARMS, *CONTROLS] if not (merged_main(EXP) and a in CURVE_ARMS)]  # train_student's
A = f"{R}/analysis"  # the why analyses (rules/analysis.smk)
PROBES = EXP.analysis.fidelity or EXP.analysis.cka
ANALYSIS = PROBES or bool(CONTROLS) or bool(BUDGETS)


def one_of(names):
    """A wildcard constraint matching exactly these names (none: a pattern nothing matches)."""
    return "|".join(map(re.escape, names)) or "(?!)"


wildcard_constraints:
    arm=one_of([*ARMS, *CONTROLS]),
    seed=r"\d+",
    budget=r"\d+",
    model=r"teacher|(budgets/b\d+/)?students/[A-Za-z0-9_.@-]+/seed\d+",


def base_arm(arm):
    """The arm whose settings a student trains with: a control twin's original, else the arm itself."""
    return CONTROLS.get(arm, arm)


def student_cache(wildcards):
    """The teacher's targets a student reads: its cache, or, online, the teacher model itself."""
    control = wildcards.arm in CONTROLS
    if ONLINE:
        return f"{R}/controls/teacher" if control else f"{R}/teacher"
    return f"{R}/controls/cache" if control else f"{R}/cache"


def student_teacher(wildcards):
    """The teacher whose cache this student must read (train_student refuses any other teacher's cache)."""
    return f"{R}/controls/teacher" if wildcards.arm in CONTROLS else f"{R}/teacher"


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
ONLINE_SPEC = {"cache": config["cache"], "student_tokens": cached_tokens(EXP)} if ONLINE else None
ONLINE_INPUTS = [f"{R}/data/train.npy"] if ONLINE else []  # the sequences the teacher runs over


def tuned(wildcards):
    """The tuning of an arm, when tuning is on (every arm, ce included; a control trains with its arm's)."""
    return [f"{R}/tuning/{base_arm(wildcards.arm)}"] if EXP.tuning.enabled else []


HEADLINE_PAIR = (EXP.stats.reference_arm, EXP.stats.candidate_arm)
SENSITIVITY = [f"{R}/tuning/{arm}" for arm in HEADLINE_PAIR] if EXP.tuning.enabled and EXP.tuning.sensitivity else []


def analysis_outputs():
    """The files rule analyze writes under these settings (name -> path; report items wrapped)."""
    out = {"why": report(f"{A}/why.md", caption="../report/why.rst", category="Answer")}
    tables = []
    if EXP.analysis.fidelity:
        tables.append("fidelity")
        out["fidelity_counts"] = f"{A}/fidelity_counts.csv"
    if EXP.analysis.cka:
        tables.append("cka")
    if CONTROLS:
        tables.append("controls")
    if BUDGETS:
        tables.append("budgets")
    for name in tables:
        out[f"{name}_md"] = report(f"{A}/{name}.md", caption=f"../report/{name}_table.rst", category="Why")
        out[f"{name}_csv"] = f"{A}/{name}.csv"
        out[f"{name}_tex"] = f"{A}/{name}.tex"
        if name != "controls":
            out[f"{name}_png"] = report(f"{A}/figures/{name}.png", caption=f"../report/{name}.rst", category="Why")
            out[f"{name}_pdf"] = f"{A}/figures/{name}.pdf"
    return out
