"""Which student layer is matched to which teacher layer.

Indices are 1-based transformer blocks: layer l is the output of block l, i.e.
``hidden_states[l]`` in Hugging Face models (0, the embeddings, is never mapped).
A map is a tuple of (student_layer, teacher_layer) pairs sorted by student layer,
with teacher layers strictly increasing so that depth order is kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kdbench import KdbenchError

LayerMap = tuple[tuple[int, int], ...]

_STRATEGIES = "'uniform', 'last', 'skip:N' or a list of [student, teacher] pairs"


def layer_map(spec: str | Sequence[Sequence[int]], n_student: int, n_teacher: int) -> LayerMap:
    """Resolve a strategy name or an explicit pair list for a student/teacher depth.

    - ``"uniform"``: student layer i <-> teacher layer round(i * n_teacher / n_student)
      (halves round up), so the last layer maps to the last;
    - ``"last"``: only (n_student, n_teacher);
    - ``"skip:N"``: student layer i <-> teacher layer i * N;
    - ``[[s, t], ...]``: exactly these pairs.
    """
    for what, n in (("student", n_student), ("teacher", n_teacher)):
        if n < 1:
            raise KdbenchError(f"layer_map: {what} must have at least 1 layer, got {n}")
    if isinstance(spec, str):
        label = repr(spec)
        pairs = _strategy(spec, n_student, n_teacher)
    else:
        label = "explicit"
        pairs = [_pair(p) for p in spec]
    return _validate(label, pairs, n_student, n_teacher)


def teacher_layers(maps: Iterable[LayerMap]) -> tuple[int, ...]:
    """Sorted union of the teacher layers of several maps: the layers the cache must store."""
    return tuple(sorted({t for pairs in maps for _, t in pairs}))


def _strategy(name: str, n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    students = range(1, n_student + 1)
    if name == "uniform":
        if n_student > n_teacher:
            raise KdbenchError(
                f"layer_map 'uniform': student has {n_student} layers but teacher only {n_teacher}; "
                "give explicit pairs instead"
            )
        # round half up in integer arithmetic: floor(i * n_t / n_s + 1/2)
        return [(i, (2 * i * n_teacher + n_student) // (2 * n_student)) for i in students]
    if name == "last":
        return [(n_student, n_teacher)]
    if name.startswith("skip:"):
        step = name.removeprefix("skip:")
        if not (step.isdigit() and int(step) > 0):
            raise KdbenchError(f"layer_map {name!r}: N in 'skip:N' must be a positive integer, got {step!r}")
        return [(i, i * int(step)) for i in students]
    raise KdbenchError(f"layer_map: unknown strategy {name!r}; allowed: {_STRATEGIES}")


def _pair(pair: Sequence[int]) -> tuple[int, int]:
    ok = (
        isinstance(pair, Sequence)
        and not isinstance(pair, str)
        and len(pair) == 2
        and all(isinstance(i, int) and not isinstance(i, bool) for i in pair)
    )
    if not ok:
        raise KdbenchError(f"layer_map: {pair!r} is not a [student, teacher] pair of integers")
    return pair[0], pair[1]


def _validate(label: str, pairs: list[tuple[int, int]], n_student: int, n_teacher: int) -> LayerMap:
    if not pairs:
        raise KdbenchError(f"layer_map {label}: no layer pairs given")
    for s, t in pairs:
        for what, i, n in (("student", s, n_student), ("teacher", t, n_teacher)):
            if not 1 <= i <= n:
                raise KdbenchError(f"layer_map {label}: {what} layer {i} of pair [{s}, {t}] out of range 1..{n}")
    pairs = sorted(pairs)
    for (s0, t0), (s1, t1) in zip(pairs, pairs[1:]):
        if s0 == s1:
            raise KdbenchError(f"layer_map {label}: student layer {s1} is mapped twice ([{s0}, {t0}], [{s1}, {t1}])")
        if t1 <= t0:
            raise KdbenchError(
                f"layer_map {label}: teacher layers must increase with student layers, "
                f"but [{s0}, {t0}] comes before [{s1}, {t1}]"
            )
    return tuple(pairs)
