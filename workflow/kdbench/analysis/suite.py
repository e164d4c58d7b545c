"""What each task measures: its kind, and whether the teacher makes it measure anything.

A student cannot inherit a skill its teacher lacks, so a family where the teacher's interval
includes chance is dead: it is marked in every table and figure and left out of "overall",
the per-kind means and the primary test (`stats.include_dead` puts it back). A family where the
teacher is significantly below chance is the teacher's systematic error: it stays in, labelled,
and the inherited-error analysis reads it. Kinds come from the world's families (`world.KINDS`)
and, for lm-eval tasks, from `stats.kinds`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence, get_args

import pandas as pd

from kdbench.data.world import KINDS as WORLD_KINDS
from kdbench.evaluate import TASK_PREFIX, task_label
from kdbench.schema.config import StatsConfig, TaskKind

OVERALL = "overall"  # the unweighted mean over the answer's tasks, per seed
ALIVE, DEAD, BELOW = "alive", "dead", "below chance"
UNDECLARED = "undeclared"  # an lm-eval task without an entry in stats.kinds
KIND_ORDER = (*get_args(TaskKind), UNDECLARED)


def kind_group(kind: str) -> str:
    """The row name of one kind's mean: "overall: skill"."""
    return f"{OVERALL}: {kind}"


def is_group(task: str) -> bool:
    """True for "overall" and the per-kind rows, False for a task."""
    return task == OVERALL or task.startswith(f"{OVERALL}: ")


def task_kind(task: str, declared: Mapping[str, str]) -> str:
    """A world family's own kind, else the kind `stats.kinds` gives the (lm-eval) task, else "undeclared"."""
    if task in declared:
        return declared[task]
    if task.startswith(TASK_PREFIX) and task_label(task) in WORLD_KINDS:
        return WORLD_KINDS[task_label(task)]
    return declared.get(task_label(task), UNDECLARED)


def teacher_status(teacher: pd.DataFrame, chance: Mapping[str, float]) -> dict[str, str]:
    """Per task: dead when the teacher's interval (`arm_means` rows, points) includes chance, below chance when it lies under."""
    out = {}
    for row in teacher.itertuples():
        if is_group(row.task):
            continue
        c = 100 * chance[row.task]
        out[row.task] = DEAD if row.ci_lo <= c <= row.ci_hi else BELOW if row.ci_hi < c else ALIVE
    return out


@dataclass(frozen=True)
class Suite:
    """The tasks with their kinds and the teacher's status on each; `groups` are the answer's means."""

    tasks: tuple[str, ...]
    kinds: Mapping[str, str]
    status: Mapping[str, str]  # task -> alive | dead | below chance; every task alive when no teacher was scored
    include_dead: bool = False

    @classmethod
    def of(cls, tasks: Sequence[str], cfg: StatsConfig, status: Mapping[str, str] | None = None) -> "Suite":
        return cls(tuple(tasks), {t: task_kind(t, cfg.kinds) for t in tasks},
                   {t: (status or {}).get(t, ALIVE) for t in tasks}, cfg.include_dead)

    def tasks_with(self, status: str) -> list[str]:
        return [t for t in self.tasks if self.status[t] == status]

    @property
    def answered(self) -> list[str]:
        """The tasks "overall" averages: all but the dead ones (all with `include_dead`, or when all are dead)."""
        alive = [t for t in self.tasks if self.status[t] != DEAD]
        return list(self.tasks) if self.include_dead or not alive else alive

    @property
    def kind_names(self) -> list[str]:
        """The kinds of the answered tasks: knowledge, skill, syntax, undeclared."""
        return [k for k in KIND_ORDER if any(self.kinds[t] == k for t in self.answered)]

    def groups(self) -> list[tuple[str, list[str]]]:
        """Each task alone, "overall" over the answered tasks, then one mean per kind when there are several."""
        kinds = self.kind_names
        per_kind = [(kind_group(k), [t for t in self.answered if self.kinds[t] == k]) for k in kinds] if len(kinds) > 1 else []
        return [(t, [t]) for t in self.tasks] + [(OVERALL, self.answered)] + per_kind

    def tested(self, task: str) -> bool:
        """Whether a per-task comparison is a test of the answer (dead tasks are reported, not tested)."""
        return task not in self.tasks or task in self.answered

    def label(self, task: str) -> str:
        """Display name, marked when the teacher makes it measure nothing or its own error."""
        name = task_label(task)
        status = self.status.get(task, ALIVE)
        return name if status == ALIVE else f"{name} ({status})"

    def left_out_sentence(self) -> str:
        """"Left out of overall (the teacher is at chance): induction." ("" when no task is dead)."""
        dead = [task_label(t) for t in self.tasks_with(DEAD)]
        if not dead:
            return ""
        if len(dead) == len(self.tasks):
            return "The teacher is at chance on every task, so overall keeps them all and measures no transfer."
        if self.include_dead:
            return f"Kept in overall although the teacher is at chance (stats.include_dead): {', '.join(dead)}."
        return f"Left out of overall (the teacher is at chance): {', '.join(dead)}."

    def below_sentence(self) -> str:
        """"The teacher is significantly below chance on fact_negation: ..." ("" when it is nowhere)."""
        below = [task_label(t) for t in self.tasks_with(BELOW)]
        if not below:
            return ""
        return (f"The teacher is significantly below chance on {', '.join(below)}: its systematic error, "
                "kept in overall, where a student that inherits it scores lower.")
