"""Statistics: crossed seed x item CIs, paired comparisons, declared multiplicity, p formatting, the headline.

Checks against hand-computed Holm adjustments and ANOVA mean squares, against scipy's
t-interval for one seed, on simulated item scores with no effect (CI covers 0) and with
a planted +20-point effect on one task (found, the other task not flagged, p-values
agreeing with the CIs), on seed-to-seed variation an item-only interval would miss, the
primary/secondary split, p printed as a bound, and determinism. Coverage by simulation
is in test_stats_coverage.py.

Run: .venv/bin/python -m pytest tests/test_stats.py -q   (CPU, ~5 s)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from kdbench.schema.config import StatsConfig
from kdbench.analysis.stats import OVERALL, arm_means, estimate, format_p, headline, holm, mean_squares, paired_comparisons


def _items(rates: dict[str, dict[str, float]], n_seeds: int = 3, n_items: int = 200, seed: int = 1) -> pd.DataFrame:
    """0/1 item scores: arm -> task -> probability correct, same items for every arm and seed."""
    rng = np.random.default_rng(seed)
    rows = []
    for arm, tasks in rates.items():
        for task, rate in tasks.items():
            scores = rng.random((n_seeds, n_items)) < rate
            for s in range(n_seeds):
                rows.append(pd.DataFrame({"arm": arm, "seed": s, "task": task,
                                          "doc_id": np.arange(n_items), "value": scores[s].astype(float)}))
    return pd.concat(rows, ignore_index=True)


def _row(frame: pd.DataFrame, arm: str, task: str) -> pd.Series:
    return frame[(frame["arm"] == arm) & (frame["task"] == task)].iloc[0]


def test_holm_hand_computed():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone max 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    np.testing.assert_allclose(holm([0.02]), [0.02])


def test_no_effect_ci_covers_zero():
    items = _items({"logit": {"a": 0.6, "b": 0.4}, "logit_hidden": {"a": 0.6, "b": 0.4}})
    comp = paired_comparisons(items, ["logit", "logit_hidden"], StatsConfig())
    assert list(comp["task"]) == ["a", "b", OVERALL]
    assert (comp["ci_lo"] < 0).all() and (comp["ci_hi"] > 0).all()
    assert (comp["p_adj"] >= comp["p"]).all() and (comp["p_adj"] > 0.05).all()
    assert "does not significantly differ" in headline(comp, StatsConfig())


def test_identical_arms_give_zero_difference():
    items = _items({"logit": {"a": 0.6}})
    items = pd.concat([items, items.assign(arm="logit_hidden")], ignore_index=True)
    comp = paired_comparisons(items, ["logit", "logit_hidden"], StatsConfig())
    assert (comp["diff"] == 0).all() and (comp["ci_lo"] == 0).all() and (comp["p"] == 1).all()


def test_planted_effect_is_detected_and_survives_holm():
    items = _items({"logit": {"a": 0.5, "b": 0.5}, "logit_hidden": {"a": 0.5, "b": 0.7}, "ce": {"a": 0.5, "b": 0.5}})
    cfg = StatsConfig()
    comp = paired_comparisons(items, ["ce", "logit", "logit_hidden"], cfg)
    assert set(comp["arm"]) == {"ce", "logit_hidden"}
    b = _row(comp, "logit_hidden", "b")
    assert b["diff"] == pytest.approx(20, abs=5) and b["ci_lo"] > 5
    assert b["p"] < 0.01 and b["p_adj"] < 0.01
    assert b["cohen_h"] == pytest.approx(2 * np.arcsin(np.sqrt(0.7)) - 2 * np.arcsin(np.sqrt(0.5)), abs=0.12)
    assert _row(comp, "logit_hidden", "a")["p_adj"] > 0.05
    # the p-value is the test the CI inverts
    assert ((comp["p"] < 0.05) == ((comp["ci_lo"] > 0) | (comp["ci_hi"] < 0))).all()
    text = headline(comp, cfg)
    assert text.startswith("Experiment 2 (logit_hidden) beats Experiment 1 (logit)")
    assert "significantly better on b (+" in text and "significantly worse on none" in text


def test_one_seed_interval_is_the_t_interval_over_items():
    rng = np.random.default_rng(7)
    values = rng.normal(0.5, 0.2, size=400)
    items = pd.DataFrame({"arm": "x", "seed": 0, "task": "t", "doc_id": np.arange(len(values)), "value": values})
    row = _row(arm_means(items, ["x"], StatsConfig()), "x", "t")
    lo, hi = sps.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=sps.sem(values))
    assert (row["mean"], row["ci_lo"], row["ci_hi"]) == pytest.approx((100 * values.mean(), 100 * lo, 100 * hi))


def test_mean_squares_match_hand_computed_anova():
    m = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    mean, ms = mean_squares([m])
    grand, seed_means, item_means = m.mean(), m.mean(axis=1), m.mean(axis=0)
    resid = m - seed_means[:, None] - item_means[None, :] + grand
    assert mean == pytest.approx(grand)
    assert ms.seed == pytest.approx(np.sum((seed_means - grand) ** 2) / 2)
    assert ms.item[0] == pytest.approx(3 * np.sum((item_means - grand) ** 2) / 3)
    assert ms.resid[0] == pytest.approx(np.sum(resid**2) / 6)
    est = estimate([m])
    var = ms.seed / 3 + max(ms.item[0] - ms.resid[0], 0) / 12
    assert est.se**2 == pytest.approx(var)
    assert est.half_width(0.95) >= sps.t.ppf(0.975, 2) * np.sqrt(ms.seed / 3)


def test_p_is_printed_as_a_bound_below_one_in_a_thousand():
    assert format_p(1e-9) == "p < 0.001" and format_p(0.0) == "p < 0.001"
    assert format_p(0.0123) == "p = 0.012" and format_p(float("nan")) == "p n/a"


def test_one_primary_test_and_one_holm_family():
    items = _items({"logit": {"a": 0.5, "b": 0.5}, "logit_hidden": {"a": 0.6, "b": 0.7}, "ce": {"a": 0.5, "b": 0.6}})
    comp = paired_comparisons(items, ["ce", "logit", "logit_hidden"], StatsConfig())
    primary = comp[comp["role"] == "primary"]
    assert list(zip(primary["arm"], primary["task"])) == [("logit_hidden", OVERALL)]
    assert primary["p_adj"].item() == primary["p"].item()
    secondary = comp[comp["role"] == "secondary"]
    np.testing.assert_allclose(secondary["p_adj"], holm(secondary["p"]))
    assert len(secondary) == 5 and list(comp["p_shown"]) == [format_p(p) for p in comp["p_adj"]]
    assert (comp["mde"] > comp["half_width"]).all()
    np.testing.assert_allclose(comp["ci_hi"] - comp["diff"], comp["half_width"])


def test_seed_variation_widens_the_interval():
    # Every seed answers all items alike (seed 0 all right, seed 1 all wrong, ...): each item's
    # mean over seeds is identical, so only resampling seeds reveals the uncertainty.
    n_items, pattern = 100, [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    items = pd.concat([pd.DataFrame({"arm": "x", "seed": s, "task": "t", "doc_id": np.arange(n_items), "value": v})
                       for s, v in enumerate(pattern)], ignore_index=True)
    row = _row(arm_means(items, ["x"], StatsConfig()), "x", "t")
    assert row["mean"] == pytest.approx(50)
    assert row["ci_hi"] - row["ci_lo"] > 40


def test_overall_is_mean_over_tasks_and_deterministic():
    items = _items({"logit": {"a": 0.8, "b": 0.4}, "logit_hidden": {"a": 0.7, "b": 0.5}}, n_items=50)
    cfg = StatsConfig()
    means = arm_means(items, ["logit", "logit_hidden"], cfg)
    for arm in ("logit", "logit_hidden"):
        task_means = [_row(means, arm, t)["mean"] for t in ("a", "b")]
        assert _row(means, arm, OVERALL)["mean"] == pytest.approx(np.mean(task_means))
    pd.testing.assert_frame_equal(means, arm_means(items, ["logit", "logit_hidden"], cfg))
    comp = paired_comparisons(items, ["logit", "logit_hidden"], cfg)
    pd.testing.assert_frame_equal(comp, paired_comparisons(items, ["logit", "logit_hidden"], cfg))
    # an arm's numbers do not depend on which other arms are present
    pd.testing.assert_frame_equal(means[means["arm"] == "logit"].reset_index(drop=True),
                                  arm_means(items, ["logit"], cfg))


def test_headline_when_an_arm_is_missing():
    items = _items({"logit": {"a": 0.5}, "ce": {"a": 0.5}})
    cfg = StatsConfig()
    text = headline(paired_comparisons(items, ["ce", "logit"], cfg), cfg)
    assert "cannot be compared" in text and "'logit_hidden'" in text
    no_ref = paired_comparisons(_items({"ce": {"a": 0.5}}), ["ce"], cfg)
    assert no_ref.empty and "cannot be compared" in headline(no_ref, cfg)
