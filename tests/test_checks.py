"""kdbench.schema.checks: what the workflow refuses at parse time, before any job runs, in one line naming the key.

    .venv/bin/python -m pytest tests/test_checks.py -q   (about 30 s: one lm-eval task index, four dry runs)
"""
from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from kdbench import KdbenchError
from kdbench.schema.checks import check_config_files, check_models, check_paths, check_tasks, source_kind
from kdbench.schema.experiment import load_experiment

from conftest import REPO, snakemake


def experiment(**sections) -> object:
    cfg = {**yaml.safe_load((REPO / "config" / "config.yaml").read_text()), "run_arms": [], **sections}
    return load_experiment(cfg)


def test_duplicated_key_names_file_key_and_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("student:\n  train: {lr: 0.1}\n  init: random\n  train: {lr: 0.2}\n")
    with pytest.raises(KdbenchError, match=r"dup.yaml: key 'train' appears twice in one mapping \(lines 2 and 4\)"):
        check_config_files([path])
    check_config_files([REPO / "config" / "config.yaml", *sorted((REPO / "config" / "presets").glob("*.yaml"))])


@pytest.mark.parametrize("source, kind", [("EleutherAI/pythia-410m", "hub"), ("gpt2", "hub"), ("./teacher", "local"),
                                          ("/abs/teacher", "local"), ("a/b/c", "local"), ("~/m", "local")])
def test_source_kind(source, kind):
    assert source_kind(source) == kind


def test_missing_local_paths_name_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KdbenchError, match=r"^teacher.source: local path './teacher' does not exist"):
        check_paths(experiment(teacher={"source": "./teacher"}))
    with pytest.raises(KdbenchError, match=r"^student.init: local path '/no/student' does not exist"):
        check_paths(experiment(student={"init": "/no/student"}))
    with pytest.raises(KdbenchError, match=r"^data.source: local path 'local/c.jsonl' does not exist"):
        check_paths(experiment(data={"source": "local/c.jsonl"}, evaluation={"tasks": ["arc_easy"]}))
    (tmp_path / "teacher").mkdir()
    with pytest.raises(KdbenchError, match=r"^teacher.source: './teacher' is a local path without config.json"):
        check_paths(experiment(teacher={"source": "./teacher"}))
    check_paths(experiment(teacher={"source": "EleutherAI/pythia-410m"}))  # a hub id: the import job resolves it


def test_task_names_checked_against_the_index(tmp_path):
    index = tmp_path / f"lm_eval-{version('lm_eval')}-tasks.json"
    index.write_text('["arc_easy", "piqa"]')
    check_tasks(("synthetic",), tmp_path / "absent")  # the default needs no index
    check_tasks(("arc_easy", "piqa"), tmp_path)
    with pytest.raises(KdbenchError, match=r"^evaluation.tasks\[1\]: unknown lm-eval task 'arc_esy'; did you mean arc_easy"):
        check_tasks(("piqa", "arc_esy"), tmp_path)


