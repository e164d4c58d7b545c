"""Power planning: variance components recovered from data with known components, the MDE projection, the plan text.

Run: .venv/bin/python -m pytest tests/test_power.py -q   (CPU, ~5 s)
"""

from __future__ import annotations

import numpy as np
import pytest

from kdbench.analysis.power import Components, plan
from kdbench.schema.config import StatsConfig
from kdbench.analysis.stats import estimate, mean_squares

KNOWN = Components(seed=4e-4, item=(0.02, 0.05), resid=(0.2, 0.25), items=(150, 100))


def test_expected_mean_squares_give_back_the_components():
    back = Components.from_mean_squares(KNOWN.mean_squares(5, 1))
    assert back.seed == pytest.approx(KNOWN.seed) and back.item == pytest.approx(KNOWN.item)
    assert back.resid == pytest.approx(KNOWN.resid) and back.items == KNOWN.items


def test_components_are_recovered_from_simulated_differences():
    """Normal seed + item + residual effects with the known variances; mean squares averaged over 400 designs."""
    rng = np.random.default_rng(0)
    reps, n_seeds = 400, 6
    seed = rng.normal(0, np.sqrt(KNOWN.seed), (reps, n_seeds, 1))
    mats = [seed + rng.normal(0, np.sqrt(b), (reps, 1, n)) + rng.normal(0, np.sqrt(r), (reps, n_seeds, n))
            for b, r, n in zip(KNOWN.item, KNOWN.resid, KNOWN.items)]
    _, ms = mean_squares(mats)
    average = type(ms)(n_seeds, ms.items, ms.seed.mean(), tuple(i.mean() for i in ms.item),
                       tuple(r.mean() for r in ms.resid))  # averaged before the truncation at 0
    got = Components.from_mean_squares(average)
    assert got.seed == pytest.approx(KNOWN.seed, rel=0.15)
    np.testing.assert_allclose(got.item, KNOWN.item, rtol=0.1)
    np.testing.assert_allclose(got.resid, KNOWN.resid, rtol=0.02)
    # the projection at the observed design is the report's own MDE at the expected variance
    expected = KNOWN.mean_squares(n_seeds, 1).estimate(np.float64(0)).mde(0.05, 0.8)
    assert KNOWN.mde(n_seeds, 1, StatsConfig()) == pytest.approx(100 * expected)
    assert np.mean(estimate(mats).se ** 2) == pytest.approx(
        float(KNOWN.mean_squares(n_seeds, 1).estimate(np.float64(0)).se ** 2), rel=0.1)


def test_mde_shrinks_with_seeds_and_items_and_the_plan_finds_the_minimum():
    cfg = StatsConfig()
    assert KNOWN.mde(3, 1, cfg) > KNOWN.mde(10, 1, cfg) > KNOWN.mde(20, 1, cfg)
    assert KNOWN.mde(10, 1, cfg) > KNOWN.mde(10, 4, cfg)
    target = KNOWN.mde(12, 1, cfg) + 1e-9
    text = plan(KNOWN, 3, target, cfg)
    assert "at the current items, 12 seeds" in text
    assert len([line for line in text.splitlines() if line.strip()[:2].strip().isdigit()]) == 18  # seeds 3..20
    assert "not reached" in plan(KNOWN, 3, 0.01, cfg)
