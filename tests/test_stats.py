"""Statistics: bootstrap CIs, paired comparisons, Holm's correction and the headline sentence.

Checks against hand-computed Holm adjustments, against scipy's t-interval for a large
normal sample, on simulated item scores with no effect (CI covers 0) and with a planted
+20-point effect on one task (found, p < 0.01 after Holm, the other task not flagged,
p-values agreeing with the CIs), on seed-to-seed variation the item bootstrap alone
would miss, and for determinism.

Run: .venv/bin/python -m pytest tests/test_stats.py -q   (CPU, ~5 s)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from kdbench.stats import OVERALL, arm_means, headline, holm, paired_comparisons
from kdbench.config import StatsConfig


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
    assert (comp["p_holm"] >= comp["p"]).all() and (comp["p_holm"] > 0.05).all()
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
    assert b["p"] < 0.01 and b["p_holm"] < 0.01
    assert b["cohen_h"] == pytest.approx(2 * np.arcsin(np.sqrt(0.7)) - 2 * np.arcsin(np.sqrt(0.5)), abs=0.12)
    assert _row(comp, "logit_hidden", "a")["p_holm"] > 0.05
    # the p-value is the test the percentile CI inverts
    assert ((comp["p"] < 0.05) == ((comp["ci_lo"] > 0) | (comp["ci_hi"] < 0))).all()
    text = headline(comp, cfg)
    assert text.startswith("Experiment 2 (logit_hidden) beats Experiment 1 (logit)")
    assert "significantly better on b (+" in text and "significantly worse on none" in text


def test_arm_mean_ci_matches_t_interval_for_large_normal_sample():
    rng = np.random.default_rng(7)
    values = rng.normal(0.5, 0.2, size=4000)
    items = pd.DataFrame({"arm": "x", "seed": 0, "task": "t", "doc_id": np.arange(len(values)), "value": values})
    row = _row(arm_means(items, ["x"], StatsConfig(n_boot=4000)), "x", "t")
    lo, hi = sps.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=sps.sem(values))
    assert row["mean"] == pytest.approx(100 * values.mean())
    width = 100 * (hi - lo)
    assert row["ci_lo"] == pytest.approx(100 * lo, abs=0.08 * width)
    assert row["ci_hi"] == pytest.approx(100 * hi, abs=0.08 * width)


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
    cfg = StatsConfig(n_boot=500)
    means = arm_means(items, ["logit", "logit_hidden"], cfg)
    for arm in ("logit", "logit_hidden"):
        task_means = [_row(means, arm, t)["mean"] for t in ("a", "b")]
        assert _row(means, arm, OVERALL)["mean"] == pytest.approx(np.mean(task_means))
    pd.testing.assert_frame_equal(means, arm_means(items, ["logit", "logit_hidden"], cfg))
    comp = paired_comparisons(items, ["logit", "logit_hidden"], cfg)
    pd.testing.assert_frame_equal(comp, paired_comparisons(items, ["logit", "logit_hidden"], cfg))
    other = arm_means(items, ["logit", "logit_hidden"], StatsConfig(n_boot=500, seed=1))
    assert not np.allclose(means["ci_lo"], other["ci_lo"])
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
