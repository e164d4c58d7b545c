"""Coverage of the paired-difference intervals and size of the tests, by simulation.

Synthetic 0/1 correctness from a probit model of the benchmark's crossed design. For
task t, item i, arm A and seed s, an item is answered correctly with probability
Phi(eta), where

    eta = theta_ti + [A = candidate] delta_t + u_Ati + g_As + h_Ast
    theta_ti ~ N(mu_t, 1)      item difficulty, shared by both arms and all seeds
    u_Ati ~ N(0, tau_A^2)      item-specific arm effect: an item effect on the difference
    g_As ~ N(0, sg^2)          seed quality, one per trained model, shared by all tasks
    h_Ast ~ N(0, sh^2)         seed x task quality

The truth an interval claims to cover is the population mean difference of one task
family: E over seeds and over items of the family's generator of
P(candidate correct) - P(reference correct), which in closed form is
Phi((mu_t + delta_t) / sqrt(2 + tau_c^2 + sg^2 + sh^2)) - Phi(mu_t / sqrt(2 + tau_r^2 + sg^2 + sh^2));
"overall" claims the unweighted mean of that over families. Under the null design both
arms have the same distribution (delta 0, tau_c = tau_r), so the truth is exactly 0 while
items still move the difference. The intervals come from
`kdbench.analysis.stats.estimate`, the function `paired_comparisons` uses, run on the simulated
seeds x items difference matrices of all replicates at once. 2,000 replicates per
design give a binomial standard error of 0.5 points on a 95% coverage, so the required
93-97% band is four standard errors wide on each side. Fixed generator seeds make the
test deterministic.

Run: .venv/bin/python -m pytest tests/test_stats_coverage.py -q   (CPU, ~10 s)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtr

from kdbench.schema.config import StatsConfig
from kdbench.analysis.stats import OVERALL, Estimate, estimate, paired_comparisons

REPLICATES = 2000
ITEMS = (120, 80, 100)  # per task family, unequal on purpose
MU = (0.0, -0.8, 0.6)  # mean item difficulty (probit) per family


@dataclass(frozen=True)
class Design:
    delta: tuple[float, ...]  # arm effect per family (probit)
    tau: float  # sd of the candidate's item-specific effect
    tau_ref: float  # sd of the reference's item-specific effect
    sg: float  # sd of a seed's quality, shared across families
    sh: float  # sd of a seed's quality per family

    def truth(self) -> np.ndarray:
        """Population mean difference per family (fractions)."""
        mu, delta = np.array(MU), np.array(self.delta)
        base = 2 + self.sg**2 + self.sh**2
        return ndtr((mu + delta) / np.sqrt(base + self.tau**2)) - ndtr(mu / np.sqrt(base + self.tau_ref**2))

    def differences(self, n_seeds: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Per family, (replicates, seeds, items) candidate-minus-reference 0/1 differences."""
        g = rng.normal(0, self.sg, (2, REPLICATES, n_seeds, 1))
        out = []
        for mu, delta, n in zip(MU, self.delta, ITEMS):
            theta = rng.normal(mu, 1, (REPLICATES, 1, n))
            u_ref = rng.normal(0, self.tau_ref, (REPLICATES, 1, n))
            u = rng.normal(0, self.tau, (REPLICATES, 1, n))
            h = rng.normal(0, self.sh, (2, REPLICATES, n_seeds, 1))
            ref = rng.random((REPLICATES, n_seeds, n)) < ndtr(theta + u_ref + g[0] + h[0])
            cand = rng.random((REPLICATES, n_seeds, n)) < ndtr(theta + delta + u + g[1] + h[1])
            out.append(cand.astype(float) - ref)
        return out


# seed-dominated (hidden-state KD: runs differ a lot) and item-dominated (runs agree, items differ)
SEEDY = Design(delta=(0.5, 0.3, 0.0), tau=0.3, tau_ref=0.0, sg=0.35, sh=0.2)
ITEMY = Design(delta=(0.5, 0.3, 0.0), tau=0.8, tau_ref=0.0, sg=0.05, sh=0.05)
NULL = Design(delta=(0.0, 0.0, 0.0), tau=0.6, tau_ref=0.6, sg=0.25, sh=0.15)


def _rates(design: Design, n_seeds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, rejection rate at alpha 0.05) per family and overall, over the replicates."""
    diffs = design.differences(n_seeds, np.random.default_rng(seed))
    truth = design.truth()
    groups = [([d], t) for d, t in zip(diffs, truth)] + [(diffs, truth.mean())]
    coverage, rejection = [], []
    for mats, true in groups:
        est = estimate(mats)
        coverage.append(np.mean(np.abs(est.mean - true) <= est.half_width(0.95)))
        rejection.append(np.mean(est.p() < 0.05))
    return np.array(coverage), np.array(rejection)


@pytest.mark.parametrize("n_seeds", [3, 10])
@pytest.mark.parametrize("design", [SEEDY, ITEMY], ids=["seed-dominated", "item-dominated"])
def test_intervals_cover_the_population_difference(design, n_seeds):
    coverage, _ = _rates(design, n_seeds, seed=n_seeds)
    assert ((coverage >= 0.93) & (coverage <= 0.97)).all(), coverage


@pytest.mark.parametrize("n_seeds", [3, 10])
def test_true_null_is_rejected_at_most_six_percent(n_seeds):
    coverage, rejection = _rates(NULL, n_seeds, seed=100 + n_seeds)
    assert (rejection <= 0.06).all(), rejection
    assert (coverage >= 0.93).all(), coverage


@pytest.mark.parametrize("n_seeds", [3, 10])
def test_power_at_the_mde_is_eighty_percent(n_seeds):
    """A true difference equal to the MDE is found 80% of the time.

    The MDE is taken at the design's variance (each part's estimate averaged over the
    replicates, unbiased); the null differences shifted by it keep their variances.
    """
    est = estimate(NULL.differences(n_seeds, np.random.default_rng(200 + n_seeds)))
    mde = Estimate(np.float64(0), tuple((v.mean(), df) for v, df in est.parts)).mde(0.05, 0.8)
    assert 0.77 <= np.mean(Estimate(est.mean + mde, est.parts).p() < 0.05) <= 0.83


def test_paired_comparisons_use_the_same_estimate():
    """The table's numbers are `estimate` on the difference matrices (the path the simulation checks)."""
    rng = np.random.default_rng(5)
    diffs = [d[0] for d in SEEDY.differences(4, rng)]
    ref = [rng.integers(0, 2, d.shape).astype(float) * (d == 0) for d in diffs]  # any 0/1 matrices with cand - ref = d
    cand = [r + d for r, d in zip(ref, diffs)]
    rows = []
    for arm, mats in (("logit", ref), ("logit_hidden", cand)):
        for t, m in enumerate(mats):
            s, i = np.indices(m.shape)
            rows.append(pd.DataFrame({"arm": arm, "seed": s.ravel(), "task": f"t{t}", "doc_id": i.ravel(),
                                      "value": m.ravel()}))
    comp = paired_comparisons(pd.concat(rows, ignore_index=True), ["logit", "logit_hidden"], StatsConfig())
    overall = comp[comp["task"] == OVERALL].iloc[0]
    est = estimate(diffs)
    assert overall["diff"] == pytest.approx(100 * est.mean)
    assert overall["half_width"] == pytest.approx(100 * est.half_width(0.95))
    assert overall["p"] == pytest.approx(est.p())