@pytest.mark.parametrize("preset, message", [
    ("stats: {candidate_arm: logit_hiden}\n", "stats.candidate_arm: 'logit_hiden' is not an arm"),
    ("teacher: {source: ./models/teacher}\n", "teacher.source: local path './models/teacher' does not exist"),
    ("seeds: [0, 1]\nseeds: [0, 1, 2]\n", "key 'seeds' appears twice in one mapping (lines 1 and 2)"),
    ("data: {source: HuggingFaceFW/fineweb-edu}\nteacher: {source: EleutherAI/pythia-410m}\n"
     "evaluation: {tasks: [arc_easy, hellaswagg]}\n", "evaluation.tasks[1]: unknown lm-eval task 'hellaswagg'"),
])
def test_dry_run_refuses_before_any_job(tmp_path, preset, message):
    """The real lm-eval index (built once per working directory) and Snakemake's own config loading."""
    path = tmp_path / "bad.yaml"
    path.write_text(preset)
    out = snakemake("-n", "--cores", "1", "--configfile", str(path), cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and message in text, text[-2000:]


def save_config(path: Path, family: str, **kw) -> str:
    from transformers import AutoConfig

    AutoConfig.for_model(family, **kw).save_pretrained(path)
    return str(path)


def test_models_are_checked_from_their_configs(tmp_path, monkeypatch):
    """No weights: a model without attention is refused for the arms that read it, naming model, component and
    arm; layer maps are checked against the depths in the loaded configs, not student.arch."""
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "kept"
    mamba = save_config(tmp_path / "mamba", "mamba", hidden_size=32, num_hidden_layers=4, vocab_size=96)
    with pytest.raises(KdbenchError, match=r"^arms.logit_hidden_attn: the teacher '.*mamba' \(mamba\) cannot give "
                                           r"attentions, which attn_kl, ce, fkl, hidden_mse read: mamba: no attention"):
        check_models(experiment(teacher={"source": mamba}), cache)
    llama = save_config(tmp_path / "llama", "llama", hidden_size=32, num_hidden_layers=6, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=96)
    arms = {"ce": {}, "relation": {"terms": {"relation": 1.0}, "layer_map": [[6, 4]]}}
    pretrained = dict(student={"init": llama, "arch": {"n_layer": 2}}, arms=arms, controls={"random_teacher": []},
                      stats={"reference_arm": "ce", "candidate_arm": "relation"})
    found = check_models(experiment(teacher={"source": llama}, **pretrained), cache)  # student 6 deep, as loaded
    assert (found["student"]["n_layer"], found["student"]["heads"], found["teacher"]["n_layer"]) == (6, 4, 6)
    with pytest.raises(KdbenchError, match=r"^arms.relation: .*teacher layer 9"):
        check_models(experiment(teacher={"source": llama}, **{**pretrained, "arms": {
            "ce": {}, "relation": {"terms": {"relation": 1.0}, "layer_map": [[6, 9]]}}}), cache)


def test_pretrained_student_with_another_tokenizer_is_refused_at_parse_time(tmp_path, monkeypatch, tiny_tokenizer_dir):
    """Both tokenizer.json files are on disk: compared as JSON before any job, naming both keys and sources."""
    from kdbench.schema.checks import tokenizer_ids
    from kdbench.schema.config import TokenizerConfig
    from kdbench.models.causal_lm import load_tokenizer
    from kdbench.data.tokenizer import train_tokenizer

    monkeypatch.chdir(tmp_path)
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=320)
    teacher, student = (save_config(tmp_path / side, "llama", **kw) for side in ("teacher", "student"))
    arms = {"ce": {}, "logit": {"terms": {"fkl": 1.0}}}
    exp = experiment(teacher={"source": teacher}, student={"init": student}, arms=arms, controls={"random_teacher": []},
                     stats={"reference_arm": "ce", "candidate_arm": "logit"})
    check_models(exp, tmp_path / "kept")  # the student has no tokenizer.json: compared by init_student
    train_tokenizer([f"zz{i} qq{i} ww" for i in range(100)], TokenizerConfig(vocab_size=300, min_frequency=1),
                    tmp_path / "other")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "student" / f).write_bytes((tmp_path / "other" / f).read_bytes())
        (tmp_path / "teacher" / f).write_bytes((tiny_tokenizer_dir / f).read_bytes())
    with pytest.raises(KdbenchError, match=rf"^tokenizer mismatch: student.init '{student}' \(\d+ tokens\) and "
                                           rf"teacher.source '{teacher}' \(\d+ tokens\) differ: \d+ tokens only in the "
                                           r"student's \(first '.+'\), \d+ only in the teacher's \(first '.+'\); "):
        check_models(exp, tmp_path / "kept")
    (tmp_path / "student" / "tokenizer.json").write_bytes((tiny_tokenizer_dir / "tokenizer.json").read_bytes())
    check_models(exp, tmp_path / "kept")
    assert tokenizer_ids(tmp_path / "student") == load_tokenizer(tiny_tokenizer_dir).get_vocab()  # as init_student reads


def test_tokenizer_mismatch_names_the_first_difference():
    from kdbench.schema.checks import tokenizer_mismatch

    teacher = {"a": 0, "b": 1, "c": 2}
    assert tokenizer_mismatch("s", {"a": 0, "x": 1, "c": 2, "y": 3}, "t", teacher).endswith(
        "s (4 tokens) and t (3 tokens) differ: 2 tokens only in the student's (first 'x'), 1 only in the teacher's "
        "(first 'b'); logit distillation needs one shared tokenizer")
    assert ": token 'c' has id 1 in the student's, 2 in the teacher's;" in tokenizer_mismatch(
        "s", {"a": 0, "c": 1, "b": 2}, "t", teacher)
    assert ": special tokens {'eos_token': 'a'} in the student's, {'eos_token': 'c'} in the teacher's;" in \
        tokenizer_mismatch("s", teacher, "t", teacher, ({"eos_token": "a"}, {"eos_token": "c"}))
