"""kdbench.train.tuning: equal budgets across arms, determinism, selection by validation loss only.

    .venv/bin/python -m pytest tests/test_tuning.py -v
"""
from __future__ import annotations

import pytest

from kdbench.train import tuning
from kdbench.schema.arms import ArmConfig
from kdbench.io import read_json
from kdbench.schema.config import TrainConfig, TuningConfig
from kdbench.train.tuning import candidates, tune_arm

LOGIT = ArmConfig(terms={"ce": 0.5, "fkl": 0.5}, temperature=2.0)
HIDDEN = ArmConfig(terms={"ce": 0.5, "hidden_mse": 1.0})
CE = ArmConfig(terms={"ce": 1.0})
TRAIN = TrainConfig(tokens=10_000, lr=0.003)
CFG = TuningConfig(enabled=True, trials=4, tokens=100)


def test_every_arm_gets_the_same_trials_and_shares_each_trials_learning_rate():
    trials = {name: candidates(arm, TRAIN, CFG) for name, arm in (("logit", LOGIT), ("hidden", HIDDEN), ("ce", CE))}
    assert {len(t) for t in trials.values()} == {4}
    for i in range(4):  # trial i: one learning rate for every arm, so the arms pair at each setting
        assert len({t[i][1].lr for t in trials.values()}) == 1
    assert [arm for arm, _ in trials["ce"]] == [CE] * 4  # ce has only its learning rate to tune
    assert len({train.lr for _, train in trials["ce"]}) == 4


def test_candidates_are_seeded_start_with_the_config_and_stay_in_range():
    first, again = candidates(LOGIT, TRAIN, CFG), candidates(LOGIT, TRAIN, CFG)
    assert first == again and first[0] == (LOGIT, TRAIN)
    assert candidates(LOGIT, TRAIN, TuningConfig(trials=4, seed=1)) != first
    for arm, train in first[1:]:
        assert 1.0 <= arm.temperature <= 4.0 and arm.terms["ce"] == 0.5
        assert 0.25 * 0.5 <= arm.terms["fkl"] <= 4.0 * 0.5
        assert 0.25 * TRAIN.lr <= train.lr <= 4.0 * TRAIN.lr and train.tokens == TRAIN.tokens
    assert all(arm.temperature == HIDDEN.temperature for arm, _ in candidates(HIDDEN, TRAIN, CFG))  # no logit term


def test_tune_arm_keeps_the_lowest_validation_loss(tmp_path, monkeypatch):
    losses = iter([3.0, 2.5, 2.9, 2.7])
    seen = []

    def fake_fit(name, arm, cfg, seed, *paths):
        seen.append((name, cfg.tokens, seed))
        return None, [], {"val_loss": next(losses)}

    monkeypatch.setattr(tuning, "fit_student", fake_fit)
    chosen = tune_arm("logit", LOGIT, TRAIN, CFG, tmp_path, tmp_path, tmp_path, tmp_path / "logit", tmp_path / "work")
    assert chosen == candidates(LOGIT, TRAIN, CFG)[1]
    record = read_json(tmp_path / "logit" / "tuning.json")
    assert record["chosen"]["temperature"] == pytest.approx(chosen[0].temperature)
    assert record["lr"] == pytest.approx(chosen[1].lr) and record["best"] == 1
    assert [t["val_loss"] for t in record["trials"]] == [3.0, 2.5, 2.9, 2.7]
    assert {tokens for _, tokens, _ in seen} == {100} and {seed for *_, seed in seen} == {0}
