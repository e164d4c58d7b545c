"""Pretrained models: the code path of config/presets/pythia.yaml, run offline on tiny local stand-ins.

The hub is out of reach here, so config/presets/local-models.yaml names local files instead: a
4-layer, 48-wide GPT-NeoX teacher written by save_pretrained with a BPE tokenizer trained on a
local jsonl corpus. The real DAG imports that teacher and its tokenizer, packs the corpus, caches
the teacher and trains 2-layer students made of its blocks 2 and 4 (teacher_layers, as in the
pythia preset): hidden_mse through the learned projection and the relation loss. Also checked: a student whose
pretrained initialisation has another tokenizer is refused before any training; teacher_layers
copies blocks within a family and width and refuses otherwise; a teacher whose embedding matrix
is padded beyond its tokenizer, as Pythia's is, feeds a student; the pythia preset plans the
expected DAG and names only multiple-choice lm-eval tasks; evaluation's device "auto".

Run: .venv/bin/python -m pytest tests/test_models.py -q   (CPU, offline, about 2 min on 2 cores)
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from kdbench import KdbenchError
from kdbench.schema.arms import ArmConfig
from kdbench.schema.config import CacheConfig, DataConfig, ArchConfig, StudentConfig, TokenizerConfig, TrainConfig
from kdbench.cache.store import TeacherCache
from kdbench.cache.capture import Online, cache_teacher
from kdbench.data.tokens import prepare
from kdbench.evaluate import resolve_device
from kdbench.io import read_json
from kdbench.models.causal_lm import blocks, build_model, load_model, load_tokenizer, save_model, vocabulary_sha256
from kdbench.train.student import init_student, train_student
from kdbench.data.tokenizer import train_tokenizer

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
PRESETS = REPO / "config" / "presets"
EXP = "results/local-models"
TEACHER = ArchConfig(family="gpt_neox", n_layer=4, d_model=48, n_head=4)
STUDENTS = ("logit_hidden", "logit_relation")


def snakemake(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(cwd), *args],
                          capture_output=True, text=True, env=env, timeout=600)


def job_counts(out: str) -> dict[str, int]:
    table = out.split("Job stats:")[1].split("\n\n")[0].splitlines()[3:]
    return {name: int(n) for name, n in (line.split() for line in table)}


def corpus(variant: int = 0) -> list[str]:
    colours, animals = ["red", "blue", "green", "grey"], ["cat", "dog", "fox", "owl", "bee"]
    if variant:
        colours, animals = ["amber", "violet"], ["heron", "otter"]
    return [f"The {colours[i % len(colours)]} {animals[i % len(animals)]} number {i} walks to town {i % 7}. "
            f"It sees {i % 3} friends." for i in range(400)]


def write_pretrained(out: Path, texts: list[str], arch: ArchConfig, pad_vocab_to: int = 1) -> None:
    """A save_pretrained directory like a hub model's: random weights and a tokenizer trained on `texts`."""
    tok_dir = out.with_name(f"{out.name}-tokenizer")
    train_tokenizer(texts, TokenizerConfig(vocab_size=300, min_frequency=1), tok_dir)
    tok = load_tokenizer(tok_dir)
    vocab = math.ceil(len(tok) / pad_vocab_to) * pad_vocab_to
    save_model(build_model(arch, vocab, 64, tok.eos_token_id, seed=0), tok_dir, out)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The local-models preset up to two students, in a fresh working directory."""
    root = tmp_path_factory.mktemp("local-models")
    (root / "local").mkdir()
    with open(root / "local" / "corpus.jsonl", "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in corpus())
    write_pretrained(root / "local" / "teacher", corpus(), TEACHER)
    targets = [f"{EXP}/students/{arm}/seed0" for arm in STUDENTS]
    out = snakemake(*targets, "--cores", "2", "--configfile", str(PRESETS / "local-models.yaml"), cwd=root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    counts = job_counts(out.stdout + out.stderr)
    assert counts == {"import_tokenizer": 1, "import_teacher": 1, "prepare_data": 1, "cache_teacher": 1,
                      "init_student": 1, "train_student": 2, "total": 7}
    return root


@pytest.mark.slow  # the local-models preset through snakemake
def test_imported_teacher_and_local_corpus(run):
    res = run / EXP
    mine, imported = load_model(run / "local" / "teacher"), load_model(res / "teacher")
    assert imported.config.model_type == "gpt_neox"
    for (name, a), (_, b) in zip(mine.state_dict().items(), imported.state_dict().items()):
        assert torch.equal(a, b), name
    tok = load_tokenizer(res / "tokenizer")
    assert vocabulary_sha256(tok) == vocabulary_sha256(load_tokenizer(run / "local" / "teacher"))
    first = tok.decode(np.load(res / "data" / "train.npy")[0].tolist())
    assert "walks to town" in first  # packed from the local corpus, with the teacher's tokenizer
    assert read_json(res / "data" / "data.json")["vocab_size"] == len(tok)


@pytest.mark.slow  # the local-models preset through snakemake
@pytest.mark.parametrize("arm, term", [("logit_hidden", "hidden_mse"), ("logit_relation", "relation")])
def test_depth_pruned_student_distils_from_its_teacher(run, arm, term):
    res = run / EXP
    manifest = TeacherCache(res / "cache", verify=True).manifest
    assert (manifest["teacher_layers"], manifest["teacher_width"]) == (4, 48)
    student = load_model(res / "students" / arm / "seed0")
    assert (student.config.model_type, student.config.hidden_size, student.config.num_attention_heads) == ("gpt_neox", 48, 4)
    assert vocabulary_sha256(load_tokenizer(res / "students" / arm / "seed0")) == vocabulary_sha256(load_tokenizer(res / "teacher"))
    summary = read_json(res / "students" / arm / "seed0" / "train.json")
    assert summary["layer_pairs"] == ([[1, 2], [2, 4]] if arm == "logit_hidden" else [[2, 4]])
    curve = list(csv.DictReader(open(res / "students" / arm / "seed0" / "curve.csv")))
    assert curve and all(math.isfinite(float(row[f"loss_{term}"])) and float(row[f"loss_{term}"]) > 0 for row in curve)
    init, teacher = load_model(res / "students" / "init" / "seed0"), load_model(res / "teacher")
    assert torch.equal(init.gpt_neox.layers[1].mlp.dense_h_to_4h.weight, teacher.gpt_neox.layers[3].mlp.dense_h_to_4h.weight)
    assert not torch.equal(init.gpt_neox.layers[0].mlp.dense_h_to_4h.weight, student.gpt_neox.layers[0].mlp.dense_h_to_4h.weight)


@pytest.mark.slow  # the local-models preset through snakemake
def test_student_with_another_tokenizer_is_refused_before_any_job(run, tmp_path):
    """Both tokenizers are local files, so the workflow refuses when it parses (`checks.check_tokenizers`)."""
    root = tmp_path / "mismatch"
    shutil.copytree(run, root, symlinks=True)
    write_pretrained(root / "local" / "other", corpus(variant=1), ArchConfig(family="llama", n_layer=2, d_model=32, n_head=2))
    override = tmp_path / "other.yaml"
    override.write_text(yaml.safe_dump({"student": {"init": "local/other"}}))
    out = snakemake(f"{EXP}/students/logit/seed0", "--cores", "2",
                    "--configfile", str(PRESETS / "local-models.yaml"), str(override), cwd=root)
    assert out.returncode != 0
    assert "tokenizer mismatch: student.init 'local/other' (" in out.stdout + out.stderr
    assert "and teacher.source 'local/teacher' (" in out.stdout + out.stderr
    assert not (root / EXP / "students" / "logit" / "seed0").exists()
    assert not (root / "logs" / "local-models" / "train_student" / "logit" / "seed0.log").exists()


@pytest.mark.slow  # the local-models preset through snakemake
def test_teacher_layers_init_within_a_family_and_width_only(run, tmp_path):
    res = run / EXP
    same = StudentConfig(arch=ArchConfig(family="gpt_neox", n_layer=2, d_model=48, n_head=4), init="teacher_layers")
    init_student(same, 0, res / "tokenizer", 32, res / "teacher", tmp_path / "copied")
    student, teacher = load_model(tmp_path / "copied"), load_model(res / "teacher")
    for s, t in ((0, 1), (1, 3)):  # uniform map of 2 onto 4 blocks: 1 -> 2, 2 -> 4
        for (name, a), (_, b) in zip(blocks(student)[s].state_dict().items(), blocks(teacher)[t].state_dict().items()):
            assert torch.equal(a, b), name
    assert torch.equal(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    other = StudentConfig(arch=ArchConfig(family="llama", n_layer=2, d_model=48, n_head=4), init="teacher_layers")
    with pytest.raises(KdbenchError, match="needs the teacher's architecture family and width"):
        init_student(other, 0, res / "tokenizer", 32, res / "teacher", tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_teacher_with_padded_embeddings_feeds_a_student(tmp_path):
    """Pythia's embedding matrix has 50304 rows for 50277 tokens; a random student is built for the tokenizer.
    (tests/test_vocab.py checks the targets and losses against unpadded twins.)"""
    write_pretrained(tmp_path / "teacher", corpus(), TEACHER, pad_vocab_to=128)
    tok = load_tokenizer(tmp_path / "teacher")
    assert load_model(tmp_path / "teacher").config.vocab_size > len(tok)
    data_cfg = DataConfig(source="corpus.jsonl", seq_len=32)
    prepare(iter(corpus()), tok, data_cfg, tmp_path / "data")
    arms = {"logit_hidden": ArmConfig(terms={"ce": 0.5, "fkl": 0.5, "hidden_mse": 1.0})}
    cache_teacher(tmp_path / "teacher", tmp_path / "data", CacheConfig(top_k=8, shard_seqs=64), arms, 2, 2048,
                  tmp_path / "cache", tmp_path / "work" / "cache")
    init_student(StudentConfig(arch=ArchConfig(family="llama", n_layer=2, d_model=32, n_head=2)), 0,
                 tmp_path / "teacher", 32, tmp_path / "teacher", tmp_path / "init")
    manifest = read_json(tmp_path / "cache" / "manifest.json")
    assert load_model(tmp_path / "init").config.vocab_size == len(tok) == manifest["vocab_size"]
    assert manifest["teacher_embedding_rows"] == math.ceil(len(tok) / 128) * 128
    train = TrainConfig(tokens=2048, batch_size=8, warmup_steps=2, curve_every=1)
    train_student("logit_hidden", arms["logit_hidden"], train, 0,
                  tmp_path / "init", tmp_path / "cache", tmp_path / "data", tmp_path / "student", tmp_path / "work" / "s")
    assert (tmp_path / "student" / "model.safetensors").is_file()
    # teacher.mode online: the same job with the teacher in the loop sees the cache's targets (within rounding)
    online = Online(CacheConfig(top_k=8, shard_seqs=64), student_tokens=2048)
    train_student("logit_hidden", arms["logit_hidden"], train, 0, tmp_path / "init", tmp_path / "teacher",
                  tmp_path / "data", tmp_path / "online", tmp_path / "work" / "o", online)
    cached, live = (list(csv.DictReader(open(tmp_path / d / "curve.csv"))) for d in ("student", "online"))
    assert len(cached) == len(live) == 8
    for name in ("loss_ce", "loss_fkl", "loss_hidden_mse"):
        assert float(live[0][name]) == pytest.approx(float(cached[0][name]), rel=1e-3), name  # first step
        assert float(live[-1][name]) == pytest.approx(float(cached[-1][name]), rel=2e-2), name  # after 8 steps


def test_pythia_preset_plans_the_real_model_dag(tmp_path):
    out = snakemake("-n", "--cores", "1", "--configfile", str(PRESETS / "pythia.yaml"), cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    counts = job_counts(out.stdout + out.stderr)
    students = 2 * 3  # run_arms: logit and logit_hidden, 3 seeds
    assert counts["import_teacher"] == counts["import_tokenizer"] == 1
    assert counts["cache_teacher"] == 1  # teacher.mode auto: the compacted cache (79.6 GB) is under cache.max_gb
    assert counts["train_student"] == students and counts["evaluate_model"] == 1 + 3 + students
    assert not {"train_teacher", "train_tokenizer", "generate_world", "render_tasks"} & set(counts)
    assert "gpu=1" in out.stdout + out.stderr  # gpus: 1 reaches the GPU rules' resources


def test_pythia_tasks_are_multiple_choice_lm_eval_tasks():
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    tasks = yaml.safe_load((PRESETS / "pythia.yaml").read_text())["evaluation"]["tasks"]
    index = TaskManager().task_index  # lm-eval's built-in tasks (~20 s); no datasets are loaded
    for name in tasks:
        assert name in index, name
        assert load_yaml(index[name].yaml_path, resolve_func=False)["output_type"] == "multiple_choice", name


def test_evaluation_device_auto(monkeypatch):
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
