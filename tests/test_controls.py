"""Random-teacher controls: the untrained teacher, its cache's identity, and the config that names them.

    .venv/bin/python -m pytest tests/test_controls.py -v
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kdbench import KdbenchError
from kdbench.schema.arms import ArmConfig, Capture
from kdbench.cache.capture import write_teacher_cache
from kdbench.schema.config import ArchConfig, CacheConfig, StudentConfig, TrainConfig
from kdbench.schema.experiment import control_arms, load_experiment
from kdbench.models.causal_lm import build_model, load_model, load_tokenizer, save_model, vocabulary_sha256
from kdbench.provenance import weights_sha256
from kdbench.train.student import init_student, train_student
from kdbench.train.teacher import random_teacher

T = 16
CFG = TrainConfig(tokens=4 * 4 * T, batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=100, log_every_s=0.0,
                  curve_every=1, val_seqs=4, autocast=False)
ARM = ArmConfig(terms={"ce": 0.5, "fkl": 0.5, "hidden_mse": 1.0}, temperature=2.0)


@pytest.fixture
def two_caches(tmp_path, tiny_tokenizer_dir):
    """A 'trained' teacher, its untrained twin, and one cache of each written exactly alike."""
    tok = load_tokenizer(tiny_tokenizer_dir)
    teacher = build_model(ArchConfig(n_layer=2, d_model=24, n_head=2), len(tok), T, tok.eos_token_id, seed=0)
    save_model(teacher, tiny_tokenizer_dir, tmp_path / "teacher")
    random_teacher(tmp_path / "teacher", 1, tmp_path / "random")
    tokens = np.random.default_rng(0).integers(0, len(tok), size=(16, T)).astype(np.uint16)
    for name in ("teacher", "random"):
        identity = {"teacher_sha256": weights_sha256(tmp_path / name), "vocabulary_sha256": vocabulary_sha256(tok),
                    "tokens_sha256": "d", "teacher_layers": 2, "teacher_width": 24}
        write_teacher_cache(load_model(tmp_path / name), tokens, identity, CacheConfig(top_k=8, shard_seqs=8),
                            Capture(hidden=(1, 2)), tmp_path / f"cache-{name}", tmp_path / f"work-{name}")
    init_student(StudentConfig(arch=ArchConfig(n_layer=2, d_model=16, n_head=2)), 0, tiny_tokenizer_dir, T, None,
                 tmp_path / "init")
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "val.npy", tokens[:4])
    return tmp_path


def test_random_teacher_has_the_architecture_but_not_the_weights(two_caches):
    real, rand = load_model(two_caches / "teacher"), load_model(two_caches / "random")
    shape = lambda m: {k: v for k, v in m.config.to_dict().items() if k != "_name_or_path"}  # noqa: E731
    assert shape(real) == shape(rand)
    assert not all(torch.equal(a, b) for a, b in zip(real.state_dict().values(), rand.state_dict().values()))
    assert weights_sha256(two_caches / "teacher") != weights_sha256(two_caches / "random")


def test_control_cache_is_refused_as_the_real_teachers(two_caches):
    root, real = two_caches, weights_sha256(two_caches / "teacher")
    with pytest.raises(KdbenchError, match="stale: teacher_sha256"):
        train_student("logit_hidden", ARM, CFG, 0, root / "init", root / "cache-random", root / "data", root / "s",
                      root / "w", teacher_sha256=real)
    assert not (root / "s").exists()
    train_student("logit_hidden@random", ARM, CFG, 0, root / "init", root / "cache-random", root / "data", root / "c",
                  root / "wc", teacher_sha256=weights_sha256(root / "random"))
    flops = __import__("json").loads((root / "c" / "train.json").read_text())["flops"]
    assert flops["teacher_forward"] > 0 and flops["projector"] > 0


def test_controls_config_names_teacher_arms_and_reserves_the_suffix():
    arms = {"ce": {"terms": {"ce": 1.0}}, "logit": {"terms": {"ce": 0.5, "fkl": 0.5}}}
    stats = {"reference_arm": "ce", "candidate_arm": "logit"}
    exp = load_experiment({"arms": arms, "stats": stats, "controls": {"random_teacher": ["logit"]}})
    assert control_arms(exp) == {"logit@random": "logit"}
    with pytest.raises(KdbenchError, match="not an arm that reads the teacher"):
        load_experiment({"arms": arms, "stats": stats, "controls": {"random_teacher": ["ce"]}})
    with pytest.raises(KdbenchError, match="reserved or invalid arm name"):
        load_experiment({"arms": {**arms, "x@random": {"terms": {"ce": 1.0}}}, "stats": stats})
    with pytest.raises(KdbenchError, match="equals teacher.seed"):
        load_experiment({"arms": arms, "stats": stats, "controls": {"random_teacher": ["logit"], "seed": 0}})
