"""Budget curves from one run per student: the warmup-stable-decay schedule and its branches.

    .venv/bin/python -m pytest tests/test_curves_train.py -q
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kdbench.io import read_json
from kdbench.models.causal_lm import load_model
from kdbench.schema.arms import ArmConfig
from kdbench.schema.config import TrainConfig
from kdbench.train.loop import branch_plan, wsd_lr
from kdbench.train.student import fit_curve, train_student_distributed

from test_train import SMALL, student_setup  # noqa: F401  (the fixture: an init, a teacher cache, validation tokens)

ARM = ArmConfig(terms={"ce": 0.5, "fkl": 0.5, "hidden_mse": 1.0}, temperature=2.0)
TOKENS_PER_STEP = SMALL.batch_size * 16  # T = 16 in test_train


def test_wsd_schedule_holds_the_peak_then_decays_to_the_floor():
    cfg = TrainConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    assert wsd_lr(0, 50, 60, cfg) == pytest.approx(0.25) and wsd_lr(3, 50, 60, cfg) == pytest.approx(1.0)
    assert all(wsd_lr(s, 50, 60, cfg) == 1.0 for s in range(4, 50))
    decay = [wsd_lr(s, 50, 60, cfg) for s in range(50, 60)]
    assert all(a > b for a, b in zip(decay, decay[1:])) and decay[-1] == pytest.approx(0.1)


def test_branch_plan_ends_where_separate_runs_end():
    cfg = TrainConfig(batch_size=4)
    plan = branch_plan([6400, 1600, 3200], cfg, 16, 0.25)  # 100, 25 and 50 steps
    assert plan == [(1600, 19, 25), (3200, 38, 50), (6400, 75, 100)]
    assert branch_plan([64], cfg, 16, 0.2) == [(64, 0, 1)]  # at least one decay step


def _curve(root, name, budgets, decay=0.5, **kw):
    outs = {b: root / name / f"b{b}" for b in budgets}
    fit_curve("logit_hidden", ARM, SMALL, 0, root / "init", root / "cache", root / "data", outs, decay,
              root / f"work-{name}", **kw)
    return {b: load_model(p).state_dict() for b, p in outs.items()}


def test_a_branch_is_the_separate_wsd_run_of_its_budget(student_setup):
    """Batches depend on the step only and the trunk is the same stable phase: the branch at 4 steps equals a run
    of 4 steps alone, bit for bit, while the 8-step branch goes on from the trunk, not from the branch."""
    root = student_setup
    small, large = 4 * TOKENS_PER_STEP, 8 * TOKENS_PER_STEP
    both = _curve(root, "both", [small, large])
    alone = _curve(root, "alone", [small])
    assert all(torch.equal(both[small][k], alone[small][k]) for k in alone[small])
    assert not all(torch.equal(both[small][k], both[large][k]) for k in both[large])
    record = read_json(root / "both" / f"b{small}" / "train.json")
    assert record["config"]["tokens"] == small and record["tokens"] == small
    assert record["branch"] == {"decay_start": 2, "decay_steps": 2} and record["flops"]["total"] > 0
    curve = (root / "both" / f"b{large}" / "curve.csv").read_text().splitlines()
    assert len(curve) == 1 + 8  # the trunk's rows, then the branch's, never the other branch's
    assert not (root / "work-both" / "checkpoint.pt").exists() and not (root / "work-both" / "branches").exists()


def test_a_resumed_curve_redoes_no_branch_and_reaches_the_same_weights(student_setup, capsys):
    """A job killed before its branches move out resumes at the last branch point (4 of 8 steps) and keeps the
    branch saved before it."""
    root = student_setup
    small, large = 2 * TOKENS_PER_STEP, 8 * TOKENS_PER_STEP
    reference = _curve(root, "ref", [small, large])
    import kdbench.train.student as student

    def fail(*args, **kwargs):
        raise RuntimeError("killed")

    copy = student.shutil.copytree
    student.shutil.copytree = fail  # dies after training, before moving the branches out
    try:
        with pytest.raises(RuntimeError):
            _curve(root, "k", [small, large])
    finally:
        student.shutil.copytree = copy
    assert (root / "work-k" / "branches" / f"b{small}" / "train.json").exists()
    capsys.readouterr()
    resumed = _curve(root, "k", [small, large])
    assert "resumed from checkpoint at step 4" in capsys.readouterr().out
    for b in (small, large):
        assert all(torch.equal(reference[b][k], resumed[b][k]) for k in reference[b])


def test_separate_entry_point_dispatches_branches(student_setup):
    root = student_setup
    outs = {4 * TOKENS_PER_STEP: root / "d" / "b"}
    train_student_distributed(1, "logit_hidden", ARM, SMALL, 0, root / "init", root / "cache", root / "data",
                              root / "unused", root / "work-d", branches=outs, decay=0.5)
    assert (root / "d" / "b" / "model.safetensors").exists() and not (root / "unused").exists()
    assert np.isfinite(read_json(root / "d" / "b" / "train.json")["val_loss"])


def test_branches_stand_in_for_separate_cosine_runs(student_setup):
    """Per seed, the 8-step branch of one 16-step run against a separate 8-step cosine run: their validation losses
    differ by less than the seeds' own spread (the half-width of the separate runs' 95% interval)."""
    from scipy import stats as sps

    from kdbench.train.student import train_student

    root, budget = student_setup, 8 * TOKENS_PER_STEP
    branch, separate = [], []
    for seed in range(3):
        outs = {budget: root / f"c{seed}" / "b8", 2 * budget: root / f"c{seed}" / "b16"}
        fit_curve("logit_hidden", ARM, SMALL, seed, root / "init", root / "cache", root / "data", outs, 0.25,
                  root / f"work-c{seed}")
        train_student("logit_hidden", ARM, SMALL, seed, root / "init", root / "cache", root / "data", root / f"s{seed}",
                      root / f"work-s{seed}")
        branch.append(read_json(outs[budget] / "train.json")["val_loss"])
        separate.append(read_json(root / f"s{seed}" / "train.json")["val_loss"])
    diff = np.array(branch) - np.array(separate)
    seed_half_width = sps.t.ppf(0.975, 2) * np.std(separate, ddof=1) / np.sqrt(3)
    assert abs(diff.mean()) <= seed_half_width, (branch, separate, seed_half_width)
