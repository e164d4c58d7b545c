"""Arms of the experiment: named loss configurations, and what each needs from the teacher.

An arm is data (`ArmConfig`): loss terms with weights plus the hyperparameters they share.
From the arms and the two depths follow the layer pairs of each arm and the union of
teacher activations the cache must hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal, Mapping

from kdbench import KdbenchError
from kdbench.schema.layermap import layer_map, teacher_layers
from kdbench.schema.registry import LAYERED, reads, specs

REFERENCE_MODELS = ("teacher", "init")  # models evaluated beside the arms, never arms themselves
CONTROL_SUFFIX = "@random"  # "<arm>@random": the arm distilled from an untrained teacher (reserved: '@')
LOGIT_COMPONENTS = ("topk_logprobs", "topk_ids", "tail_logprob")  # what "logits" is stored as in the cache
STORED_AS = {"attentions": "attention_qk"}  # maps are derived from cached queries and keys


@dataclass(frozen=True)
class ArmConfig:
    terms: dict[str, float] = field(default_factory=lambda: {"ce": 1.0})  # loss name -> weight
    temperature: float = 1.0        # softens both distributions in the logit terms (with T^2 scaling)
    beta: float = 0.5               # JSD mixing weight
    relation_heads: int = 4         # MiniLM relation heads (independent of attention heads)
    layer_map: str | tuple[tuple[int, ...], ...] = "uniform"  # uniform | last | skip:N | [[s, t], ...]
    projection: Literal["linear", "identity"] = "linear"       # student width -> teacher width

    @property
    def hyper(self) -> dict:
        return {"temperature": self.temperature, "beta": self.beta, "relation_heads": self.relation_heads}

    @property
    def reads(self) -> frozenset[str]:
        """What this arm's terms read from the teacher (see `registry.READS`)."""
        return reads(self.terms)

    @property
    def uses_teacher(self) -> bool:
        return bool(self.reads)

    @property
    def layer_components(self) -> tuple[str, ...]:
        """The per-layer cache components (hidden, attentions, qkv) this arm's terms read."""
        return tuple(name for name in LAYERED if name in self.reads)

    @property
    def components(self) -> tuple[str, ...]:
        """Every teacher-cache component this arm's terms read."""
        return ("input_ids", *(LOGIT_COMPONENTS if "logits" in self.reads else ()),
                *(STORED_AS.get(name, name) for name in self.layer_components))

    @property
    def uses_layers(self) -> bool:
        return bool(self.layer_components)

    def pairs(self, n_student: int, n_teacher: int) -> tuple[tuple[int, int], ...]:
        """(student layer, teacher layer) pairs; empty for arms without layer terms."""
        return layer_map(self.layer_map, n_student, n_teacher) if self.uses_layers else ()


def check_arms(arms: Mapping[str, ArmConfig], n_student: int | None, n_teacher: int | None) -> None:
    """Fail early, naming the arm, on reserved names, unknown losses, bad weights or layer maps.

    A depth is None while a pretrained model's is unknown; layer maps are then checked by
    `checks.check_models` from the model's config, or by the cache job, which loads it.
    """
    if not arms:
        raise KdbenchError("arms: at least one arm is required")
    for name, arm in arms.items():
        if name in REFERENCE_MODELS or "/" in name or "@" in name:
            raise KdbenchError(f"arms.{name}: reserved or invalid arm name; not allowed: "
                               f"{', '.join(REFERENCE_MODELS)}, '/' or '@' (control twins are named <arm>@random)")
        if not arm.terms:
            raise KdbenchError(f"arms.{name}.terms: at least one loss term is required")
        for term, weight in arm.terms.items():
            if term not in specs():
                raise KdbenchError(f"arms.{name}.terms: unknown loss {term!r}; known losses: {', '.join(sorted(specs()))}")
            if weight < 0:
                raise KdbenchError(f"arms.{name}.terms.{term}: weight {weight} is negative")
        if not any(arm.terms.values()):
            raise KdbenchError(f"arms.{name}.terms: every weight is 0, so the arm would not train; "
                               "give at least one term a positive weight")
        if arm.temperature <= 0:
            raise KdbenchError(f"arms.{name}.temperature: must be > 0, got {arm.temperature}")
        if n_teacher is None or n_student is None:
            continue
        try:
            arm.pairs(n_student, n_teacher)
        except KdbenchError as e:
            raise KdbenchError(f"arms.{name}: {e}") from e


@dataclass(frozen=True)
class Capture:
    """The teacher layers whose activations the arms need, per component (derived from the arms)."""
    hidden: tuple[int, ...] = ()
    attentions: tuple[int, ...] = ()
    qkv: tuple[int, ...] = ()

    @classmethod
    def from_settings(cls, settings: dict) -> "Capture":
        """The capture a cache was written with, from its manifest's settings."""
        return cls(**{f.name: tuple(settings[f.name]) for f in fields(cls)})


def capture_for(arms: Mapping[str, ArmConfig], n_student: int, n_teacher: int) -> Capture:
    """The teacher activations the cache must hold so that every arm can train from it: per
    component, the union of the layers mapped by the arms whose terms read that component."""
    return Capture(**{name: teacher_layers(arm.pairs(n_student, n_teacher) for arm in arms.values()
                                           if name in arm.layer_components) for name in LAYERED})
