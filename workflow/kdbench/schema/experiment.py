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
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    gpus: int = 0                 # GPUs per training/caching/evaluation job; 0 on CPU-only machines
    tuning: TuningConfig = field(default_factory=TuningConfig)  # optional per-arm search on the validation split
    controls: ControlsConfig = field(default_factory=ControlsConfig)  # random-teacher twins of named arms
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)  # why: fidelity, CKA, budget curves

    @property
    def trains_teacher(self) -> bool:
        return self.teacher.source == "train"

    @property
    def synthetic_suite(self) -> bool:
        return SUITE_ALIAS in self.evaluation.tasks


def load_experiment(config: Mapping[str, Any]) -> Experiment:
    """Build and cross-check the experiment; every error names the config key."""
    exp = build(Experiment, config)
    if not exp.experiment or "/" in exp.experiment:
        raise KdbenchError(f"experiment: {exp.experiment!r} must be a non-empty name without '/'")
    if not exp.seeds or len(set(exp.seeds)) != len(exp.seeds):
        raise KdbenchError(f"seeds: need distinct seeds, got {list(exp.seeds)}")
    if exp.synthetic_suite and exp.data.source != "world":
        raise KdbenchError("evaluation.tasks: 'synthetic' needs data.source 'world' (the suite comes from the world)")
    if exp.tuning.enabled and exp.tuning.seed not in exp.seeds:
        raise KdbenchError(f"tuning.seed: {exp.tuning.seed} is not one of seeds {list(exp.seeds)}")
    for key in ("reference_arm", "candidate_arm"):
        arm = getattr(exp.stats, key)
        if arm not in exp.arms:
            raise KdbenchError(f"stats.{key}: {arm!r} is not an arm; arms: {', '.join(exp.arms)}")
    pretrained = exp.student.init not in ("random", "teacher_layers")  # its depth is the loaded model's
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
    return exp


def control_arms(exp: Experiment) -> dict[str, str]:
    """Control twin name -> the arm it copies ("logit@random" -> "logit")."""
    return {f"{arm}{CONTROL_SUFFIX}": arm for arm in exp.controls.random_teacher}


def budget_arms(exp: Experiment) -> list[str]:
    """The arms of the budget curves: reference, candidate, ce and `analysis.budget_arms` (once each)."""
    if not exp.analysis.budgets:
        return []
    return list(dict.fromkeys((exp.stats.reference_arm, exp.stats.candidate_arm, "ce", *exp.analysis.budget_arms)))


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
