"""kdbench.analysis.fidelity, flops and why: agreement and inherited errors on a planted case; FLOPs; the paragraph.

    .venv/bin/python -m pytest tests/test_fidelity.py -v
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kdbench.analysis import why
from kdbench.analysis.explain import control_gains
from kdbench.schema.config import StatsConfig
from kdbench.analysis.fidelity import agreement_table, counts, item_agreement, kl_table
from kdbench.train.flops import training_flops, transformer_params


def evaluation(chosen: list[int], labels: list[int], task: str = "t") -> dict:
    """An evaluation JSON whose model picks `chosen[i]` on item i (log-likelihood 0 there, -5 elsewhere)."""
    return {"samples": {task: [{"doc_id": i, "label": label, "loglik": [0.0 if c == j else -5.0 for j in range(3)]}
                               for i, (c, label) in enumerate(zip(chosen, labels))]}}


LABELS = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
TEACHER = [0, 0, 0, 0, 0, 0, 2, 2, 0, 1]  # right on items 0-5 and 9; wrong on 6, 7 (chose 2) and 8 (chose 0)
# seed 0: copies the teacher except item 0 and item 6 -> agrees 8/10; kept 6/7; inherited 2/3 (items 7, 8)
# seed 1: right everywhere -> agrees on the 7 right items only; inherited 0/3
STUDENTS = {0: [1, 0, 0, 0, 0, 0, 1, 2, 0, 1], 1: list(LABELS)}


def planted() -> pd.DataFrame:
    return item_agreement(evaluation(TEACHER, LABELS), [("kd", s, evaluation(c, LABELS)) for s, c in STUDENTS.items()],
                          ["t"])


def test_agreement_and_inherited_error_counts_on_a_planted_case():
    c = counts(planted()).set_index("seed")
    assert c.loc[0, ["n_items", "agree", "teacher_right", "teacher_wrong", "kept", "inherited"]].tolist() == [10, 8, 7, 3, 6, 2]
    assert c.loc[1, ["agree", "kept", "inherited"]].tolist() == [7, 7, 0]


def test_agreement_table_shares_are_means_over_seeds():
    t = agreement_table(planted(), ["kd"], 0.95).set_index("task")
    assert t.loc["overall", "agreement"] == pytest.approx(100 * (8 + 7) / 20)
    assert t.loc["overall", "kept"] == pytest.approx(100 * (6 + 7) / 14)
    assert t.loc["overall", "inherited"] == pytest.approx(100 * 2 / 6)
    assert (t.loc["overall", "n_teacher_right"], t.loc["overall", "n_teacher_wrong"]) == (7, 3)
    assert t.loc["overall", "inherited_lo"] < t.loc["overall", "inherited"] < t.loc["overall", "inherited_hi"]


def test_kl_table_is_a_t_interval_over_seeds():
    kl = pd.DataFrame({"arm": ["a", "a", "a"], "seed": [0, 1, 2], "kl": [1.0, 2.0, 3.0]})
    row = kl_table(kl, ["a"], 0.95).iloc[0]
    assert row["kl"] == pytest.approx(2.0)
    assert row["kl_hi"] - row["kl"] == pytest.approx(4.302653 * 1 / np.sqrt(3), rel=1e-5)


def test_flops_count_the_teacher_once_per_cached_token():
    teacher = {"layers": 2, "width": 8, "vocab_size": 10, "heads": 2}
    f = training_flops(100, 20, 1000, {"logits": 1}, 10, 4, 4, teacher, teacher_tokens=500)
    assert f["student"] == 6 * 100 * 1000 and f["projector"] == 6 * 20 * 1000
    assert f["teacher_forward"] == 2 * transformer_params(2, 8, 10) * 500
    assert f["total"] == pytest.approx(f["student"] + f["projector"] + f["loss_terms"] + f["teacher_forward"])
    assert training_flops(100, 0, 1000, {}, 10, 4, 4, None, 500)["teacher_forward"] == 0


def test_control_gain_and_why_paragraph_follow_the_numbers():
    rng = np.random.default_rng(0)
    rows = []
    for arm, p in (("kd", 0.9), ("kd@random", 0.3)):
        for seed in range(3):
            for task in ("a", "b"):
                rows += [[arm, seed, task, i, float(rng.random() < p)] for i in range(40)]
    items = pd.DataFrame(rows, columns=["arm", "seed", "task", "doc_id", "value"])
    gains = control_gains(items, {"kd@random": "kd"}, ["a", "b"], StatsConfig())
    overall = gains[gains["task"] == "overall"].iloc[0]
    assert overall["gain"] > 30 and overall["ci_lo"] > 0
    text = why.sections({"controls": gains}, StatsConfig(), {"kd@random": "kd"})
    assert "kd scores +" in text and "more than its control" in text
    assert text.startswith("## Controls\n\n") and "\n| kd | kd@random | +" in text  # a short section: text, table
    from kdbench.analysis.landing import why_html

    html = why_html(f"# Why\n\n{text}")
    assert html.startswith('<h3 class="kdbench-why">Controls</h3>') and "<td>kd@random</td>" in html
    flipped = gains.assign(gain=-gains["gain"], ci_lo=-gains["ci_hi"], ci_hi=-gains["ci_lo"])
    assert "less than its control" in why.sections({"controls": flipped}, StatsConfig(), {"kd@random": "kd"})
    vague = gains.assign(ci_lo=-1.0, p=0.4)
    assert "not distinguishable from its control" in why.sections({"controls": vague}, StatsConfig(), {"kd@random": "kd"})


def test_budget_clause_reads_only_detected_differences():
    """Signs are read only where the interval excludes 0: an n.s. point estimate of either sign is no finding."""
    d = pd.DataFrame({"budget": [100000, 400000, 1600000], "diff": [20.0, 5.0, -0.5], "ci_lo": [15.0, 1.0, -2.0],
                      "ci_hi": [25.0, 9.0, 1.0], "p": [1e-4, 0.02, 0.6]})
    text = why.sections({"budget_diffs": d}, StatsConfig(), {})
    assert "a difference is detectable at 2 of 3 budgets (cand ahead at 100,000, 400,000 tokens)" in text.replace(
        StatsConfig().candidate_arm, "cand")
    assert "no gap is detectable at the largest budget" in text
    both = why.sections({"budget_diffs": d.assign(diff=[20.0, -5.0, 3.0], ci_lo=[15.0, -9.0, 1.0],
                                                   ci_hi=[25.0, -1.0, 5.0], p=[1e-4, 0.02, 0.01])}, StatsConfig(), {})
    assert "detectable at every budget (" in both and "ahead at 100,000, 1,600,000 tokens and" in both
    assert "behind at 400,000 tokens)" in both and "a gap remains at the largest budget" in both
    none = why.sections({"budget_diffs": d.assign(p=[0.3, 0.2, 0.6])}, StatsConfig(), {})
    assert "no budget shows a detectable difference" in none and "ahead" not in none
