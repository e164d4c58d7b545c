"""Checks student/teacher layer mapping: each strategy on small depths, and clear errors.

Expected maps are written out by hand. Run: .venv/bin/python -m pytest tests/test_layermap.py
"""

import pytest

from kdbench import KdbenchError
from kdbench.schema.layermap import layer_map, teacher_layers


@pytest.mark.parametrize(
    ("spec", "n_student", "n_teacher", "expected"),
    [
        ("uniform", 2, 4, ((1, 2), (2, 4))),
        ("uniform", 3, 12, ((1, 4), (2, 8), (3, 12))),
        ("uniform", 4, 4, ((1, 1), (2, 2), (3, 3), (4, 4))),
        ("uniform", 2, 5, ((1, 3), (2, 5))),  # 2.5 rounds up
        ("uniform", 4, 6, ((1, 2), (2, 3), (3, 5), (4, 6))),  # 1.5 -> 2, 4.5 -> 5
        ("last", 2, 4, ((2, 4),)),
        ("last", 3, 12, ((3, 12),)),
        ("last", 4, 4, ((4, 4),)),
        ("skip:2", 2, 4, ((1, 2), (2, 4))),
        ("skip:4", 3, 12, ((1, 4), (2, 8), (3, 12))),
        ("skip:3", 3, 12, ((1, 3), (2, 6), (3, 9))),
        ("skip:1", 4, 4, ((1, 1), (2, 2), (3, 3), (4, 4))),
        ([[1, 3], [2, 4]], 2, 4, ((1, 3), (2, 4))),
        ([[3, 12], [1, 2]], 3, 12, ((1, 2), (3, 12))),  # sorted by student layer
        (((2, 1), (4, 4)), 4, 4, ((2, 1), (4, 4))),  # tuples, as the config parser yields
    ],
)
def test_strategies(spec, n_student, n_teacher, expected):
    assert layer_map(spec, n_student, n_teacher) == expected


@pytest.mark.parametrize(
    ("spec", "n_student", "n_teacher", "message"),
    [
        ("skip:3", 2, 4, "layer_map 'skip:3': teacher layer 6 of pair [2, 6] out of range 1..4"),
        ("skip:0", 2, 4, "'skip:0': N in 'skip:N' must be a positive integer, got '0'"),
        ("skip:x", 2, 4, "must be a positive integer, got 'x'"),
        ("uniform", 4, 2, "student has 4 layers but teacher only 2"),
        ("middle", 2, 4, "unknown strategy 'middle'; allowed: 'uniform', 'last', 'skip:N'"),
        ([[1, 5]], 2, 4, "layer_map explicit: teacher layer 5 of pair [1, 5] out of range 1..4"),
        ([[0, 2]], 2, 4, "student layer 0 of pair [0, 2] out of range 1..2"),
        ([[3, 2]], 2, 4, "student layer 3 of pair [3, 2] out of range 1..2"),
        ([[1, 2], [1, 3]], 2, 4, "student layer 1 is mapped twice"),
        ([[1, 3], [2, 2]], 2, 4, "teacher layers must increase with student layers, but [1, 3] comes before [2, 2]"),
        ([[1, 2], [2, 2]], 2, 4, "teacher layers must increase"),
        ([[1, 2, 3]], 2, 4, "[1, 2, 3] is not a [student, teacher] pair of integers"),
        ([[1, 2.0]], 2, 4, "is not a [student, teacher] pair of integers"),
        (["12"], 2, 4, "is not a [student, teacher] pair"),
        ([], 2, 4, "no layer pairs given"),
        ("last", 0, 4, "student must have at least 1 layer, got 0"),
    ],
)
def test_invalid(spec, n_student, n_teacher, message):
    with pytest.raises(KdbenchError) as err:
        layer_map(spec, n_student, n_teacher)
    assert message in str(err.value)


def test_teacher_layers_is_sorted_union():
    maps = [layer_map("uniform", 3, 12), layer_map("last", 3, 12), layer_map([[1, 2], [2, 8]], 3, 12)]
    assert teacher_layers(maps) == (2, 4, 8, 12)
    assert teacher_layers([]) == ()
