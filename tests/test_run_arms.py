"""Choosing the arms that run without editing the default: `run_arms` names them, `arms: {NAME: null}` drops one
(config files merge key by key, so a preset cannot delete an arm otherwise). The headline pair, the controls and the
budget curves are checked against what remains; the plan and the DAG hold only the chosen arms.

    .venv/bin/python -m pytest tests/test_run_arms.py -q   (about 15 s)
"""
from __future__ import annotations

import pytest
import yaml

from conftest import REPO, snakemake
from kdbench import KdbenchError
from kdbench.schema.checks import load_config
from kdbench.schema.experiment import chosen_arms, load_experiment
from kdbench.schema.plan import plan

DEFAULT = REPO / "config" / "config.yaml"


def experiment(tmp_path, override: dict):
    """config/config.yaml with every configured arm running (its run_arms cleared), then `override`."""
    (tmp_path / "override.yaml").write_text(yaml.safe_dump({"run_arms": [], **override}))
    return load_experiment(load_config([DEFAULT, tmp_path / "override.yaml"]))


def test_a_preset_drops_an_arm_or_names_the_arms_to_run(tmp_path):
    assert list(experiment(tmp_path, {"arms": {"logit_relation": None}}).arms) == [
        "ce", "logit", "logit_hidden", "logit_hidden_attn", "hidden"]
    exp = experiment(tmp_path, {"run_arms": ["logit_hidden", "logit"], "arms": {"logit_hidden": {"temperature": 4.0}}})
    assert list(exp.arms) == ["logit", "logit_hidden"]  # in the order of `arms`, merged key by key
    assert exp.arms["logit_hidden"].temperature == 4.0 and "hidden_mse" in exp.arms["logit_hidden"].terms
    # Snakemake's --config reads nested values as strings: "null" drops too
    assert "hidden" not in chosen_arms({"arms": {"ce": {"terms": {"ce": 1}}, "hidden": "null"}})


@pytest.mark.parametrize("override, error", [
    ({"run_arms": ["logit", "logit_hiden"]}, r"run_arms\[1\]: 'logit_hiden' cannot run \(not an arm\); arms: ce, logit"),
    ({"run_arms": ["logit", "hidden"], "arms": {"hidden": None}},
     r"run_arms\[1\]: 'hidden' cannot run \(arms.hidden is null\)"),
    ({"run_arms": "logit"}, r"run_arms: expected a list of arm names, got 'logit'"),
    ({"run_arms": ["ce", "logit_hidden"]}, r"stats.reference_arm: 'logit' is not an arm; arms: ce, logit_hidden "
                                           r"\(those that run, after run_arms and null arms\)$"),
    ({"arms": {"logit_hidden": None}}, r"stats.candidate_arm: 'logit_hidden' is not an arm; arms: ce, logit, "
                                       r"logit_hidden_attn, logit_relation, hidden \("),
    ({"arms": {"hidden": None}, "controls": {"random_teacher": ["hidden"]}},
     r"controls.random_teacher: 'hidden' is not an arm that reads the teacher"),
    ({"run_arms": ["logit", "logit_hidden"], "analysis": {"budget_arms": ["hidden"]}},
     r"analysis.budgets: the budget curves train arm 'hidden', which is not in arms"),
])
def test_what_remains_is_checked_in_one_line(tmp_path, override, error):
    with pytest.raises(KdbenchError, match=error):
        experiment(tmp_path, override)


def test_the_plan_counts_only_the_arms_that_run(tmp_path):
    every = plan(exp := experiment(tmp_path, {}), {"teacher": None, "student": None})
    two = plan(experiment(tmp_path, {"run_arms": ["logit", "logit_hidden"]}), {"teacher": None, "student": None})
    assert len(exp.arms) == 6 and list(two.student_flops) == ["logit", "logit_hidden"]
    assert every.flops() - two.flops() == pytest.approx(sum(every.student_flops.values()) - sum(two.student_flops.values()))
    assert {"attention_qk", "qkv"} <= set(every.bytes_per_token) and not {"attention_qk", "qkv"} & set(two.bytes_per_token)


def test_the_dag_runs_only_the_chosen_arms(tmp_path):
    (tmp_path / "drop.yaml").write_text(yaml.safe_dump({"run_arms": [], "arms": {"logit_relation": None,
                                                                               "logit_hidden_attn": None}}))
    out = snakemake("-n", "--configfile", str(tmp_path / "drop.yaml"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "students/logit_relation" not in out.stdout and "students/hidden/seed2" in out.stdout
    out = snakemake("-n", "--config", "run_arms=[logit,logit_hidden]", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    trained = {line.split("students/")[1].split("/")[0] for line in out.stdout.splitlines()
               if "output:" in line and "/students/" in line and "/init/" not in line}
    assert trained == {"logit", "logit_hidden", "logit_hidden@random"}  # and the default's control
