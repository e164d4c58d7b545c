"""kdbench.tuning: equal budgets across arms, determinism, selection by validation loss only.

    .venv/bin/python -m pytest tests/test_tuning.py -v
"""
from __future__ import annotations

import pytest

from kdbench import tuning
from kdbench.arms import ArmConfig
from kdbench.io import read_json
from kdbench.config import TrainConfig, TuningConfig
from kdbench.tuning import candidates, tune_arm

LOGIT = ArmConfig(terms={"ce": 0.5, "fkl": 0.5}, temperature=2.0)
HIDDEN = ArmConfig(terms={"ce": 0.5, "hidden_mse": 1.0})
CFG = TuningConfig(enabled=True, trials=4, tokens=100)


def test_every_teacher_arm_gets_the_same_number_of_trials():
    assert len(candidates(LOGIT, CFG)) == len(candidates(HIDDEN, CFG)) == 4
    assert candidates(ArmConfig(terms={"ce": 1.0}), CFG) == [ArmConfig(terms={"ce": 1.0})]  # nothing to tune


def test_candidates_are_seeded_start_with_the_config_and_stay_in_range():
    first, again = candidates(LOGIT, CFG), candidates(LOGIT, CFG)
    assert first == again and first[0] == LOGIT
    assert candidates(LOGIT, TuningConfig(trials=4, seed=1)) != first
    for arm in first[1:]:
        assert 1.0 <= arm.temperature <= 4.0 and arm.terms["ce"] == 0.5
        assert 0.25 * 0.5 <= arm.terms["fkl"] <= 4.0 * 0.5
    assert all(arm.temperature == HIDDEN.temperature for arm in candidates(HIDDEN, CFG))  # no logit term


def test_tune_arm_keeps_the_lowest_validation_loss(tmp_path, monkeypatch):
    losses = iter([3.0, 2.5, 2.9, 2.7])
    seen = []

    def fake_fit(name, arm, cfg, seed, *paths):
        seen.append((name, cfg.tokens, seed))
        return None, [], {"val_loss": next(losses)}

    monkeypatch.setattr(tuning, "fit_student", fake_fit)
    chosen = tune_arm("logit", LOGIT, TrainConfig(tokens=10_000), CFG, tmp_path, tmp_path, tmp_path,
                      tmp_path / "logit.json", tmp_path / "work")
    assert chosen == candidates(LOGIT, CFG)[1]
    record = read_json(tmp_path / "logit.json")
    assert record["chosen"]["temperature"] == pytest.approx(chosen.temperature)
    assert [t["val_loss"] for t in record["trials"]] == [3.0, 2.5, 2.9, 2.7]
    assert {tokens for _, tokens, _ in seen} == {100} and {seed for *_, seed in seen} == {0}
