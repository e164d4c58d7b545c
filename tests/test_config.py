"""kdbench.schema.config / experiment: the shipped configs load, and bad input names the key.

    .venv/bin/python -m pytest tests/test_config.py -v
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from kdbench import KdbenchError
from kdbench.schema.config import ConfigError, build
from kdbench.schema.arms import capture_for, Capture
from kdbench.schema.experiment import capture_spec, load_experiment

REPO = Path(__file__).resolve().parents[1]


def default() -> dict:
    """config/config.yaml with every configured arm running (its run_arms cleared)."""
    return {**yaml.safe_load((REPO / "config" / "config.yaml").read_text()), "run_arms": []}


def merged(preset: str) -> dict:
    """Recursive merge, as Snakemake merges --configfile onto the Snakefile's configfile."""
    def merge(a, b):
        for k, v in b.items():
            a[k] = merge(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a
    return merge(default(), yaml.safe_load((REPO / "config" / "presets" / preset).read_text()))


@pytest.mark.parametrize("preset", [None] + sorted(p.name for p in (REPO / "config" / "presets").glob("*.yaml")))
def test_shipped_configs_load(preset):
    exp = load_experiment(merged(preset) if preset else default())
    assert exp.arms and exp.seeds


def test_default_has_the_seed_experiments_and_three_seeds():
    exp = load_experiment(default())
    assert {"ce", "logit", "logit_hidden"} <= set(exp.arms) and len(exp.seeds) >= 3
    assert exp.arms["logit_hidden"].uses_layers and not exp.arms["logit"].uses_layers


def mutate(path: str, value):
    cfg = default()
    *parents, last = path.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return cfg


@pytest.mark.parametrize("path,value,message", [
    ("teacher.arch.n_layers", 3, r"unknown config key 'teacher.arch.n_layers'; allowed keys: d_ff, d_model, family, n_head, n_layer"),
    ("student.arch.family", "bert", r"student.arch.family: 'bert' is not allowed; allowed values: 'gpt2', 'llama', 'gpt_neox'"),
    ("student.train.lr", "fast", r"student.train.lr: expected float, got 'fast'"),
    ("seeds", [0, "one"], r"seeds\[1\]: expected int"),
    ("cache.top_k", 2.5, r"cache.top_k: expected int"),
    ("arms.logit.terms", {"ce": 1.0, "kl": 1.0}, r"arms.logit.terms: unknown loss 'kl'; known losses: attn_kl, ce, fkl"),
    ("arms.logit_hidden.layer_map", "middle", r"arms.logit_hidden: .*middle"),
    ("arms.logit_hidden.layer_map", [[1, 9]], r"arms.logit_hidden: .*teacher layer 9"),
    ("arms.teacher", {"terms": {"ce": 1.0}}, r"arms.teacher: reserved"),
    ("arms.logit.temperature", 0.0, r"arms.logit.temperature: must be > 0"),
    ("stats.reference_arm", "logits", r"stats.reference_arm: .logits. is not an arm; arms: ce, logit,"),
    ("seeds", [1, 1], r"seeds: need distinct seeds"),
    ("bogus", 1, r"unknown config key 'bogus'"),
    ("analysis.curves", "nested", r"analysis.curves: 'nested' is not allowed; allowed values: 'branch', 'separate'"),
    ("analysis.decay", 1.0, r"analysis.decay: 1.0 must be a share of a branch's steps, in \(0, 1\)"),
    ("analysis.budget_arms", ["hiden"], r"analysis.budgets: the budget curves train arm 'hiden', which is not in arms"),
])
def test_bad_config_names_the_key(path, value, message):
    with pytest.raises(KdbenchError, match=message):
        load_experiment(mutate(path, value))


def test_build_rejects_non_mapping_section():
    from kdbench.schema.config import CacheConfig
    with pytest.raises(ConfigError, match="cache: expected a mapping"):
        build(CacheConfig, [1, 2], "cache")


def test_cache_captures_per_component_only_the_layers_its_readers_map():
    exp = load_experiment(default())
    capture = capture_for(exp.arms, exp.student.arch.n_layer, exp.teacher.arch.n_layer)
    assert capture == Capture(hidden=(2, 4), attentions=(2, 4), qkv=(4,))  # relation maps the last layer only
    only_ce = {"ce": exp.arms["ce"]}
    assert capture_for(only_ce, exp.student.arch.n_layer, exp.teacher.arch.n_layer) == Capture()


def test_capture_spec_ignores_loss_weights():
    """Changing a weight or temperature must not rerun the teacher cache; a layer map must."""
    base = capture_spec(load_experiment(default()))
    cfg = default()
    cfg["arms"]["logit_hidden"]["terms"]["hidden_mse"] = 5.0
    cfg["arms"]["logit_hidden"]["temperature"] = 4.0
    assert capture_spec(load_experiment(cfg)) == base
    cfg["arms"]["logit_hidden"]["layer_map"] = "last"
    assert capture_spec(load_experiment(cfg)) != base


def test_schema_rejects_unknown_top_level_key():
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    cfg = copy.deepcopy(default())
    validate(cfg, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    cfg["bogus"] = 1
    with pytest.raises(WorkflowError):
        validate(cfg, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))


def test_schema_takes_a_rank_per_layered_component():
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    cfg = copy.deepcopy(default())
    cfg["cache"]["layer_rank"] = {"hidden": 64, "attention_qk": 256}
    validate(cfg, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    assert [load_experiment(cfg).cache.rank(c) for c in ("hidden", "attention_qk", "qkv")] == [64, 256, 0]
    cfg["cache"]["layer_rank"] = {"logits": 8}
    with pytest.raises(WorkflowError):
        validate(cfg, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
