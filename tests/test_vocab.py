"""The distillation vocabulary is the tokenizer's ids, whatever rows the models' embedding matrices have.

Families pad the matrix past the tokenizer (Pythia: 50,304 rows for 50,277 tokens). Stand-in here: a
teacher padded by 13 rows, its padded output rows made loud (scaled copies of real rows), so any padded
logit that leaked into the targets would dominate them. It is compared with its twin whose padded rows
are sliced off the state dict.

    .venv/bin/python -m pytest tests/test_vocab.py -q   (CPU, offline, about 10 s)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench import capture
from kdbench.arms import ArmConfig
from kdbench.cache import TeacherCache
from kdbench.capture import Online, cache_teacher, load_teacher, online_teacher
from kdbench.config import ArchConfig, CacheConfig
from kdbench.models import build_model, load_model, load_tokenizer, save_model

T, N = 16, 16
TEACHER = ArchConfig(family="gpt_neox", n_layer=2, d_model=32, n_head=4)
ARM = ArmConfig(terms={"ce": 0.5, "fkl": 0.5}, temperature=2.0)
CACHE = CacheConfig(top_k=8, shard_seqs=8)


def padded_pair(tok_dir: Path, arch: ArchConfig, extra: int, seed: int, out: Path) -> tuple[Path, Path]:
    """(a model with `extra` loud rows past the tokenizer, the same model without them), saved with the tokenizer."""
    tok = load_tokenizer(tok_dir)
    n = len(tok)
    model = build_model(arch, n + extra, T, tok.eos_token_id, seed)
    with torch.no_grad():
        model.get_output_embeddings().weight[n:] = 30 * model.get_output_embeddings().weight[:extra]
    state = {k: v[:n] if v.shape[:1] == (n + extra,) else v for k, v in model.state_dict().items()}
    twin = build_model(arch, n, T, tok.eos_token_id, seed)
    twin.load_state_dict(state)
    save_model(model, tok_dir, out / "padded")
    save_model(twin, tok_dir, out / "trimmed")
    return out / "padded", out / "trimmed"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer_dir) -> dict:
    root = tmp_path_factory.mktemp("vocab")
    n = len(load_tokenizer(tiny_tokenizer_dir))
    tokens = np.random.default_rng(0).integers(0, n, size=(N, T)).astype(np.uint16)
    (root / "data").mkdir()
    np.save(root / "data" / "train.npy", tokens)
    np.save(root / "data" / "val.npy", tokens[:4])
    teacher, teacher_twin = padded_pair(tiny_tokenizer_dir, TEACHER, 13, 1, root / "teacher")
    for name, model_dir in (("cache", teacher), ("cache-twin", teacher_twin)):
        cache_teacher(model_dir, root / "data", CACHE, {"logit": ARM}, 2, N * T, root / name, root / "work" / name)
    return {"root": root, "n": n, "tokens": tokens, "tok": tiny_tokenizer_dir, "teacher": teacher}


def test_the_stand_ins_padded_rows_would_win_the_top_k(setup):
    """Without the cut, the teacher's top-1 would be a padded id almost everywhere: the tests below can fail."""
    logits = load_model(setup["teacher"])(input_ids=torch.from_numpy(setup["tokens"].astype(np.int64))).logits
    assert logits.shape[-1] == setup["n"] + 13
    assert (logits.argmax(-1) >= setup["n"]).float().mean() > 0.9


def test_cached_and_online_targets_are_over_the_tokenizer(setup):
    root, n = setup["root"], setup["n"]
    cache, twin = TeacherCache(root / "cache"), TeacherCache(root / "cache-twin")
    assert (cache.manifest["vocab_size"], cache.manifest["teacher_embedding_rows"]) == (n, n + 13)
    assert (twin.manifest["vocab_size"], twin.manifest["teacher_embedding_rows"]) == (n, n)
    idx = np.arange(N)
    padded, unpadded = cache.batch(idx), twin.batch(idx)
    assert int(padded.topk_ids.max()) < n
    for name in ("topk_ids", "topk_logprobs", "tail_logprob"):  # the padded teacher's targets are its twin's
        assert torch.equal(getattr(padded, name), getattr(unpadded, name)), name
    assert torch.isfinite(padded.tail_logprob).all()
    source, manifest = online_teacher(setup["teacher"], root / "data", Online(CACHE, N * T), ARM, 2)
    assert (manifest["vocab_size"], manifest["teacher_embedding_rows"], manifest["top_k"]) == (n, n + 13, 8)
    live = source.batch(idx)
    for name in ("topk_ids", "topk_logprobs", "tail_logprob"):
        assert torch.equal(getattr(live, name), getattr(padded, name)), name


def test_teacher_goes_to_the_process_device_unless_one_process_sees_several_gpus(setup, monkeypatch):
    """The spread itself needs GPUs; here: the decision, and the single-device path a CPU job takes."""
    teacher, device, identity = load_teacher(setup["teacher"], setup["tokens"])
    assert (device, teacher.config.vocab_size, identity["teacher_embedding_rows"]) == ("cpu", setup["n"], setup["n"] + 13)
    maps = []
    real = capture.load_model
    monkeypatch.setattr(capture, "load_model", lambda path, device_map=None: maps.append(device_map) or real(path))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(capture, "world", lambda: (0, 1))
    assert load_teacher(setup["teacher"], setup["tokens"])[1] == "cpu"  # where the (here: CPU) embedding is
    monkeypatch.setattr(capture, "world", lambda: (0, 2))  # under torchrun each rank keeps its own copy
    load_teacher(setup["teacher"], setup["tokens"])
    assert maps == ["auto", None]
