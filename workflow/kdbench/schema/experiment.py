"""The whole experiment config as one typed object, checked once before any work starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from kdbench import KdbenchError
from kdbench.schema.arms import CONTROL_SUFFIX, ArmConfig, check_arms
from kdbench.schema.checks import SUITE_ALIAS
from kdbench.schema.config import (AnalysisConfig, CacheConfig, ControlsConfig, DataConfig, EvalConfig, StatsConfig, StudentConfig, TeacherConfig,
                            TokenizerConfig, TuningConfig, WorldConfig, build)
from kdbench.schema.registry import LAYERED, reads

RESERVED = "reference"  # results/reference/: the committed run, copied from results/paper, never run into


@dataclass(frozen=True)
class Experiment:
    experiment: str = "default"   # results/<experiment>/: presets never overwrite each other
    world: WorldConfig = field(default_factory=WorldConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    seeds: tuple[int, ...] = (0, 1, 2)  # at least 3 for seed-level statistics
    cache: CacheConfig = field(default_factory=CacheConfig)
    arms: dict[str, ArmConfig] = field(default_factory=lambda: {"ce": ArmConfig()})  # arm name -> its loss configuration
    # The arms to train, by name; empty: all. A preset cannot delete an arm of the default (config files merge key by
    # key), so it names the ones to run, or drops one with `arms: {NAME: null}`.
    run_arms: tuple[str, ...] = ()
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    gpus: int = 0                 # GPUs per training/caching/evaluation job; 0 on CPU-only machines
    tuning: TuningConfig = field(default_factory=TuningConfig)  # optional per-arm search on the validation split
    controls: ControlsConfig = field(default_factory=ControlsConfig)  # random-teacher twins of named arms
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)  # why: fidelity, CKA, budget curves
    # Run into results/<experiment>/ although its records come from another config (`schema.claim`); off,
    # such a run is refused, naming the keys that differ, so no finished result is replaced by surprise.
    overwrite: bool = False

    @property
    def trains_teacher(self) -> bool:
        return self.teacher.source == "train"

    @property
    def synthetic_suite(self) -> bool:
        return SUITE_ALIAS in self.evaluation.tasks


def chosen_arms(config: Mapping[str, Any]) -> dict[str, Any]:
    """The `arms` section of the arms that run: those `run_arms` names (all when empty), less those set to null
    (also the string "null": Snakemake's `--config` reads nested values as strings)."""
    arms, run = config.get("arms") or {}, config.get("run_arms") or []
    arms = {name: None if spec in (None, "null") else spec for name, spec in arms.items()}
    if not isinstance(run, list):
        raise KdbenchError(f"run_arms: expected a list of arm names, got {run!r}")
    kept = [name for name, spec in arms.items() if spec is not None]
    for i, name in enumerate(run):
        if name not in kept:
            why = f"arms.{name} is null" if name in arms else "not an arm"
            raise KdbenchError(f"run_arms[{i}]: {name!r} cannot run ({why}); arms: {', '.join(kept)}")
    return {name: spec for name, spec in arms.items() if spec is not None and (not run or name in run)}


def load_experiment(config: Mapping[str, Any]) -> Experiment:
    """Build and cross-check the experiment (of the arms that run, `chosen_arms`); every error names the config key."""
    exp = build(Experiment, {**config, "arms": chosen_arms(config)})
    if not exp.experiment or "/" in exp.experiment or exp.experiment.startswith("."):
        raise KdbenchError(f"experiment: {exp.experiment!r} must be a non-empty name without '/' or a leading '.'")
    if exp.experiment == RESERVED:
        raise KdbenchError(f"experiment: {RESERVED!r} is reserved for the committed results (made by `make reference` "
                           "from results/paper); choose another name")
    if not exp.seeds or len(set(exp.seeds)) != len(exp.seeds):
        raise KdbenchError(f"seeds: need distinct seeds, got {list(exp.seeds)}")
    if exp.synthetic_suite and exp.data.source != "world":
        raise KdbenchError("evaluation.tasks: 'synthetic' needs data.source 'world' (the suite comes from the world)")
    if exp.tuning.enabled and exp.tuning.seed not in exp.seeds:
        raise KdbenchError(f"tuning.seed: {exp.tuning.seed} is not one of seeds {list(exp.seeds)}")
    for key in ("reference_arm", "candidate_arm"):
        arm = getattr(exp.stats, key)
        if arm not in exp.arms:
            raise KdbenchError(f"stats.{key}: {arm!r} is not an arm; arms: {', '.join(exp.arms)} (those that run, "
                               "after run_arms and null arms)")
    pretrained = exp.student.init not in ("random", "teacher_layers")  # its depth is the loaded model's
    for key, arch, built in (("teacher.arch", exp.teacher.arch, exp.trains_teacher),
                             ("student.arch", exp.student.arch, not pretrained)):
        if built and arch.d_model % arch.n_head:
            raise KdbenchError(f"{key}.n_head: {arch.n_head} heads do not divide {key}.d_model {arch.d_model}; "
                               "pick a head count that divides the width")
    check_arms(exp.arms, None if pretrained else exp.student.arch.n_layer,
               exp.teacher.arch.n_layer if exp.trains_teacher else None)
    for arm in exp.controls.random_teacher:
        if arm not in exp.arms or not exp.arms[arm].uses_teacher:
            raise KdbenchError(f"controls.random_teacher: {arm!r} is not an arm that reads the teacher; "
                               f"arms that do: {', '.join(a for a, c in exp.arms.items() if c.uses_teacher)}")
    if exp.controls.random_teacher and exp.controls.seed == exp.teacher.seed and exp.trains_teacher:
        raise KdbenchError(f"controls.seed: {exp.controls.seed} equals teacher.seed; the untrained teacher would "
                           "start where the real one did")
    for arm in budget_arms(exp):
        if arm not in exp.arms:
            raise KdbenchError(f"analysis.budgets: the budget curves train arm {arm!r}, which is not in arms")
    batch = exp.student.train.batch_size * exp.data.seq_len
    for key, tokens in (("student.train.tokens", exp.student.train.tokens),
                        *((f"analysis.budgets[{i}]", b) for i, b in enumerate(exp.analysis.budgets))):
        if tokens < batch:
            raise KdbenchError(f"{key}: {tokens:,} tokens is less than one batch ({batch:,} = student.train.batch_size "
                               f"{exp.student.train.batch_size} x data.seq_len {exp.data.seq_len}); give at least {batch:,}")
    trained = [b // batch * batch for b in exp.analysis.budgets]  # whole batches: what the curves are labelled with
    if len(set(trained)) < len(trained):
        raise KdbenchError(f"analysis.budgets: {list(exp.analysis.budgets)} train {trained} tokens in whole batches of "
                           f"{batch:,}; give budgets at least one batch apart")
    return exp


def control_arms(exp: Experiment) -> dict[str, str]:
    """Control twin name -> the arm it copies ("logit@random" -> "logit")."""
    return {f"{arm}{CONTROL_SUFFIX}": arm for arm in exp.controls.random_teacher}


def budget_arms(exp: Experiment) -> list[str]:
    """The arms of the budget curves: reference, candidate, ce (where it is an arm: the no-teacher floor) and
    `analysis.budget_arms` (once each)."""
    if not exp.analysis.budgets:
        return []
    floor = ["ce"] if "ce" in exp.arms else []
    return list(dict.fromkeys((exp.stats.reference_arm, exp.stats.candidate_arm, *floor, *exp.analysis.budget_arms)))


def merged_main(exp: Experiment) -> bool:
    """Branched curves through the main budget, on every seed: the curve runs' branch at the main budget is the
    main student of each curve arm (no second run of it), and every other student trains on the same schedule."""
    return (exp.analysis.curves == "branch" and exp.student.train.tokens in exp.analysis.budgets
            and (exp.analysis.budget_seeds or len(exp.seeds)) >= len(exp.seeds))


def budget_model(exp: Experiment, budget: int, arm: str, seed: int) -> str:
    """The model folder of one point of the budget curves: the main student at the main budget where it is that
    point (separate cosine runs, or `merged_main`), else "budgets/b<N>/students/<arm>/seed<S>"."""
    if budget == exp.student.train.tokens and (exp.analysis.curves == "separate" or merged_main(exp)):
        return f"students/{arm}/seed{seed}"
    return f"budgets/b{budget}/students/{arm}/seed{seed}"


def cached_tokens(exp: Experiment) -> int:
    """Student tokens the real teacher's cache must cover: the main budget or the largest budget curve's."""
    return max((exp.student.train.tokens, *exp.analysis.budgets))


def capture_spec(exp: Experiment) -> dict[str, dict]:
    """The part of each arm that decides what the cache holds (so loss weights never rerun the cache)."""
    spec = {}
    for name, arm in exp.arms.items():
        terms = sorted(t for t in arm.terms if reads([t]) & set(LAYERED))
        if terms:
            spec[name] = {"terms": {t: 1.0 for t in terms}, "layer_map": arm.layer_map}
    return spec
