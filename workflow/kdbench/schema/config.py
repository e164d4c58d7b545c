"""The config schema: one frozen dataclass per config section, and the strict parser that builds them.

Every key of `config/config.yaml` is a field below, with its default and a comment saying why
(`docs/config.md` is generated from these classes). `build(cls, data)` rejects unknown keys
(naming the allowed ones), wrong types and values outside a `Literal`, always naming the dotted
key path, so a typo fails before any work starts. This module imports nothing heavy: the
workflow parses it on every Snakemake invocation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
import types
import typing
from typing import Any, Literal, Mapping, TypeVar, Union

from kdbench import KdbenchError

T = TypeVar("T")


class ConfigError(KdbenchError):
    """A config value is missing, unknown or of the wrong type."""


WorldFamily = Literal["fact_qa", "fact_paraphrase", "fact_negation", "context_recall", "induction", "comparison",
                      "agreement"]
TaskKind = Literal["knowledge", "skill", "syntax"]  # facts seen in training; the context alone; grammar
DocType = Literal["bio", "qa", "negation", "context", "induction", "comparison", "agreement"]
LAYERED = ("hidden", "attention_qk", "qkv")  # the cache's layered components (what cache.layer_rank compacts)
ENTITIES = (8, 96)  # both Q/A halves need 4 people; names come from a fixed list of 96


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 1234  # one seed fixes the whole world; components derive named sub-seeds from it
    n_entities: int = 32  # few enough that each fact is stated 160+ times in biographies of a 1M-token corpus
    n_docs: int = 20000  # about 1.0M tokens with the default 1024-token BPE
    items_per_task: int = 300  # per family; the fact families are capped by the held-out facts (224 by default)
    # The families of the suite. Left out of the default: fact_negation (the teacher answers the true value after
    # "not", below chance) and comparison (at chance).
    families: tuple[WorldFamily, ...] = ("fact_qa", "fact_paraphrase", "context_recall", "induction", "agreement")
    # The in-context skills need as large a share as the parametric facts: with 22% context passages the teacher
    # scored 37% on context_recall, with 30% 49% (docs/benchmarks.md: teacher accuracy per family by mix); types
    # left out get no documents.
    mix: dict[DocType, float] = field(default_factory=lambda: {
        "bio": 0.30, "qa": 0.08, "context": 0.30, "induction": 0.22, "agreement": 0.10})

    def __post_init__(self) -> None:
        lo, hi = ENTITIES
        _check(lo <= self.n_entities <= hi, f"world.n_entities: {self.n_entities} is out of range; allowed: {lo}..{hi}")
        for key in ("n_docs", "items_per_task"):
            _check(getattr(self, key) >= 1, f"world.{key}: {getattr(self, key)} must be at least 1")
        _check(bool(self.families) and len(set(self.families)) == len(self.families),
               f"world.families: {list(self.families)} must name distinct task families")
        for key, share in self.mix.items():
            _check(share >= 0, f"world.mix.{key}: {share} must be a share >= 0")
        _check(sum(self.mix.values()) > 0, "world.mix: at least one document type needs a positive share")


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 1024  # small world vocabulary; BPE may stop below this
    min_frequency: int = 2  # a pair seen once is noise, not vocabulary

    def __post_init__(self) -> None:
        _check(self.vocab_size >= 257, f"tokenizer.vocab_size: {self.vocab_size} is too small; allowed: >= 257 "
                                       "(256 byte symbols + end of text)")
        _check(self.min_frequency >= 1, f"tokenizer.min_frequency: {self.min_frequency} must be at least 1")


@dataclass(frozen=True)
class DataConfig:
    source: str = "world"       # "world" (embedded synthetic corpus), a local .txt/.jsonl file, or a HF dataset id
    text_field: str = "text"    # field holding the text in jsonl / HF datasets
    hf_name: str | None = None  # HF dataset configuration name
    hf_split: str = "train"     # HF dataset split read as the corpus
    max_docs: int | None = None  # cap on documents read (None: all)
    seq_len: int = 128           # tokens per training sequence
    val_fraction: float = 0.02   # held-out sequences for validation loss (never the evaluation suite)
    revision: str | None = None  # HF dataset commit/tag: pin a commit so a rerun reads the same documents
    seed: int = 0                # which sequences go to validation


@dataclass(frozen=True)
class ArchConfig:
    family: Literal["gpt2", "llama", "gpt_neox"] = "gpt2"  # GPT-2 is the smallest well-supported causal LM
    n_layer: int = 2        # transformer blocks
    d_model: int = 128      # hidden width
    n_head: int = 2         # attention heads (d_model must divide by it)
    d_ff: int | None = None  # None: 4 x d_model, the usual ratio


@dataclass(frozen=True)
class TrainConfig:
    tokens: int = 1_000_000      # token budget: identical for every arm of a comparison
    batch_size: int = 32         # sequences per step
    lr: float = 2e-3             # peak learning rate (AdamW)
    min_lr_ratio: float = 0.1    # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 30       # linear warm-up
    weight_decay: float = 0.1    # on matrices only
    grad_clip: float = 1.0       # max global grad norm
    autocast: bool = True        # bfloat16 autocast where the hardware has it (see `devices.bf16_autocast`)
    checkpoint_every: int = 100  # steps between resumable checkpoints
    log_every_s: float = 5.0     # seconds between progress lines
    curve_every: int = 10        # steps between recorded curve points
    val_seqs: int = 64           # validation sequences for the held-out loss

    def steps(self, seq_len: int) -> int:
        return max(1, self.tokens // (self.batch_size * seq_len))


@dataclass(frozen=True)
class TeacherConfig:
    source: str = "train"  # "train": trained here on the corpus; else a HF hub id or a local model directory
    arch: ArchConfig = field(default_factory=lambda: ArchConfig(n_layer=4, d_model=256, n_head=4))  # when trained here
    train: TrainConfig = field(default_factory=lambda: TrainConfig(tokens=2_000_000, lr=1e-3))  # when trained here
    seed: int = 0          # initialisation and data order of the teacher
    revision: str | None = None  # hub commit/tag of an imported teacher: pin a commit so a rerun gets the same weights
    # "cache": run the teacher once and store its targets (disk, once); "online": every student job runs it
    # (no disk, one teacher forward per student step); the targets are the same either way. "auto": cache
    # when the planned cache fits cache.max_gb, else online (`kdbench plan` shows both costs).
    mode: Literal["cache", "online", "auto"] = "cache"


@dataclass(frozen=True)
class StudentConfig:
    arch: ArchConfig = field(default_factory=ArchConfig)  # the same for every arm
    init: str = "random"  # "random", "teacher_layers" (DistilBERT-style copy), or a pretrained model id/dir
    train: TrainConfig = field(default_factory=TrainConfig)  # the same budget and schedule for every arm
    revision: str | None = None  # hub commit/tag of a pretrained init: pin a commit so a rerun starts the same


@dataclass(frozen=True)
class CacheConfig:
    top_k: int = 32                 # 4k + 4 bytes/token of logits; KL to the full distribution in fidelity.json
    # bf16 keeps the range of activations. int8 stores D + 4 bytes per token and layer, not 2D: values scaled by
    # their row's absmax / 127, the scale kept as float32; 0.8% relative RMS error vs 0.17% for bf16 on the paper
    # preset's teacher (fidelity.json reports it for the dtype in use). q/k/v stay bf16 under int8.
    hidden_dtype: Literal["bfloat16", "float16", "int8"] = "bfloat16"
    # Compaction of the layered components (hidden states, attention q/k, q/k/v): 0 is off; r > 0 stores each
    # teacher layer's vector as r int8 coefficients plus a float32 scale (r + 4 bytes per token and layer, against
    # 2 x width) in a basis fitted by PCA on the first teacher batch (compacted hidden states ignore hidden_dtype). One
    # rank for all, or per component ({hidden: 64, attention_qk: 256}; one left out is stored exact). Choose r by the
    # explained variance and loss/gradient errors in fidelity.json: at 128, 18.6 kB/token of the pythia preset's
    # layer targets become 0.8 kB.
    layer_rank: int | dict[str, int] = 0
    shard_seqs: int = 256           # sequences per shard: the unit of resume and of checksums
    batch_size: int = 32            # teacher forward batch
    forward_dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16 autocast on GPUs
    # Disk the planned cache may take, checked at parse time: a larger one is refused (teacher.mode cache) or
    # replaced by an online teacher (auto). 200 GB: a node-local NVMe share, far above every CPU preset.
    max_gb: float = 200.0

    def __post_init__(self) -> None:
        _check(self.max_gb > 0, f"cache.max_gb: {self.max_gb} must be a positive number of GB")
        ranks = self.layer_rank if isinstance(self.layer_rank, dict) else {}
        unknown = sorted(set(ranks) - set(LAYERED))
        if unknown:
            raise ConfigError(f"cache.layer_rank: unknown component {unknown[0]!r}; allowed: {', '.join(LAYERED)}")
        for name in LAYERED:
            _check(self.rank(name) >= 0,
                   f"cache.layer_rank: {self.rank(name)} for {name} must be >= 0 (0: not compacted)")

    def rank(self, component: str) -> int:
        """The compaction rank of a layered component (`LAYERED`); 0: stored exact."""
        return self.layer_rank.get(component, 0) if isinstance(self.layer_rank, dict) else self.layer_rank


@dataclass(frozen=True)
class EvalConfig:
    # "synthetic" = the rendered local suite; other names are lm-eval tasks run the same way.
    tasks: tuple[str, ...] = ("synthetic",)
    # Fixed, never "auto": padding differs with batch size, so results could drift with it.
    batch_size: int = 32
    # Items per task for smoke runs; None = all. Part of the evaluation store's key.
    limit: int | None = None
    # "auto": cuda when a GPU is visible (the job's own under SLURM), else cpu; or "cpu", "cuda:1", ...
    # Not part of the store's key: on an H100, CPU and CUDA log-likelihoods agreed to 6e-6 and no
    # item's answer changed.
    device: str = "auto"
    # float32 keeps CPU and GPU scores comparable; part of the store's key.
    dtype: str = "float32"


@dataclass(frozen=True)
class StatsConfig:
    # Experiment 1 (logit KD): every other arm is compared against it.
    reference_arm: str = "logit"
    # Experiment 2 (logit + hidden-state KD): the arm the headline asks about; vs the
    # reference, overall, it is the single primary (unadjusted) test.
    candidate_arm: str = "logit_hidden"
    # "acc" or "acc_norm" (length-normalised); acc is the registered primary metric.
    metric: Literal["acc", "acc_norm"] = "acc"
    # Two-sided confidence level; 1 - ci is also the significance level of every test and of the MDE.
    ci: float = 0.95
    # Power at which the minimal detectable difference (MDE) is reported: 0.8 is the usual planning target.
    power: float = 0.8
    # The kind of each lm-eval task (the world's families declare their own), so the answer is also given per
    # kind: a student may inherit knowledge (facts from training) and not skills (what a model does with its context).
    kinds: dict[str, TaskKind] = field(default_factory=dict)
    # A task where the teacher's interval includes chance measures no transfer: it stays in the tables, marked,
    # but "overall" and the primary test leave it out unless this is true.
    include_dead: bool = False

    def __post_init__(self) -> None:
        for key in ("ci", "power"):
            value = getattr(self, key)
            _check(0 < value < 1, f"stats.{key}: {value} must be a probability strictly between 0 and 1 (e.g. 0.95)")
        _check(self.reference_arm != self.candidate_arm,
               f"stats.candidate_arm: {self.candidate_arm!r} is also the reference_arm; the headline compares two arms")


@dataclass(frozen=True)
class TuningConfig:
    enabled: bool = False                           # off: every arm trains with its configured values
    trials: int = 6                                 # per arm, ce included: the same search budget for every arm
    tokens: int = 150_000                           # training tokens per trial
    lr_scale: tuple[float, float] = (0.25, 4.0)     # log-uniform multiplier of student.train.lr, for every arm
    temperature: tuple[float, float] = (1.0, 4.0)   # log-uniform range, for arms with logit terms
    weight_scale: tuple[float, float] = (0.25, 4.0)  # log-uniform multiplier of every teacher term's weight
    seed: int = 0                                   # the student seed (initialisation, data order) of the trials
    # Also score the headline pair's trials on the suite, to report how their difference varies across
    # settings and where its interval excludes 0 (never used to choose a trial).
    sensitivity: bool = False


@dataclass(frozen=True)
class ControlsConfig:
    # Arms that get a twin "<arm>@random" distilled from an untrained teacher of the same architecture:
    # it separates knowledge transfer from the regularising effect of the extra loss terms.
    random_teacher: tuple[str, ...] = ()
    # Initialisation seed of the untrained teacher; its own, so it is no earlier state of the real teacher.
    seed: int = 1


@dataclass(frozen=True)
class AnalysisConfig:
    # Agreement with the teacher's choices on the suite (split by teacher right/wrong) and the KL divergence of the student from the teacher
    # on the validation split: reads the evaluations and models that exist, so it is cheap.
    fidelity: bool = True
    # Linear CKA between every student layer and every teacher layer on validation sequences.
    cka: bool = True
    # Student token budgets of the budget curves (reference, candidate, ce and `budget_arms`, per seed); empty:
    # off. The cache then covers the largest budget. Log-spaced from a budget where no arm has learnt to one
    # where the headline pair has plateaued, they give tokens-to-target and the area under the curve.
    budgets: tuple[int, ...] = ()
    # Seeds of the budget curves: the first N of `seeds` (null: all). Fewer seeds keep the largest budgets affordable.
    budget_seeds: int | None = None
    # How a curve's models are trained. "branch": one warmup-stable-decay run per arm and seed to the largest
    # budget, a decay branched off at every budget (the cost of about one run, not one per budget; how branches
    # compare with separate runs of their length: docs/benchmarks.md); every main student then trains on the same
    # schedule, and where the main budget is on the grid for every seed, the curve arms' main students are their
    # branches there (no second run). "separate": a full cosine run per budget (the main budget reads the main
    # students).
    curves: Literal["branch", "separate"] = "branch"
    # Share of a branch's steps spent decaying the learning rate (1 - sqrt, to lr x min_lr_ratio); the
    # cooldown literature finds 10-20% matches a cosine run of the same length.
    decay: float = 0.2
    # Further arms on the budget curves, besides reference, candidate and ce (always on them where ce is an arm).
    budget_arms: tuple[str, ...] = ()
    # Validation sequences the KL and CKA probes read (x seq_len token positions; CKA's cost grows with them).
    val_seqs: int = 64

    def __post_init__(self) -> None:
        _check(all(b >= 1 for b in self.budgets) and len(set(self.budgets)) == len(self.budgets),
               f"analysis.budgets: {list(self.budgets)} must be distinct positive token counts")
        _check(self.budget_seeds is None or self.budget_seeds >= 2,
               f"analysis.budget_seeds: {self.budget_seeds} must be at least 2 (a seed-level interval needs two)")
        _check(self.val_seqs >= 2, f"analysis.val_seqs: {self.val_seqs} must be at least 2")
        _check(0 < self.decay < 1, f"analysis.decay: {self.decay} must be a share of a branch's steps, in (0, 1)")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)





def build(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """Instantiate dataclass `cls` from a mapping, checking every key and type."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key {_join(where, unknown[0])!r}; allowed keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        key = _join(where, name)
        if name in data:
            values[name] = _coerce(hints[name], data[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing config key {key!r}")
    return cls(**values)


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not allowed; allowed values: {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = args or (Any, Any)
        return {_coerce(kt, k, key): _coerce(vt, v, _join(key, k)) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and str(value).lower() in ("true", "false"):  # `--config overwrite=true` arrives as a string
        return str(value).lower() == "true"
    if tp in (int, float, str, bool):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_name(tp)}")


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def as_dict(obj: Any) -> Any:
    """Dataclass -> plain JSON-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: as_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [as_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: as_dict(v) for k, v in obj.items()}
    return obj
