"""The loss registry: each loss's name, what it reads from the teacher, and its hyperparameters.

A loss declares all of it where it is defined, in `kdbench.losses`:

    @register("fkl", reads=("logits",))
    def forward_kl(student, targets, mask, *, temperature=1.0): ...

Everything else derives from these declarations: which terms an arm may name, what the
teacher cache must capture, which student activations the objective taps, what tuning
varies and what the planner counts. The workflow needs them at parse time, where importing
torch would cost seconds, so `specs()` reads the decorators from the source of
`kdbench.losses` without importing it; `register` checks the same declaration when the
module is imported, and a test holds the two readings equal.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from kdbench import KdbenchError

READS = ("logits", "hidden", "attentions", "qkv")  # what a loss can read from the teacher
LAYERED = READS[1:]  # read per mapped layer, through a layer map
_SOURCE = Path(__file__).resolve().parents[1] / "losses.py"


@dataclass(frozen=True)
class LossSpec:
    name: str
    reads: tuple[str, ...]  # teacher components, a subset of READS; () for losses of the data alone
    hyper: tuple[str, ...]  # keyword-only hyperparameters, taken from an arm's shared settings


def register(name: str, *, reads: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Decorator for a loss `fn(student, targets, mask, *, hyper...)`; adds it to `table` under `name`."""

    def add(fn: Callable) -> Callable:
        if name in table:
            raise ValueError(f"loss {name!r} is already registered")
        unknown = set(reads) - set(READS)
        if unknown:
            raise ValueError(f"loss {name!r} reads {sorted(unknown)}; allowed: {', '.join(READS)}")
        code = fn.__code__
        if code.co_argcount != 3 or code.co_posonlyargcount:
            raise ValueError(f"loss {name!r}: expected fn(student, targets, mask, *, hyper...)")
        table[name] = fn
        return fn

    return add


table: dict[str, Callable] = {}  # name -> loss function, filled when kdbench.losses is imported


@lru_cache(maxsize=1)
def specs() -> dict[str, LossSpec]:
    """Every registered loss, read from the `@register(...)` decorators in kdbench/losses.py."""
    out = {}
    for node in ast.parse(_SOURCE.read_text()).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for deco in node.decorator_list:
            if isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == "register":
                name = ast.literal_eval(deco.args[0])
                keywords = {k.arg: ast.literal_eval(k.value) for k in deco.keywords}
                out[name] = LossSpec(name, tuple(keywords.get("reads", ())), tuple(a.arg for a in node.args.kwonlyargs))
    return out


def spec(name: str) -> LossSpec:
    """The loss `name`, or an error listing the known ones."""
    try:
        return specs()[name]
    except KeyError:
        raise KdbenchError(f"unknown loss {name!r}; known losses: {', '.join(sorted(specs()))}") from None


def reads(terms) -> frozenset[str]:
    """The teacher components read by any of `terms` (loss names)."""
    return frozenset(r for t in terms for r in spec(t).reads)
