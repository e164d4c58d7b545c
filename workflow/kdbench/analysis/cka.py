"""Linear centered kernel alignment (Kornblith et al., 2019) between two layers' representations.

For n examples with features X (n x p) and Y (n x q), columns centred,

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F),

the feature-space form of HSIC with linear kernels, normalised. It is 1 for identical
representations, invariant to orthogonal transforms and isotropic scaling of either side (not
to arbitrary invertible linear maps), and near 0 for independent features when n >> p, q.
Float64 numpy: the probes pass token positions of validation sequences as examples.
"""

from __future__ import annotations

import numpy as np


def centred(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(axis=0, keepdims=True)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of (n, p) and (n, q) representations of the same n examples."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same examples on both sides: {x.shape[0]} vs {y.shape[0]} rows")
    x, y = centred(x), centred(y)
    return _cka_centred(x, y, np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y))


def cka_matrix(xs: list[np.ndarray], ys: list[np.ndarray]) -> np.ndarray:
    """CKA of every layer in `xs` against every layer in `ys`: (len(xs), len(ys))."""
    xs, ys = [centred(x) for x in xs], [centred(y) for y in ys]
    nx = [np.linalg.norm(x.T @ x) for x in xs]
    ny = [np.linalg.norm(y.T @ y) for y in ys]
    return np.array([[_cka_centred(x, y, a, b) for y, b in zip(ys, ny)] for x, a in zip(xs, nx)])


def _cka_centred(x: np.ndarray, y: np.ndarray, norm_x: float, norm_y: float) -> float:
    if norm_x == 0 or norm_y == 0:
        return float("nan")  # a constant representation has no similarity structure
    return float(np.linalg.norm(y.T @ x) ** 2 / (norm_x * norm_y))
