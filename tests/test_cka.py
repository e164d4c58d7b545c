"""kdbench.analysis.cka: linear CKA against hand-computed cases.

    .venv/bin/python -m pytest tests/test_cka.py -v
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from kdbench.analysis.cka import cka_matrix, linear_cka


def test_one_feature_each_is_the_squared_correlation():
    # centred x = [-1.5, -0.5, 0.5, 1.5], y = [-1.5, 0.5, -0.5, 1.5]: x.y = 4, |x|^2 = |y|^2 = 5, r = 0.8
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    y = np.array([[1.0], [3.0], [2.0], [4.0]])
    assert linear_cka(x, y) == pytest.approx(0.64)


def test_two_features_by_hand():
    # x centred: columns a = [1, -1, 0, 0], b = [0, 0, 1, -1] (orthogonal, equal norms: X^T X = 2 I);
    # y = a alone: Y^T X = [2, 0], ||.||^2 = 4; ||X^T X||_F = 2 sqrt 2; ||Y^T Y|| = 2 -> 4 / (4 sqrt 2) = 1 / sqrt 2
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert linear_cka(x, x[:, :1]) == pytest.approx(1 / np.sqrt(2))


def test_identical_representations_give_one():
    x = np.random.default_rng(0).normal(size=(200, 12))
    assert linear_cka(x, x) == pytest.approx(1.0)


def test_invariant_to_orthogonal_transforms_isotropic_scaling_and_offsets():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(300, 8)), rng.normal(size=(300, 5))
    y = y + 0.7 * x[:, :5]  # related, so the value is not trivially 0 or 1
    q = ortho_group.rvs(8, random_state=2)
    base = linear_cka(x, y)
    assert 0.1 < base < 0.9
    assert linear_cka(x @ q, y) == pytest.approx(base)
    assert linear_cka(3.5 * x, 0.2 * y) == pytest.approx(base)
    assert linear_cka(x + 10.0, y - 4.0) == pytest.approx(base)
    assert linear_cka(x @ np.diag(np.arange(1.0, 9.0)), y) != pytest.approx(base)  # not any invertible map


def test_independent_random_features_give_near_zero():
    rng = np.random.default_rng(3)
    assert linear_cka(rng.normal(size=(5000, 10)), rng.normal(size=(5000, 10))) < 0.02


def test_matrix_matches_pairwise():
    rng = np.random.default_rng(4)
    xs, ys = [rng.normal(size=(50, 4)) for _ in range(3)], [rng.normal(size=(50, 6)) for _ in range(2)]
    grid = cka_matrix(xs, ys)
    assert grid.shape == (3, 2)
    assert grid[2, 1] == pytest.approx(linear_cka(xs[2], ys[1]))
